"""The continuation, the scoreboard, the downloads planner and the notebook."""
import json
import math
import re

import pytest

from chateau import dial, downloads, scoreboard, stages
from chateau.cli import StageError
from conftest import ROOT, fixtures, one_error_line, run_script
from dev.runner import call_script, scoreboard_settings

TINY_SCOREBOARD = ROOT / "profiles" / "tiny" / "scoreboard.json"
# The tiny scoreboard measures memorization as the tiny 2d measures each pass: the tiny novel's
# held-out slice (two 128-token windows) has no room for the default 64 spans of 50 + 50 tokens.
TINY_MEMORIZATION = json.loads(TINY_SCOREBOARD.read_text())["memorization"]


def tiny_scoreboard(*flags):
    """The scoreboard's tiny settings (profiles/tiny/scoreboard.json), `flags` beside them."""
    return scoreboard_settings("tiny", *flags)



def body(path):
    return path.read_text().split("\n---\n", 1)[1].strip()


def test_continuation_slides_past_one_window_and_is_reproducible(pipeline, tmp_path):
    project = pipeline[0]
    out_a, out_b, out_c = (tmp_path / f"{n}.md" for n in "abc")
    run_script(project, "3_continue_kafka.py", *fixtures.TINY_CONTINUE, "--output", out_a)
    run_script(project, "3_continue_kafka.py", *fixtures.TINY_CONTINUE, "--output", out_b)
    run_script(project, "3_continue_kafka.py", *fixtures.TINY_CONTINUE, "--output", out_c, "--seed", "1")
    header = out_a.read_text().split("\n---\n")[0]
    assert "- seed: 0" in header and "- stage: 2c" in header and "- temperature: 0.8" in header
    generated = int(re.search(r"generated tokens: (\d+)", header).group(1))
    assert generated > 128 + 64  # more than one window: the sliding window really ran
    assert body(out_a) == body(out_b) and body(out_a) != body(out_c)
    clean_text = (stages.folder(project, "1c") / "clean_text.txt").read_text()
    assert not clean_text.strip().endswith(body(out_a)[:40])
    assert not body(out_a).startswith(clean_text.strip()[-40:])  # it starts after the prompt, not with it


def test_continuation_default_output_and_other_stage(pipeline):
    project = pipeline[0]
    out = run_script(project, "3_continue_kafka.py", *fixtures.TINY_CONTINUE, "--stage", "2b", "--prompt", "K. ouvrit la porte.")
    path = project / "output" / "continuation_2b.md"
    assert path.exists() and str(path) in out.stdout


def test_artifacts_and_repetition_on_hand_written_texts():
    clean = ["K. regarda Frieda, puis Klamm parut au château ; Olga et Barnabé attendaient à l'auberge du village."]
    other = ["La diligence s'arrêta devant l'église, et le curé descendit avec une lenteur solennelle."]
    noisy = ["Il marchait — 25 — dans la rue\n12\nLE CHÂTEAU\nSource gallica.bnf.fr / BnF\net 245 pas plus loin."]
    assert scoreboard.artifact_rate(noisy) > 200 and scoreboard.artifact_rate(clean + other) == 0
    assert scoreboard.distinct_n(["a b c d e f"]) == 1.0
    assert scoreboard.distinct_n(["le la le la le la le la"]) < 0.3


def test_scoreboard_rows_and_files(pipeline):
    from chateau import lineage
    project = pipeline[0]
    board = scoreboard.build(project, tiny_scoreboard())
    rows = board["rows"]
    assert [r["stage"] for r in rows] == ["base", "2a", "2b", "2c", "2d"]  # every model stage of the table
    by = {r["stage"]: r for r in rows}
    assert by["2c"]["novel_perplexity"] < by["2b"]["novel_perplexity"]  # 2c imprinted the novel
    assert by["2d"]["novel_perplexity"] < by["2a"]["novel_perplexity"]  # and so did 2d, its alternative
    assert by["2a"]["french_perplexity"] < by["base"]["french_perplexity"]  # 2a learned French
    published = lineage.read_metrics(project, "2d")["published_pass"]
    assert by["2d"]["form"] == f"full model, pass {published} of 3 (the dial's pick)" and by["2a"]["form"] == "full model"
    # Bits per byte rest on the perplexity's loss: every stage shares the tokenizer and the rows, so
    # ln(perplexity) / bits per byte / ln 2 (bytes per predicted token) is one number per text, at
    # least a byte per token (only special tokens have none) and less than a word.
    bytes_per_token = {text: {math.log(r[f"{text}_perplexity"]) / r[f"{text}_bits_per_byte"] / math.log(2) for r in rows}
                       for text in ("novel", "french")}
    for ratios in bytes_per_token.values():
        assert max(ratios) == pytest.approx(min(ratios), rel=2e-3) and 1 < min(ratios) < 8
    assert min(bytes_per_token["novel"]) != pytest.approx(min(bytes_per_token["french"]), rel=2e-3)  # each text's own bytes
    # Memorization for every stage, at the same positions: the training text and the held-out control.
    for r in rows:
        assert r["memorization_positions"] == TINY_MEMORIZATION["positions"]
        for split in ("train", "heldout"):
            assert 0 <= r[f"extracted_{split}"] <= 1 and 0 <= r[f"agreed_tokens_{split}"] <= TINY_MEMORIZATION["suffix"]
            assert r[f"suffix_logprob_per_token_{split}"] < 0 and 0 < r[f"suffix_probability_{split}"] < 1
    # 2d is 2a trained on the novel's training text: that text became more probable.
    assert by["2d"]["suffix_logprob_per_token_train"] > by["2a"]["suffix_logprob_per_token_train"]
    # Samples are drawn until they hold the words asked for; every figure says what it rests on.
    assert all(r["words"] >= 300 and r["samples"] % 8 == 0 for r in rows)
    assert all(r["next_passage_items"] == 8 and 0 <= r["next_passage"] <= 1 for r in rows)
    assert all(r["told_apart_chunks"] >= 4 and r["told_apart_95"][0] <= r["told_apart"] <= r["told_apart_95"][1] for r in rows)
    assert "indicative only" in board["indicative"]  # 300 words, not the 5,000 stylometry needs
    saved = json.loads((project / "output" / "scoreboard.json").read_text())
    assert saved["rows"] == rows and len(saved["prompts"]) >= 8 and saved["lexicon"]
    assert set(saved["samples"]) == {"base", "2a", "2b", "2c", "2d"}
    # the references calibrate the measures: the held-out slice is the novel (Delta 0 to itself)
    novel, french = saved["references"]
    assert novel["stage"] == "(novel)" and novel["delta_novel"] == 0 and french["stage"] == "(French)"
    assert (project / "output" / "scoreboard.csv").read_text().startswith("stage,form,novel_perplexity,novel_bits_per_byte")
    text = scoreboard.format_table(board).splitlines()
    assert text[0].split()[:8] == ["stage", "novel", "ppl", "↓", "novel", "bpb", "↓", "French"] and text[-1].startswith("indicative only")
    assert len(text) == 1 + 5 + 2 + 1 and len({len(line) for line in text[1:-1]}) <= 2  # aligned
    # The reference rows have no model: no likelihood, no memorization, the absent cell's dash.
    _, body = scoreboard.table_rows(board)
    for reference in body[-2:]:
        for key in ("novel_bits_per_byte", "extracted_train", "extracted_heldout", "agreed_tokens_train"):
            assert reference[[c.key for c in scoreboard.COLUMNS].index(key)] == "—"
    assert [scoreboard.COLUMN[k].better for k in ("extracted_train", "agreed_tokens_train", "novel_bits_per_byte")] == ["↓"] * 3
    markdown = scoreboard.markdown_table(board)
    assert "| (novel) |" in markdown and "**told apart** ↓ 0.5" in markdown and "**extracted train** ↓" in markdown
    assert f"{TINY_MEMORIZATION['positions']} positions of the training text" in markdown


def test_scoreboard_scores_the_pass_asked_for(pipeline):
    """--epoch N scores pass N of 2d, its row labelled with the pass: the held-out loss of the
    weights the dial kept in passes/pass-N/ (read here by transformers itself); without --epoch,
    the published pass's."""
    from datasets import load_from_disk
    from transformers import AutoModelForCausalLM
    from chateau import dial, lineage, training
    project = pipeline[0]
    metrics = lineage.read_metrics(project, "2d")
    quick = ["--words", 1, "--sample-tokens", 4, "--next-passage-items", 0, "--max-eval-samples", 2]
    validation = load_from_disk(str(stages.folder(project, "1c")))["validation"].select(range(2))
    scored = {}
    for record in metrics["passes"]:
        number = record["pass"]
        row, = scoreboard.build(project, tiny_scoreboard(*quick, "--epoch", number), model_stages=("2d",))["rows"]
        kept = AutoModelForCausalLM.from_pretrained(dial.pass_dir(project, "2d", number)).eval()
        assert row["stage"] == f"2d (pass {number})" and f"pass {number} of {len(metrics['passes'])}" in row["form"]
        assert row["novel_perplexity"] == pytest.approx(math.exp(training.validation_loss(kept, validation)), abs=0.01)
        scored[number] = row
    assert len({row["novel_perplexity"] for row in scored.values()}) == len(scored)  # the passes differ
    published, = scoreboard.build(project, tiny_scoreboard(*quick), model_stages=("2d",))["rows"]
    same = scored[metrics["published_pass"]]
    assert published["stage"] == "2d" and all(published[k] == same[k] for k in ("novel_perplexity", "extracted_train",
                                                                                 "suffix_logprob_per_token_train"))


def test_scoreboard_refuses_a_pass_that_is_not_there_before_scoring_anything(pipeline):
    project = pipeline[0]
    missing = len(json.loads((stages.folder(project, "2d") / "passes.json").read_text())) + 1
    out = call_script(project, "chateau/scoreboard.py", "--config", TINY_SCOREBOARD, "--epoch", missing, check=False)
    one_error_line(out, f"--epoch {missing}: 2d has no pass {missing}")
    assert "scoreboard:" not in out.stdout  # no stage scored, none skipped: the error came first
    out = call_script(project, "chateau/scoreboard.py", "--epoch", 1, "--epoch-stage", "2a", check=False)
    assert out.returncode == 2 and f"--epoch-stage 2a: only a stage trained in passes has them ({dial.DIALLED})" in out.stderr


def test_batched_generation_reads_each_left_padded_prompt_as_if_it_were_alone(pipeline):
    """Prompts of different lengths generated together (left-padded) give what each gives alone
    (greedy, so that no random draw differs between the two)."""
    from chateau import generation
    model, tokenizer = generation.load_stage(pipeline[0], "2c")
    prompts = ["K. regarda le château.", "Le maire expliqua, non sans peine, qu'on n'avait nul besoin d'un arpenteur.", "Frieda"]
    greedy = generation.Sampling(new_tokens=24, temperature=0, repetition_penalty=1.5)  # (else it writes only newlines)
    alone = [generation.generate_from_prompts(model, tokenizer, greedy, [p])[0] for p in prompts]
    together = generation.generate_from_prompts(model, tokenizer, greedy, prompts, batch_size=3)
    assert together == alone and len(set(alone)) == 3


def test_scoreboard_skips_unfinished_stages_with_a_note(pipeline, tmp_path, capsys):
    import shutil
    project = tmp_path / "p"
    shutil.copytree(pipeline[0], project, ignore=shutil.ignore_patterns("checkpoint-*"))
    (stages.folder(project, "2b") / "metrics.json").unlink()  # as if 2b were still training
    rows = scoreboard.build(project, tiny_scoreboard("--words", 1, "--sample-tokens", 4, "--next-passage-items", 0,
                                                    "--max-eval-samples", 2))["rows"]
    assert [r["stage"] for r in rows] == ["base", "2a", "2d"]  # 2c was made from the 2b that is gone: stale
    out = capsys.readouterr().out
    assert "skipped 2b: not finished" in out and "step 2c is stale: 2b changed" in out


def test_download_planner():
    listing = [f"gallica_mono_{n}.parquet" for n in (10, 2, 1, 33)] + ["README.md", "other.parquet"]
    assert downloads.plan_gallica_files(listing, 3) == ["gallica_mono_1.parquet", "gallica_mono_2.parquet", "gallica_mono_10.parquet"]
    with pytest.raises(StageError):
        downloads.plan_gallica_files(listing, 5)
    a = downloads.CorpusAssumptions()
    # 1a alone: 1M samples / (2000 books x 1/2 x 60% x 128 samples) = 13.02 files, x 1.2 margin -> 16
    assert downloads.files_needed([(1_000_000, 512, 128)], a) == 16
    assert downloads.files_needed([(1000, 512, 128)], a) == 1
    assert downloads.planned_file_count() < 60  # never the whole corpus (~150 files)


def test_downloads_are_idempotent_and_need_no_network(fresh_project, monkeypatch, tmp_path):
    import huggingface_hub
    project, _ = fresh_project
    fetched = []

    def fake_download(repo, name, repo_type=None, local_dir=None, token=None):
        fetched.append(name)
        (local_dir / name).write_bytes(b"PAR1")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda *a, **k: pytest.fail("model fetched again"))
    assert "already" in downloads.download_model(project)
    assert "already" in downloads.download_novel(project)
    listing = [f"gallica_mono_{n}.parquet" for n in range(5)]
    (project / stages.GALLICA_DIR / "gallica_mono_1.parquet").write_bytes(b"PAR1")
    downloads.download_gallica(project, 3, listing=listing)
    # gallica_mono_0 (a fixture file) and _1 are there: only _2 is fetched
    assert fetched == ["gallica_mono_2.parquet"]
    downloads.download_gallica(project, 3, listing=listing)
    assert len(fetched) == 1  # nothing fetched the second time


def test_novel_download_resumes_from_a_file_url_or_says_where_to_put_it(fresh_project, tmp_path):
    project, _ = fresh_project
    pdf = project / stages.NOVEL_PDF
    source = tmp_path / "source.pdf"
    pdf.rename(source)
    assert "downloaded" in downloads.download_novel(project, url=source.as_uri())
    assert pdf.read_bytes() == source.read_bytes()
    pdf.unlink()
    message = downloads.download_novel(project, url="http://127.0.0.1:9/none.pdf")
    assert str(pdf) in message and not pdf.exists()


def markdown_tables(markdown):
    """Each Markdown table in `markdown` as its rows of cells (the header first, the rule left out;
    no-break spaces read as spaces)."""
    tables, rows = [], []
    for line in markdown.replace("\u00a0", " ").splitlines() + [""]:
        if line.startswith("|"):
            if not set(line) <= set("|:- "):
                rows.append([c.strip() for c in line.strip("|").split("|")])
        elif rows:
            tables.append(rows)
            rows = []
    return tables


def test_notebook_runs_top_to_bottom(pipeline, monkeypatch, tmp_path):
    import copy
    import nbformat
    from jupyter_client.kernelspec import KernelSpecManager
    from nbclient import NotebookClient
    from chateau import generation, lineage, monitor
    project = pipeline[0]
    if not (project / "output" / "continuation_2c.md").exists():
        run_script(project, "3_continue_kafka.py", *fixtures.TINY_CONTINUE)
    # A second base in the project: a tiny Mistral, its own data prepared with its own tokenizer
    # (bases/Mistral-7B-v0.1/) and its scoreboard (the base model's row), for the side by side.
    mistral = ["--base-model", fixtures.MISTRAL_MODEL]
    if not (project / fixtures.MISTRAL_MODEL).exists():
        fixtures.build_mistral(project)
    for stage in ("1a", "1c"):
        run_script(project, stages.script_of(stage), *fixtures.tiny_flags(stages.script_of(stage)), *mistral)
    scoreboard.build(stages.workspace(project, fixtures.MISTRAL_MODEL), tiny_scoreboard(*mistral), model_stages=("base",))
    notebook = nbformat.read(ROOT / "notebook.ipynb", as_version=4)
    stored = copy.deepcopy(notebook.metadata)
    assert all(cell.get("id") for cell in notebook.cells)  # JupyterLab would add them and mark the file modified
    # After the notebook's own cells, one that counts the models (modules with weights: not
    # transformers' activation functions, module-level objects) still in the kernel's memory.
    probe = nbformat.v4.new_code_cell("import gc, torch\nprint('models in memory:', sum(isinstance(o, torch.nn.Module) and "
                                      "next(o.parameters(), None) is not None for o in gc.get_objects()))")
    probe.id = "test-probe"
    notebook.cells.append(probe)
    for name, value in dict(KAFKA_PROJECT_DIR=str(project), KAFKA_NEW_TOKENS="40", KAFKA_EXPORT="1",
                            KAFKA_SCOREBOARD_CONFIG=str(TINY_SCOREBOARD)).items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("MPLBACKEND", raising=False)  # the kernel's inline backend draws the figures
    NotebookClient(notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}).execute()

    # JupyterLab writes the kernel's kernelspec and language_info into the notebook when it opens
    # it: stored as the kernel reports them, opening the notebook changes nothing. The Python
    # patch version is left out: it is the machine's, not the notebook's.
    spec = KernelSpecManager().get_kernel_spec("python3")
    assert stored["kernelspec"] == {"name": "python3", "display_name": spec.display_name, "language": spec.language}
    written = {k: v for k, v in notebook.metadata["language_info"].items() if k != "version"}
    assert stored["language_info"] == written

    probe = notebook.cells.pop()
    printed = "".join(o.get("text", "") for o in probe.outputs if o.get("name") == "stdout")
    assert printed == "models in memory: 0\n"  # the notebook holds no model between cells
    cells = {cell.id: cell for cell in notebook.cells if cell.cell_type == "code"}
    outputs = [o for cell in cells.values() for o in cell.outputs]
    text = lambda cell: "".join(o.get("text", "") + o.get("data", {}).get("text/markdown", "") for o in cells[cell].outputs)
    images = lambda cell: sum("image/png" in o.get("data", {}) for o in cells[cell].outputs)
    # Nothing but what the cells print: no traceback, no warning, no progress bar, nothing on stderr.
    assert not [o for o in outputs if o.output_type == "error"]
    noise = [o["text"] for o in outputs if o.output_type == "stream" and o.name == "stderr"]
    assert not noise, noise
    for unwanted in ("Traceback", "Warning", "IProgress", "Loading weights", "it/s]"):
        assert unwanted not in "".join(text(c) for c in cells), unwanted
    assert "ok   device:" in text("doctor") and "=> " in text("doctor")  # the quick checks, printed, never raised
    assert "Gallica not needed" in text("downloads") and "model already" in text("downloads") and "novel already" in text("downloads")
    steps = lineage.read_metrics(project, "2c")["steps"]
    assert f"2c: the novel, QLoRA (merged): {steps} steps" in text("monitoring") and images("monitoring") == 1
    assert images("curriculum") == 1 and images("scoreboard") == 1
    assert "| step | sample |" in text("samples")
    blocks = [o["data"]["text/markdown"] for o in cells["trying"].outputs if o.output_type == "display_data"]
    assert blocks[0].startswith("**Prompt**") and len(blocks) == 1 + len(stages.MODEL_STAGES) and blocks[4].startswith("**2c: the novel")
    assert all("`python 2" in blocks[1 + stages.MODEL_STAGES.index(s)] for s in ("2e", "2f"))  # not trained here: their commands
    assert sum(b.startswith("**Prompt**") for b in blocks) == 1  # the prompt once, not in every block

    # The imprint dial of 2d (the tiny pipeline's has three passes): a row and a point per pass, the
    # published one marked; then the seed's test at the first, published and last pass, each the
    # text that pass's own weights write (the published pass: the stage's published weights).
    dialled = lineage.read_metrics(project, "2d")
    passes, published = dialled["passes"], dialled["published_pass"]
    dial_table, = markdown_tables(text("dial"))
    assert dial_table[0][:3] == ["pass", "tokens seen", "held-out loss: the novel ↓"] and len(dial_table) == 1 + len(passes)
    assert [row[0] for row in dial_table[1:]] == [f"**{r['pass']}** (published)" if r["pass"] == published else str(r["pass"])
                                                  for r in passes]
    assert f"Recitation at {TINY_MEMORIZATION['positions']} positions" in text("dial")  # the sizes the tiny 2d measured with
    assert f"each a {TINY_MEMORIZATION['prefix']}-token prefix" in text("dial") and images("dial") == 1
    tested = [o["data"]["text/markdown"] for o in cells["dial-test"].outputs if o.output_type == "display_data"]
    shown = sorted({1, published, len(passes)})
    assert tested[0].startswith("The seed's own test: *K. ouvrit la porte.*") and "temperature 0.8, top-p 0.9" in tested[0]
    assert [block.split("**")[1] for block in tested[1:]] == [f"pass {n}" + (" (published)" if n == published else "")
                                                              for n in shown]
    model, tokenizer = generation.load_stage(project, "2d")  # the published weights, not a pass's folder
    published_text = generation.generate_from_prompts(model, tokenizer, generation.Sampling(new_tokens=40), ["K. ouvrit la porte."])[0]
    assert monitor.quote(published_text.strip()) in tested[1 + shown.index(published)]
    del model

    # The scoreboard as three tables that fit a page, each column written with the same decimals.
    predicts, recites, writes = markdown_tables(text("scoreboard"))
    assert predicts[0] == ["stage", "novel ppl ↓", "novel bpb ↓", "French ppl ↓", "French bpb ↓", "next passage ↑"]
    assert recites[0][:3] == ["stage", "extracted train ↓", "extracted held-out"] and len(recites) == 1 + 5
    assert writes[0][:2] == ["stage", "told apart ↓ 0.5"] and [r[0] for r in writes[1:]][-2:] == ["(novel)", "(French)"]
    assert len(writes[0]) == 10 and all(len(r) == len(t[0]) for t in (predicts, recites, writes) for r in t)
    for table in (predicts, recites, writes):
        for column in list(zip(*table[1:]))[1:]:
            decimals = {len(m.group(1) or "") for c in column for m in [re.match(r"[\d,]+(?:\.(\d+))?", c)] if m}
            assert len(decimals) <= 1, column

    # The continuation under its own title, after the novel's last lines, its settings folded.
    continuation, = [o["data"]["text/markdown"] for o in cells["continuation"].outputs  # (test_continuation may write 2b's)
                     if o.output_type == "display_data" and o["data"]["text/markdown"].startswith("### Le Château, continued (2c)")]
    assert "<details><summary>settings</summary>" in continuation
    novel_end = (stages.folder(project, "1c") / "clean_text.txt").read_text().split()[-6:]
    before, _, after = continuation.partition("The continuation:")
    assert "The novel's last lines" in before and " ".join(novel_end) in before.replace("\n", " ") and after.strip().startswith(">")

    # Step 4's lines as it ran, then its files in a table: size, top-1 agreement and perplexity in llama.cpp.
    export = text("export")
    assert export.index("4 done:") < export.index("| file | size |")  # (test_export may have exported already)
    files = {row[0]: row for row in markdown_tables(export)[0][1:]}
    assert files["`kafka-chateau-q8_0.gguf`"][2] == "llama.cpp" and "→" in files["`kafka-chateau-q8_0.gguf`"][4]
    assert (project / "output" / "scoreboard.json").exists()

    # Every base side by side, on bits per byte: TinyLlama's stages (the notebook's own scoreboard) and the Mistral base.
    bases, = markdown_tables(text("bases"))
    assert bases[0][:4] == ["base", "stage", "novel bpb ↓", "French bpb ↓"]
    assert [row[:2] for row in bases[1:]] == [[stages.BASE_MODEL, s] for s in ("base", "2a", "2b", "2c", "2d")] + \
        [[fixtures.MISTRAL_MODEL, "base"]]
    assert all(re.fullmatch(r"\d+\.\d{3}", row[2]) for row in bases[1:])


def test_an_unfinished_stage_is_a_line_with_its_command_not_a_quote(fresh_project):
    from chateau import generation, monitor
    (stage, reason), = generation.side_by_side(fresh_project[0], generation.Sampling(), model_stages=("2d",))
    block = monitor.side_by_side_block(stage, reason)
    assert block.startswith("**2d: ") and ">" not in block and "`python 2d_train_kafka_fullweight.py`" in block


def test_models_released_frees_the_model_of_an_interrupted_cell():
    """A model loaded by a function the user interrupts: the traceback the kernel keeps would hold
    it (the function's local variables) until the next error."""
    import weakref
    import torch
    from chateau import monitor
    alive = []

    def load_and_score():
        model = torch.nn.Linear(4, 4)
        alive.append(weakref.ref(model))
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt) as interrupted:
        with monitor.models_released():
            load_and_score()
    assert alive[0]() is None and interrupted.traceback  # the model is gone, the traceback kept
