"""The imprint dial: the novel in passes (every training token once per pass), each pass measured
and kept, the rule's pick published, read by step 3 and step 4 without being told, and moved on
purpose with one command (what was made from the previous pick is then stale)."""
import json
import random
import shutil

import numpy as np

from chateau import dial, lineage, stages
from chateau.windows import novel_train_stream, novel_windows, one_pass
from conftest import one_error_line, run_script

CONTINUE, EXPORT = stages.script_of("3"), stages.script_of("4")
SHORT = ["--new-tokens", "8", "--context-tokens", "64", "--chunk-tokens", "8"]


def record(number, loss, extracted):
    return {"pass": number, "validation_loss": {"eval_1c_kafka_loss": loss},
            "memorization": {"train": {"extracted": extracted}, "heldout": {"extracted": 0.0}}}


def test_the_rule_picks_the_latest_pass_that_neither_recites_nor_stops_generalizing():
    curve = [record(1, 3.00, 0.0), record(2, 2.80, 0.0), record(3, 2.70, 0.0), record(4, 2.76, 0.0),
             record(5, 2.75, 0.02), record(6, 2.90, 0.30)]
    # Pass 4 is within 3% of the lowest (2.70) and recites nothing; 5 recites 2%; 6 both.
    assert dial.choose(curve, max_extraction=0.01, loss_tolerance=0.03) == 4
    assert dial.choose(curve, max_extraction=0.05, loss_tolerance=0.03) == 5   # the thresholds decide
    assert dial.choose(curve, max_extraction=0.01, loss_tolerance=0.0) == 3
    # Every pass recites: the one that recites least, the earliest among equals.
    assert dial.choose([record(1, 2.0, 0.2), record(2, 1.9, 0.1), record(3, 1.8, 0.1)], 0.01, 0.03) == 2
    assert dial.choose([], 0.01, 0.03) is None


def test_one_pass_holds_every_training_token_of_the_novel_once():
    """1c's windows overlap and are shuffled: the novel's training text is rebuilt from them
    exactly, and cut into samples that hold each of its tokens once (the last of each part is
    aligned to its end)."""
    n, seq_len, stride, held_out, seed = 5000, 128, 32, 0.1, 3
    text = np.random.default_rng(0).integers(3, 500, n)
    starts, validation = novel_windows(n, seq_len, stride, held_out)
    random.Random(seed).shuffle(starts)
    rows = np.stack([text[s:s + seq_len] for s in starts])
    stream = novel_train_stream(rows, n, seq_len, stride, held_out, seed)
    train = stream >= 0
    assert np.array_equal(stream[train], text[train]) and train.sum() == n - len(validation) * seq_len
    samples = one_pass(stream, 64)
    parts = np.split(np.flatnonzero(train), np.flatnonzero(np.diff(np.flatnonzero(train)) > 1) + 1)
    assert len(parts) == 2 and samples.shape == (sum(-(-len(part) // 64) for part in parts), 64)
    # Every training position is in a sample, in order: the samples are the text's own consecutive pieces.
    covered = {tuple(text[s:s + 64]) for part in parts for s in range(part[0], part[-1] + 2 - 64)}
    assert all(tuple(sample) in covered for sample in samples)
    assert sum(len(part) for part in parts) <= samples.size < sum(len(part) for part in parts) + 2 * 64
    assert novel_train_stream(rows, n, seq_len, stride, held_out, seed + 1) is None  # not these windows


def test_2d_trains_in_passes_measures_each_and_publishes_the_rules_pick(pipeline):
    project = pipeline[0]
    folder, metrics = stages.folder(project, "2d"), lineage.read_metrics(project, "2d")
    records = json.loads((folder / "passes.json").read_text())
    assert [r["pass"] for r in records] == [1, 2, 3] == [r["pass"] for r in metrics["passes"]]
    for r in records:
        assert set(r["memorization"]) == {"train", "heldout"} and r["memorization"]["train"]["positions"] == 4
        assert {"eval_1c_kafka_loss", "eval_1a_gallica_fullweight_loss"} <= set(r["validation_loss"])
        assert "lexicon_per_1000" in r and (folder / "passes" / f"pass-{r['pass']}" / "model.safetensors").exists()
    # The passes see the same number of tokens each: one pass of the novel's training text.
    steps = [r["step"] for r in records]
    assert steps[1] - steps[0] == steps[2] - steps[1] == steps[0]
    chosen = dial.choose(records, 0.01, 0.03)
    assert metrics["published_pass"] == chosen
    assert (folder / "model.safetensors").read_bytes() == (folder / "passes" / f"pass-{chosen}" / "model.safetensors").read_bytes()
    assert metrics["validation_loss_end"] == records[chosen - 1]["validation_loss"]


def test_step_3_and_step_4_use_the_published_pass_or_the_one_asked(pipeline, tmp_path):
    project = tmp_path / "p"
    shutil.copytree(pipeline[0], project)
    published = lineage.read_metrics(project, "2d")["published_pass"]
    out = run_script(project, CONTINUE, *SHORT, "--stage", "2d")
    assert f"continuing with 2d, pass {published} of 3 (the dial's pick)" in out.stdout
    other = 1 if published != 1 else 2
    out = run_script(project, CONTINUE, *SHORT, "--stage", "2d", "--epoch", other, "--output", "output/other.md")
    assert f"pass {other} of 3 (--epoch: not the published pass)" in out.stdout
    assert f"- pass: pass {other} of 3" in (project / "output" / "other.md").read_text()
    out = run_script(project, EXPORT, "--stage", "2d", "--types", "f16")
    assert f"exporting 2d, pass {published} of 3 (the dial's pick)" in out.stdout
    card = (stages.export_dir(project, "2d") / "README.md").read_text()
    assert card.startswith("---\nbase_model: TinyLlama/TinyLlama_v1.1\nlanguage:\n- fr\n") and "pipeline_tag: text-generation" in card
    assert f"pass {published} of 3 (the dial's pick)" in card and "training text extracted" in card
    chosen = lineage.read_metrics(project, "2d")["passes"][published - 1]["memorization"]["train"]
    assert f"exactly {100 * chosen['extracted']:.1f}% of the time ({chosen['agreed_tokens']:.1f} tokens agreed" in card
    one_error_line(run_script(project, CONTINUE, *SHORT, "--stage", "2d", "--epoch", 9, check=False), "has no pass 9")

    # Moving the dial: one command; the continuation and the export made from the old pick are stale.
    moved = run_script(project, "chateau/dial.py", "--stage", "2d", "--pass-number", other)
    assert f"pass {other} is now the published model (was pass {published})" in moved.stdout
    assert "continuation_2d.md was made from the previous pass" in moved.stderr and "gguf" in moved.stderr
    assert lineage.read_metrics(project, "2d")["published_pass"] == other
    assert lineage.stale_reason(project, "2d") is None  # the stage itself is current: only its outputs changed
    one_error_line(run_script(project, EXPORT, "--stage", "2d", "--types", "f16", check=False), "--overwrite")
    out = run_script(project, CONTINUE, *SHORT, "--stage", "2d")
    assert f"pass {other} of 3 (the dial's pick)" in out.stdout


def test_epoch_on_a_stage_without_passes_is_refused(pipeline):
    out = run_script(pipeline[0], CONTINUE, *SHORT, "--stage", "2a", "--epoch", 1, check=False)
    assert out.returncode == 2 and "--epoch 1: only a stage trained in passes has them" in out.stderr
