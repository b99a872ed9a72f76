"""What was trained is what is used: no stale, half-merged or mislabelled model reaches step 3,
step 4 or the scoreboard, and no setting that was never valid destroys a finished stage. Each case
is tried as a user would, on a copy of the finished tiny project; each test asserts the outcome
(nothing finished touched, the wrong model never used, or one clear line)."""
import json
import pickle
import shutil

import pytest
import torch

from chateau import lineage, scoreboard, stages
from chateau.cli import run
from conftest import hashes, one_error_line, run_script, tiny_flags
from dev.runner import scoreboard_settings

TWO_A, TWO_B, TWO_C = (stages.script_of(s) for s in ("2a", "2b", "2c"))
CONTINUE, EXPORT = stages.script_of("3"), stages.script_of("4")
SHORT = ["--new-tokens", "12", "--context-tokens", "64", "--chunk-tokens", "12"]  # a short continuation


# -- A stage is finished only when all of it is: 2c's training and its merge.

def test_a_merge_killed_midway_is_redone_by_the_rerun(project):
    out = stages.folder(project, "2c")
    merged = stages.model_dir(project, "2c")
    (out / "metrics.json").unlink()  # killed during the merge: metrics.json is written after it
    (merged / "config.json").write_text("{}")  # what is there is not this run's merge
    (out / ".merged.partial").mkdir()
    assert not lineage.is_finished(project, "2c")
    one_error_line(run_script(project, CONTINUE, *SHORT, check=False), "not finished")  # never the half-merged model
    rerun = run_script(project, TWO_C, *tiny_flags(TWO_C))
    assert "already trained" not in rerun.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["merged"] and json.loads((merged / "config.json").read_text())["model_type"] == "llama"
    assert not (out / ".merged.partial").exists()
    run_script(project, CONTINUE, *SHORT)


def test_merge_false_removes_an_older_merged_model(project):
    run_script(project, TWO_C, *tiny_flags(TWO_C), "--merge", "false", "--overwrite")
    assert not stages.model_dir(project, "2c").exists()
    one_error_line(run_script(project, CONTINUE, *SHORT, check=False), "2c model not found")


def test_the_merged_model_is_measured_against_the_validated_one(pipeline):
    metrics = json.loads((stages.folder(pipeline[0], "2c") / "metrics.json").read_text())
    assert metrics["merged_validation_loss"] > 0 and metrics["merge_gap"] <= metrics["merge_tolerance"] == 0.05
    assert metrics["merge_gap"] == pytest.approx(metrics["merged_validation_loss"] / metrics["adapter_validation_loss"] - 1, abs=1e-4)
    assert metrics["adapter_validation_loss"] == round(metrics["validation_loss_end"]["eval_1c_kafka_loss"], 5)


def test_a_merge_that_drifts_beyond_the_tolerance_is_not_published(project, monkeypatch):
    from chateau import qlora
    monkeypatch.setattr(qlora, "MERGE_TOLERANCE", 0.0)  # any difference at all is now too much
    before = hashes(stages.model_dir(project, "2c"))
    out = run_script(project, TWO_C, *tiny_flags(TWO_C), "--overwrite", check=False)
    one_error_line(out, "the merge is not published")
    assert not lineage.is_finished(project, "2c") and hashes(stages.model_dir(project, "2c")) == before


# -- Every consumer runs the same staleness check on what it reads, the base model included.

def test_a_stale_2c_is_refused_by_step_3_step_4_and_the_scoreboard(project, capsys):
    shutil.rmtree(stages.export_dir(project, "2c"), ignore_errors=True)  # (the export tests may have made one)
    run_script(project, stages.script_of("1c"), *tiny_flags(stages.script_of("1c")), "--stride", "64", "--overwrite")
    for script, flags in ((CONTINUE, SHORT), (EXPORT, ["--types", "f16"])):
        one_error_line(run_script(project, script, *flags, check=False), "step 2c is stale: 1c changed")
    assert not (project / "output" / "continuation_2c.md").exists() and not stages.export_dir(project, "2c").exists()
    rows = scoreboard.build(project, scoreboard_settings("tiny", "--words", 1, "--next-passage-items", 0, "--max-eval-samples", 2),
                            model_stages=("2c",))["rows"]
    assert rows == [] and "2c is stale" in capsys.readouterr().out
    # --allow-stale: the user's choice, said in the output's header
    run_script(project, CONTINUE, *SHORT, "--allow-stale")
    assert "STALE MODEL (--allow-stale): step 2c is stale: 1c changed" in (project / "output" / "continuation_2c.md").read_text()


def test_a_replaced_base_model_makes_2a_stale_for_every_later_step(project):
    from safetensors.torch import load_file, save_file
    weights = project / stages.BASE_MODEL / "model.safetensors"
    tensors = load_file(weights)
    save_file({k: v + 0.01 for k, v in tensors.items()}, weights, metadata={"format": "pt"})
    for script in (TWO_B, TWO_C):
        one_error_line(run_script(project, script, *tiny_flags(script), check=False), "step 2a is stale: base changed")
    one_error_line(run_script(project, EXPORT, "--stage", "2a", check=False), "step 2a is stale: base changed")


# -- Inputs are what the curriculum needs.

@pytest.mark.parametrize("model_type, script", [("gpt2", TWO_A), ("gemma", stages.script_of("1c"))])
def test_a_base_model_of_another_architecture_is_refused_before_anything(fresh_project, model_type, script):
    project, _ = fresh_project
    config = project / stages.BASE_MODEL / "config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "model_type": model_type}))
    one_error_line(run_script(project, script, *tiny_flags(script), check=False), f"is a '{model_type}' model")
    assert not (project / "models" / "2a_gallica_fullweight").exists() and not (project / "data").exists()


def test_a_config_whose_weights_do_not_all_load_is_refused(project):
    config = project / stages.BASE_MODEL / "config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "num_hidden_layers": 3}))  # a layer with no weights
    before = hashes(stages.folder(project, "2a"))
    out = run_script(project, TWO_A, *tiny_flags(TWO_A), "--overwrite", check=False)
    one_error_line(out, "weights are missing")
    assert hashes(stages.folder(project, "2a")) == before


def test_a_model_folder_that_asks_for_custom_code_is_refused_without_a_prompt(fresh_project):
    project, _ = fresh_project
    config = project / stages.BASE_MODEL / "tokenizer_config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "auto_map": {"AutoTokenizer": ["evil.Tok", None]}}))
    one_error_line(run_script(project, stages.script_of("1c"), *tiny_flags(stages.script_of("1c")), check=False),
                   "asks for custom code (auto_map): refused")


def test_a_pickle_where_weights_are_expected_is_refused_naming_the_file(fresh_project):
    project, _ = fresh_project
    base = project / stages.BASE_MODEL
    (base / "model.safetensors").unlink()
    (base / "pytorch_model.bin").write_bytes(pickle.dumps(print))  # a pickle runs what it names when loaded
    out = run_script(project, TWO_A, *tiny_flags(TWO_A), check=False)
    one_error_line(out, "pytorch_model.bin is a pickle where weights are expected")


def test_a_checkpoint_holding_a_pickle_payload_is_refused_in_one_line(project):
    out_dir = stages.folder(project, "2a")
    (out_dir / "metrics.json").unlink()
    shutil.rmtree(out_dir / "checkpoint-40")  # resume from checkpoint-20 ...
    (out_dir / "checkpoint-20" / "optimizer.pt").write_bytes(pickle.dumps(print))  # ... whose optimizer state is a payload
    out = run_script(project, TWO_A, *tiny_flags(TWO_A), check=False)
    one_error_line(out, "checkpoint-20")
    assert "weights-only" in out.stderr or "damaged" in out.stderr


def test_a_truncated_checkpoint_is_one_line(project):
    out_dir = stages.folder(project, "2a")
    (out_dir / "metrics.json").unlink()
    shutil.rmtree(out_dir / "checkpoint-40")
    weights = out_dir / "checkpoint-20" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    one_error_line(run_script(project, TWO_A, *tiny_flags(TWO_A), check=False), "checkpoint-20")


def test_a_corrupt_model_is_one_line_for_step_3_and_the_next_step(project):
    weights = stages.folder(project, "2a") / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:5000])
    one_error_line(run_script(project, CONTINUE, *SHORT, "--stage", "2a", "--allow-stale", check=False), "cannot be loaded")
    one_error_line(run_script(project, TWO_B, *tiny_flags(TWO_B), "--overwrite", check=False), "cannot be loaded")


# -- Outputs: a file inside a stage's folder is refused; a relative path is the project's.

def test_step_3_never_writes_into_a_stage_folder_and_resolves_against_the_project(project):
    clean = stages.folder(project, "1c") / "clean_text.txt"
    before = clean.read_bytes()
    out = run_script(project, CONTINUE, *SHORT, "--output", "data/1c_kafka/clean_text.txt", check=False)
    one_error_line(out, "inside step 1c's folder")
    assert clean.read_bytes() == before
    run_script(project, CONTINUE, *SHORT, "--output", "chapters/next.md")
    assert (project / "chapters" / "next.md").read_text().startswith("# Le Château, continued (2c)")


def test_a_prompt_file_that_is_not_utf8_is_one_line(project, tmp_path):
    prompt = tmp_path / "prompt.txt"
    prompt.write_bytes("K. ouvrit la porte, déjà".encode("latin-1"))
    out = run_script(project, CONTINUE, *SHORT, "--prompt-file", prompt, check=False)
    assert out.returncode == 2 and "is not UTF-8 text" in out.stderr.split("invalid settings:")[1]


# -- What metrics.json reports is what was trained; a batch larger than the data is refused.

def test_tokens_seen_are_the_tokens_trained_and_a_batch_larger_than_the_data_is_refused(project):
    metrics = json.loads((stages.folder(project, "2a") / "metrics.json").read_text())
    assert metrics["tokens_seen"] == metrics["steps"] * metrics["tokens_per_step"] == 40 * 8 * 64
    before = hashes(stages.folder(project, "2a"))
    out = run_script(project, TWO_A, *tiny_flags(TWO_A), "--batch-size", "128", "--tokens-per-step", "8192",
                     "--overwrite", check=False)
    one_error_line(out, "more samples than the 96 training samples")
    assert hashes(stages.folder(project, "2a")) == before


# -- Settings that were never valid never touch a finished stage.

@pytest.mark.parametrize("flags", [["--weight-decay", "nan"], ["--max-grad-norm", "nan"], ["--liger-kernel"],
                                   ["--seed", str(2**40)], ["--sample-temperature", "1e-30"]])
def test_invalid_settings_are_refused_before_the_finished_stage_is_touched(project, flags):
    before = hashes(stages.folder(project, "2a"))
    out = run_script(project, TWO_A, *tiny_flags(TWO_A), *flags, "--overwrite", check=False)
    assert out.returncode == 2 and flags[0] in out.stderr.split("invalid settings:")[1]
    assert hashes(stages.folder(project, "2a")) == before


def test_a_damaged_metrics_file_is_not_a_finished_stage(project):
    metrics = stages.folder(project, "2a") / "metrics.json"
    metrics.write_text("")  # what a full disk left before metrics.json was written atomically
    one_error_line(run_script(project, TWO_B, *tiny_flags(TWO_B), check=False), "2a_train_gallica_fullweight.py")
    rerun = run_script(project, TWO_A, *tiny_flags(TWO_A))  # resumes from its final checkpoint and finishes
    assert "already trained" not in rerun.stdout and json.loads(metrics.read_text())["steps"] == 40


# -- Leftovers are cleaned or named by the next run.

def test_a_killed_runs_old_folder_is_removed_by_the_next_run(project):
    old = stages.folder(project, "1c").parent / ".1c_kafka.old-999999999"
    (old / "train").mkdir(parents=True)
    out = run_script(project, stages.script_of("1c"), *tiny_flags(stages.script_of("1c")))
    assert "already prepared" in out.stdout and f"removing {old}" in out.stdout and not old.exists()


def test_a_lock_names_its_file_and_a_reused_pid_is_taken_over(project):
    out_dir = stages.folder(project, "1c")
    lock = out_dir.parent / f".{out_dir.name}.lock"
    lock.write_text(f"1 {lineage.process_start(1)}")  # pid 1 is alive and started then: a real holder
    out = run_script(project, stages.script_of("1c"), *tiny_flags(stages.script_of("1c")), check=False)
    line = one_error_line(out, "already running (pid 1")
    assert str(lock) in line and "ps -p 1" in line
    lock.write_text("1 12345")  # pid 1 is alive, but not the process that took the lock
    assert "already prepared" in run_script(project, stages.script_of("1c"), *tiny_flags(stages.script_of("1c"))).stdout


def test_a_second_signal_is_one_line(capsys):
    def interrupted_twice(argv):
        raise KeyboardInterrupt
    with pytest.raises(SystemExit) as stop:
        run(interrupted_twice)
    err = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 130 and len(err) == 1 and "second signal" in err[0]


def test_a_parquet_column_of_the_wrong_type_is_one_line(fresh_project):
    import pyarrow as pa
    import pyarrow.parquet as pq
    project, _ = fresh_project
    path = sorted((project / stages.GALLICA_DIR).rglob("*.parquet"))[0]
    table = pq.read_table(path)
    table = table.set_column(table.schema.get_field_index("complete_text"), "complete_text",
                             pa.array(range(len(table)), pa.int64()))
    pq.write_table(table, path)
    script = stages.script_of("1a")
    one_error_line(run_script(project, script, *tiny_flags(script), check=False), "column complete_text is int64, not text")


def test_the_scoreboard_says_which_form_of_each_stage_it_scored(pipeline):
    assert scoreboard.form("2b") == "adapter on its base, unmerged" and scoreboard.form("2c") == "merged model (merged/)"
    assert scoreboard.form("2a") == scoreboard.form("2d") == "full model" and scoreboard.form("base") == "base model"


def test_the_tiny_project_base_is_current(pipeline):
    """The shared project itself: every trained stage is current (so the cases above start clean)."""
    for stage in stages.TRAIN_STAGES:
        assert lineage.stale_reason(pipeline[0], stage) is None, stage
    assert torch.__version__
