"""Every script: --help lists every setting with its default, unknown flags fail, problems are reported together."""
import dataclasses
import importlib
import os
import subprocess
import sys

import pytest

from chateau import stages
from chateau.cli import flag_names, parse_settings, project_dir
from conftest import ROOT, call_script

SCRIPTS = [s.script for s in stages.TABLE]


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_lists_every_setting(script, tmp_path):
    module = importlib.import_module(script[:-3])
    out = call_script(tmp_path, script, "--help")
    assert out.returncode == 0
    help_text = " ".join(out.stdout.split())
    flags = flag_names(module.Settings)
    assert len(flags) >= len(dataclasses.fields(module.Settings))  # groups add flags, never hide one
    for flag in flags:
        assert flag in help_text
    assert "docker exec" in out.stdout  # the docstring: how to run it for real


def test_real_curriculum_defaults():
    a = importlib.import_module("1a_prepare_gallica_fullweight").Settings()
    b = importlib.import_module("1b_prepare_gallica_QLoRA").Settings()
    c = importlib.import_module("1c_prepare_kafka").Settings()
    assert (a.n_samples, a.seq_len, b.n_samples, b.seq_len, c.seq_len, c.stride) == (1_000_000, 512, 250_000, 2048, 2048, 512)
    lora = importlib.import_module("2b_train_gallica_QLoRA").Settings()
    kafka = importlib.import_module("2c_train_kafka_QLoRA").Settings()
    assert 1e-4 <= lora.lr <= 3e-4 and 1e-4 <= kafka.lr <= 3e-4  # LoRA rates, not full-weight ones
    assert stages.stage("2c").adapter_from == "2b" and stages.stage("2c").data == "1c" and stages.stage("2b").adapter_from is None
    assert (lora.tokens_per_step, kafka.tokens_per_step) == (65536, 8192)


def test_unknown_flag_fails(tmp_path):
    out = call_script(tmp_path, "1c_prepare_kafka.py", "--seq-lenn", "5", check=False)
    assert out.returncode == 2 and "unrecognized arguments: --seq-lenn" in out.stderr


def test_a_script_runs_from_the_command_line_as_in_the_tests():
    """The one subprocess of this file: `python script --help` works as a user types it."""
    out = subprocess.run([sys.executable, str(ROOT / "1c_prepare_kafka.py"), "--help"], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0 and "--seq-len" in out.stdout


def test_all_problems_reported_at_once(tmp_path):
    out = call_script(tmp_path, "1c_prepare_kafka.py", "--seq-len", "0", "--stride", "-1", "--validation-fraction", "0.9",
                      check=False)
    assert out.returncode == 2
    for flag in ("--seq-len", "--stride", "--validation-fraction"):
        assert flag in out.stderr.split("invalid settings:")[1]


def test_bool_flags_accept_bare_and_valued_forms():
    module = importlib.import_module("1c_prepare_kafka")
    assert parse_settings(module.Settings, ["--overwrite"]).overwrite is True
    assert parse_settings(module.Settings, ["--overwrite", "false"]).overwrite is False


def test_project_dir_resolution(monkeypatch):
    monkeypatch.setenv("KAFKA_PROJECT_DIR", "/somewhere")
    assert str(project_dir("")) == "/somewhere" and str(project_dir("/x")) == "/x"
    monkeypatch.delenv("KAFKA_PROJECT_DIR")
    assert str(project_dir("")) == "/project"


@pytest.mark.parametrize("code, expected", [(28, "free some disk space"), (30, "read-only"), (13, "writable")])
def test_disk_errors_are_one_line_with_the_fix(code, expected, capsys):
    from chateau.cli import run

    def full_disk(argv):
        raise OSError(code, os.strerror(code), "/project/data/1a_gallica_fullweight")

    with pytest.raises(SystemExit) as stop:
        run(full_disk)
    err = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2 and len(err) == 1 and expected in err[0] and "/project/data" in err[0]


# -- --config: a settings file (a profile, or a finished stage's settings.json), flags over it.

def test_config_file_sets_settings_and_flags_override_it(tmp_path, capsys):
    module = importlib.import_module("2c_train_kafka_QLoRA")
    config = tmp_path / "c.json"
    config.write_text('{"lr": 0.001, "max_steps": 7, "sample": {"temperature": 0.5}}')
    settings = parse_settings(module.Settings, ["--config", str(config), "--max-steps", "9"])
    assert (settings.lr, settings.max_steps, settings.sample.temperature) == (0.001, 9, 0.5)
    assert "overridden on the command line: --max-steps" in capsys.readouterr().out


@pytest.mark.parametrize("text, expected", [
    ('{"lrr": 1}', "unknown settings lrr"),
    ('{"sample": {"temp": 1}}', "unknown settings sample.temp"),
    ('{"max_steps": "ten"}', "max_steps must be a int"),
    ("not json", "is not a JSON settings file"),
])
def test_a_bad_config_file_is_one_line(tmp_path, text, expected):
    config = tmp_path / "c.json"
    config.write_text(text)
    out = call_script(tmp_path, "2c_train_kafka_QLoRA.py", "--config", config, check=False)
    assert out.returncode == 2 and expected in out.stderr


def test_every_profile_file_is_read_by_its_script(tmp_path):
    """profiles/<name>/<stage>.json: every file names settings its stage's script has."""
    from chateau.cli import load_config
    files = sorted((ROOT / "profiles").glob("*/*.json"))
    assert len(files) >= 17
    for path in files:
        name = "chateau.scoreboard" if path.stem == "scoreboard" else stages.script_of(path.stem)[:-3]
        assert load_config(importlib.import_module(name).Settings(), path) is None, path


@pytest.mark.parametrize("flag, value", [("--weight-decay", "nan"), ("--max-grad-norm", "nan"), ("--lr", "inf"),
                                         ("--sample-top-p", "nan"), ("--lora-dropout", "1.5"), ("--seed", str(2**32))])
def test_non_finite_and_out_of_range_settings_are_refused(flag, value, capsys):
    module = importlib.import_module("2c_train_kafka_QLoRA")
    with pytest.raises(SystemExit):
        parse_settings(module.Settings, [flag, value])
    assert flag in capsys.readouterr().err


def test_resume_and_overwrite_together_are_refused(tmp_path, capsys):
    module = importlib.import_module("2a_train_gallica_fullweight")
    checkpoint = tmp_path / "checkpoint-3"
    checkpoint.mkdir()
    (checkpoint / "trainer_state.json").write_text('{"global_step": 3}')
    with pytest.raises(SystemExit):
        parse_settings(module.Settings, ["--resume", str(checkpoint), "--overwrite"])
    assert "contradict" in capsys.readouterr().err


def test_execution_settings_are_not_part_of_a_stage_identity():
    from chateau.cli import identity_settings
    module = importlib.import_module("2a_train_gallica_fullweight")
    identity = identity_settings(module.Settings())
    for execution in ("batch_size", "eval_steps", "save_steps", "sample_steps", "logging_steps", "attn_implementation",
                      "liger_kernel", "torch_compile", "gradient_checkpointing", "resume", "overwrite", "project_dir", "sample"):
        assert execution not in identity
    for made_by in ("tokens_per_step", "lr", "max_steps", "seed", "warmup_steps", "base_model"):
        assert made_by in identity
