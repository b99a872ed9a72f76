"""Nothing finished is ever changed by accident: reruns, concurrent runs, stale inputs and bad
settings, tried as a careless or unlucky user would (issue cases 1-7), and one clear line for
every kind of bad input."""
import hashlib
import json
import os
import shutil
import signal
import subprocess
import time

import pytest
import torch

from chateau import gallica, stages
from chateau.cli import StageError, parse_settings
from chateau.novel import read_pdf_pages
from conftest import ROOT, fixtures, one_error_line, run_script, tiny_flags
from dev.runner import start_script

TWO_A = "2a_train_gallica_fullweight.py"


def tree_hashes(*folders):
    """{relative path: sha256} of every file under the folders: what "byte-identical" means here."""
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for f in folders if f.exists()
            for p in sorted(f.rglob("*")) if p.is_file()}


def copy_of(pipeline, tmp_path, name="p"):
    project = tmp_path / name
    shutil.copytree(pipeline[0], project)
    return project


def two_a_files(project):
    return tree_hashes(stages.folder(project, "2a"), project / "runs" / stages.stage("2a").run_name)


# -- Case 1: a finished train step rerun changes nothing; other settings need --overwrite; later
#    stages trained on the old one are stale.

def test_rerunning_a_finished_stage_changes_nothing_and_other_settings_need_overwrite(pipeline, tmp_path):
    project = copy_of(pipeline, tmp_path)
    before = two_a_files(project)
    again = run_script(project, TWO_A, *tiny_flags(TWO_A))
    assert "already trained" in again.stdout and two_a_files(project) == before
    # The run replayed from its own settings.json: the same run, so nothing to do.
    replay = run_script(project, TWO_A, "--config", stages.folder(project, "2a") / "settings.json")
    assert "already trained" in replay.stdout and two_a_files(project) == before
    # How a run is executed (batch per device, frequencies) is not what it makes.
    again = run_script(project, TWO_A, *tiny_flags(TWO_A), "--batch-size", "4", "--eval-steps", "5", "--save-steps", "7")
    assert "already trained" in again.stdout and two_a_files(project) == before
    other = run_script(project, TWO_A, *tiny_flags(TWO_A), "--max-steps", "6", "--lr", "5e-3", check=False)
    one_error_line(other, "--overwrite")
    assert two_a_files(project) == before  # settings.json still says what the model was trained with
    flags = [*tiny_flags(TWO_A), "--max-steps", "6", "--save-steps", "6"]
    run_script(project, TWO_A, *flags, "--overwrite")
    metrics = stages.folder(project, "2a") / "metrics.json"
    assert json.loads(metrics.read_text())["steps"] == 6
    assert json.loads((stages.folder(project, "2a") / "settings.json").read_text())["max_steps"] == 6
    stale = run_script(project, "2c_train_kafka_QLoRA.py", *tiny_flags("2c_train_kafka_QLoRA.py"), check=False)
    one_error_line(stale, "stale")  # 2b was trained on the old 2a
    # Killed after its last checkpoint, before it finished: the rerun finishes at --max-steps.
    metrics.unlink()
    run_script(project, TWO_A, *flags)
    assert json.loads(metrics.read_text())["steps"] == 6


# -- Case 2: bad settings are refused before anything of the finished stage is touched.

def test_bad_settings_are_refused_before_touching_the_finished_stage(pipeline, tmp_path):
    project = copy_of(pipeline, tmp_path)
    partial = stages.folder(project, "2a") / "checkpoint-999"
    partial.mkdir()
    before = two_a_files(project)
    out = run_script(project, TWO_A, *tiny_flags(TWO_A), "--warmup-steps", "-5", "--resume", partial, check=False)
    problems = out.stderr.split("invalid settings:")[1]
    assert out.returncode == 2 and "--warmup-steps" in problems and "complete checkpoint" in problems
    assert two_a_files(project) == before


@pytest.mark.parametrize("flags, expected", [
    (["--seed", "-1", "--resume", "never"], "--seed"),
    (["--sample-temperature", "0.001"], "--sample-temperature"),  # 0 is greedy; (0, 0.01) overflows
    (["--attn-implementation", "flash"], "--attn-implementation"),
    (["--lr", "1e6"], "--lr"),
])
def test_settings_the_trainer_would_reject_later_are_problems_now(flags, expected, capsys):
    import importlib
    with pytest.raises(SystemExit):
        parse_settings(importlib.import_module("2a_train_gallica_fullweight").Settings, flags)
    assert expected in capsys.readouterr().err.split("invalid settings:")[1]


# -- Case 3: two prepare runs at once: one refuses, the other's output is complete.

def test_two_prepare_runs_at_once_one_refuses_the_other_completes(fresh_project):
    project, _ = fresh_project
    flags = ["--n-samples", "40", "--seq-len", "64", "--max-samples-per-book", "40", "--validation-samples", "8",
             "--validation-percent", "25", "--min-chars", "500", "--num-proc", "1"]
    out_dir = stages.folder(project, "1a")
    lock = out_dir.parent / f".{out_dir.name}.lock"
    # The first run is paused (SIGSTOP) as soon as it holds the lock, so the second always asks
    # while it is held, however fast the machine; then the first goes on and finishes.
    first = start_script(project, "1a_prepare_gallica_fullweight.py", *flags, text=True,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while not lock.exists() and first.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    assert lock.exists(), first.communicate()
    os.kill(first.pid, signal.SIGSTOP)
    try:
        refused = run_script(project, "1a_prepare_gallica_fullweight.py", *flags, check=False)
    finally:
        os.kill(first.pid, signal.SIGCONT)
    (_, err), code = first.communicate(timeout=180), first.returncode
    assert code == 0, err[-2000:]
    one_error_line(refused, "already running")
    assert str(first.pid) in refused.stderr
    from datasets import load_from_disk
    manifest = json.loads((out_dir / "manifest.json").read_text())
    data = load_from_disk(str(out_dir))
    assert len(data["train"]) == manifest["counts"]["train_samples"] == 40
    assert len(data["validation"]) == manifest["counts"]["validation_samples"] == 8
    assert not lock.exists() and not list(out_dir.parent.glob(".*.partial-*"))


def test_a_dead_runs_lock_is_taken_over(fresh_project):
    project, _ = fresh_project
    out_dir = stages.folder(project, "1c")
    out_dir.parent.mkdir(parents=True)
    (out_dir.parent / f".{out_dir.name}.lock").write_text("999999999")  # no such process
    run_script(project, "1c_prepare_kafka.py", *tiny_flags("1c_prepare_kafka.py"))
    assert (out_dir / "manifest.json").exists()


# -- Case 4: changed inputs are noticed.

def test_a_replaced_parquet_file_or_pdf_is_noticed(pipeline, tmp_path):
    project = copy_of(pipeline, tmp_path)
    parquet = sorted((project / stages.GALLICA_DIR).rglob("*.parquet"))[0]
    fixtures.build_gallica(tmp_path / "other", n_files=1, books_per_file=24, pages=4, seed=7)
    shutil.copy(next((tmp_path / "other").rglob("*.parquet")), parquet)  # another file, the same name
    out = run_script(project, "1a_prepare_gallica_fullweight.py", *tiny_flags("1a_prepare_gallica_fullweight.py"),
                     check=False)
    one_error_line(out, "other inputs")
    fixtures.build_novel_pdf(project / stages.NOVEL_PDF, fixtures.novel_source(seed=5))
    out = run_script(project, "1c_prepare_kafka.py", *tiny_flags("1c_prepare_kafka.py"), check=False)
    one_error_line(out, "other inputs")


# -- Case 5: garbage is never accepted as success.

def test_one_token_samples_are_refused():
    with pytest.raises(SystemExit):
        parse_settings(gallica.Settings1a, ["--seq-len", "1"])


def test_a_non_finite_loss_stops_training_and_the_stage_is_not_finished(pipeline, tmp_path):
    from safetensors.torch import load_file, save_file
    project = copy_of(pipeline, tmp_path)
    shutil.rmtree(stages.folder(project, "2a"))
    weights = project / stages.BASE_MODEL / "model.safetensors"
    tensors = load_file(weights)
    name = next(k for k in tensors if "layers.0.mlp.down_proj" in k)
    tensors[name] = torch.full_like(tensors[name], float("nan"))
    save_file(tensors, weights, metadata={"format": "pt"})
    out = run_script(project, TWO_A, *tiny_flags(TWO_A), "--max-steps", "6", "--logging-steps", "1", check=False)
    one_error_line(out, "not finite")
    assert not (stages.folder(project, "2a") / "metrics.json").exists()


# -- Case 6: no validation split where a later step needs one.

def test_a_novel_without_a_held_out_slice_is_refused_up_front(capsys):
    import importlib
    settings = importlib.import_module("1c_prepare_kafka").Settings
    with pytest.raises(SystemExit):
        parse_settings(settings, ["--validation-fraction", "0"])
    assert "--validation-fraction must be in (0, 0.5)" in capsys.readouterr().err


# -- Case 7: inputs are what they claim; only finished stages are used.

def test_an_html_page_saved_as_the_pdf_is_refused(fresh_project):
    project, _ = fresh_project
    (project / stages.NOVEL_PDF).write_text("<!DOCTYPE html><html><body>Accès refusé. Connexion requise.</body></html>")
    out = run_script(project, "1c_prepare_kafka.py", *tiny_flags("1c_prepare_kafka.py"), check=False)
    one_error_line(out, "is not a PDF")
    assert not stages.folder(project, "1c").exists()


def test_step_3_refuses_an_unfinished_stage(pipeline, tmp_path):
    project = copy_of(pipeline, tmp_path)
    (stages.folder(project, "2c") / "metrics.json").unlink()
    out = run_script(project, "3_continue_kafka.py", *fixtures.TINY_CONTINUE, check=False)
    one_error_line(out, "not finished")


# -- One clear line for each kind of bad input (in-process where the check is a function).

def test_truncated_and_encrypted_pdfs_each_have_their_message(tmp_path):
    import pymupdf
    good = tmp_path / "good.pdf"
    fixtures.build_novel_pdf(good)
    cut = tmp_path / "cut.pdf"
    cut.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    with pytest.raises(StageError, match="truncated"):
        read_pdf_pages(cut)
    locked = tmp_path / "locked.pdf"
    doc = pymupdf.open(good)
    doc.save(locked, encryption=pymupdf.PDF_ENCRYPT_AES_256, owner_pw="o", user_pw="secret")
    with pytest.raises(StageError, match="encrypted"):
        read_pdf_pages(locked)


@pytest.mark.parametrize("content, expected", [
    (b"", "not a readable parquet file"),
    (b"this is not parquet at all", "not a readable parquet file"),
    ("truncated", "not a readable parquet file"),
    ("no_text_column", "no column complete_text"),
])
def test_every_parquet_problem_names_the_file(tmp_path, content, expected):
    import pyarrow.parquet as pq
    fixtures.build_gallica(tmp_path / "g", n_files=1)
    path = tmp_path / "bad.parquet"
    real = next((tmp_path / "g").rglob("*.parquet"))
    if content == "truncated":
        path.write_bytes(real.read_bytes()[:500])
    elif content == "no_text_column":
        pq.write_table(pq.read_table(real).drop_columns(["complete_text"]), path)
    else:
        path.write_bytes(content)
    with pytest.raises(StageError, match=expected) as error:
        gallica.open_parquet(path)
    assert str(path) in error.value.message


def test_odd_ocr_scores_are_skipped():
    assert gallica.parse_ocr("96") == 96 and gallica.parse_ocr("101") is None and gallica.parse_ocr("1e9") is None
    assert gallica.parse_ocr("n/a") is None and gallica.parse_ocr(None) is None and gallica.parse_ocr("-3") is None


def test_model_folders_without_loadable_weights_say_so(inputs_dir, tmp_path):
    from chateau import models
    folder = tmp_path / "model"
    shutil.copytree(inputs_dir[0] / stages.BASE_MODEL, folder)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])  # truncated
    with pytest.raises(StageError, match="cannot be loaded"):
        models.load_model(folder)
    weights.unlink()
    with pytest.raises(StageError, match="no model weights"):
        models.load_model(folder)


@pytest.mark.parametrize("flags, expected", [
    (["--seq-len", "100000"], "longer than the model's context"),
    (["--validation-percent", "0.001", "--allow-fewer"], "raise --validation-percent"),
])
def test_corpus_messages_tell_the_real_cause(fresh_project, flags, expected):
    project, _ = fresh_project
    script = "1a_prepare_gallica_fullweight.py"
    out = run_script(project, script, *tiny_flags(script), *flags, check=False)
    line = one_error_line(out, expected)
    assert "more files are needed" not in line and "--allow-fewer" not in line.split(expected)[1]


def test_every_entry_point_has_help_and_refuses_abbreviations():
    import sys
    out = subprocess.run([sys.executable, "-m", "chateau.scoreboard", "--help"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0 and "--project-dir" in out.stdout
    out = subprocess.run([sys.executable, str(ROOT / "1c_prepare_kafka.py"), "--seq-le", "64"], cwd=ROOT,
                         capture_output=True, text=True)
    assert out.returncode == 2 and "unrecognized arguments: --seq-le" in out.stderr
