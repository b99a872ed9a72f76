"""Several bases in one project: a Mistral-architecture base (a tiny random MistralForCausalLM with
a byte-fallback SentencePiece-style tokenizer of its own, dev/fixtures.py) runs its own path,
1a, 1c, 2e, 2f, step 3, step 4 and the scoreboard, in a project where the TinyLlama curriculum is
already finished, and not one file of the TinyLlama stages changes."""
import json
import re
import shutil

import torch
from safetensors.torch import load_file

from chateau import lineage, scoreboard, stages
from conftest import PIPELINE_STAGES, hashes, run_script, tiny_flags
from dev import fixtures
from dev.runner import scoreboard_settings

MISTRAL = ["--base-model", fixtures.MISTRAL_MODEL]


def tinyllama_files(project):
    """Every file the default base's stages made: what running another base must never change."""
    return hashes(*(stages.folder(project, s) for s in stages.STAGES if stages.STAGES[s].kind != "export"),
                  project / "runs")


def test_a_mistral_base_runs_its_own_path_beside_a_finished_tinyllama(pipeline, tmp_path):
    project = tmp_path / "p"
    # The finished TinyLlama project, without any other base a test may have added to it.
    shutil.copytree(pipeline[0], project, ignore=lambda folder, names: [n for n in names if n in ("bases", "Mistral-7B-v0.1")])
    fixtures.build_mistral(project)
    before = tinyllama_files(project)
    work = stages.workspace(project, fixtures.MISTRAL_MODEL)
    assert work == project / "bases" / "Mistral-7B-v0.1"

    for stage in ("1a", "1c", "2e", "2f"):
        script = stages.script_of(stage)
        last = run_script(project, script, *tiny_flags(script), *MISTRAL).stdout.strip().splitlines()[-1]
        # Its folder, and a next command that keeps to this base.
        assert str(stages.folder(work, stage)) in last and f"Next: python" in last, last
        assert all(f"{script} --base-model {fixtures.MISTRAL_MODEL}" in last
                   for script in re.findall(r"python (\S+\.py)", last)), last
    # Its data is its own tokenizer's, not the TinyLlama data beside it.
    own, other = (json.loads((stages.folder(p, "1a") / "manifest.json").read_text()) for p in (work, project))
    assert own["identity"]["inputs"]["tokenizer"] != other["identity"]["inputs"]["tokenizer"]
    for stage in ("2e", "2f"):  # each learns its data
        m = lineage.read_metrics(work, stage)
        key = next(iter(m["validation_loss_start"]))
        assert m["validation_loss_end"][key] < m["validation_loss_start"][key] - 0.02, (stage, m)
    # 2f continued 2e's adapter (loaded trainable: every factor changed), in passes, merged.
    m = lineage.read_metrics(work, "2f")
    assert m["adapter_from"] == "2e" and m["passes"] and m["merged"] and m["published_pass"]
    start, end = (load_file(stages.folder(work, s) / "adapter_model.safetensors") for s in ("2e", "2f"))
    assert all(not torch.equal(start[k], end[k]) for k in start)
    assert json.loads((stages.model_dir(work, "2f") / "config.json").read_text())["model_type"] == "mistral"

    script = stages.script_of("3")
    out = run_script(project, script, *tiny_flags(script), *MISTRAL, "--stage", "2f")
    assert "pass" in out.stdout and (work / "output" / "continuation_2f.md").exists()
    assert not (project / "output" / "continuation_2f.md").exists()

    # Step 4: every file checked in llama.cpp (step 4 refuses to publish one that fails), the
    # sliding window said and the GGUF's context capped at it.
    out = run_script(project, stages.script_of("4"), *MISTRAL, "--stage", "2f")  # its default types: f16, q8_0, q4_k_m
    assert "sliding window" in out.stdout
    record = json.loads((stages.export_dir(work, "2f") / "export.json").read_text())
    for kind in ("f16", "q8_0", "q4_k_m"):
        figures = record[f"kafka-chateau-{kind}.gguf"]["llama_cpp"]
        assert isinstance(figures, dict) and figures["tokenizer_same_ids"], figures
        assert record[f"kafka-chateau-{kind}.gguf"]["context"]["capped_at_sliding_window"]
    card = (stages.export_dir(work, "2f") / "README.md").read_text()
    assert card.startswith("---\nbase_model: mistralai/Mistral-7B-v0.1\n") and "2e: " in card and "2f: " in card

    # The scoreboard of this base: its base model, 2e and 2f, in bits per byte as in perplexity.
    board = scoreboard.build(work, scoreboard_settings("tiny", *MISTRAL), model_stages=("base", "2e", "2f"))
    assert [row["stage"] for row in board["rows"]] == ["base", "2e", "2f"]
    assert all(row["novel_bits_per_byte"] > 0 and row["french_bits_per_byte"] > 0 for row in board["rows"])
    assert (stages.folder(work, "3") / "scoreboard.json").exists()  # in its own output/ (TinyLlama's: the digests below)

    # The TinyLlama stages: not one file changed, none stale.
    assert tinyllama_files(project) == before
    assert all(lineage.stale_reason(project, s) is None for s in PIPELINE_STAGES if stages.STAGES[s].kind == "train")


def test_a_second_base_with_the_same_folder_name_is_refused(fresh_project, tmp_path):
    project, _ = fresh_project
    stages.claim_workspace(project, "models/Other")  # bases/Other/ is models/Other's
    shutil.copytree(project / stages.BASE_MODEL, tmp_path / "Other")
    script = stages.script_of("1c")
    out = run_script(project, script, *tiny_flags(script), "--base-model", str(tmp_path / "Other"), check=False)
    assert out.returncode == 2 and "holds the stages of base models/Other" in out.stderr
    assert not (stages.workspace(project, "models/Other") / "data").exists()


def test_a_merge_runs_where_the_bf16_weights_fit_and_says_where(inputs_dir, monkeypatch, capsys):
    """models.merge_device: a 7B model's 14.5 GB do not fit a 12 GB card's free memory, so its
    merge runs on the CPU, in a line; a model that fits merges on the GPU. (Without a GPU here, the
    device's answers are simulated: what is tested is the decision, from the real parameter count.)"""
    from chateau import models
    model_dir = inputs_dir[0] / stages.BASE_MODEL
    assert models.parameter_count(model_dir) == sum(p.numel() for p in load_file(model_dir / "model.safetensors").values())
    monkeypatch.setattr(models, "use_cuda", lambda: True)
    free = lambda gib: monkeypatch.setattr(torch.cuda, "mem_get_info", lambda *a: (int(gib * 2**30), 12 * 2**30))
    free(11.6)
    assert models.merge_device(model_dir) == "cuda" and "CPU" not in capsys.readouterr().out
    monkeypatch.setattr(models, "parameter_count", lambda folder: 7_241_732_096)  # Mistral-7B-v0.1
    assert models.merge_device(model_dir) == "cpu"
    assert "the merge runs on the CPU" in capsys.readouterr().out
    monkeypatch.setattr(models, "use_cuda", lambda: False)
    assert models.merge_device(model_dir) == "cpu"
