"""Every script: --help lists every setting with its default, unknown flags fail, problems are reported together."""
import dataclasses
import importlib
import os
import subprocess
import sys

import pytest

from chateau import stages
from chateau.cli import flag_names, parse_settings, project_dir
from conftest import ROOT

SCRIPTS = [s.script for s in stages.TABLE]


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_lists_every_setting(script):
    module = importlib.import_module(script[:-3])
    out = subprocess.run([sys.executable, str(ROOT / script), "--help"], capture_output=True, text=True, cwd=ROOT)
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
    assert kafka.adapter_from == "2b" and kafka.data == "1c" and lora.adapter_from == ""


def test_unknown_flag_fails():
    out = subprocess.run([sys.executable, str(ROOT / "1c_prepare_kafka.py"), "--seq-lenn", "5"], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 2 and "unrecognized arguments: --seq-lenn" in out.stderr


def test_all_problems_reported_at_once():
    out = subprocess.run([sys.executable, str(ROOT / "1c_prepare_kafka.py"), "--seq-len", "0", "--stride", "-1",
                          "--validation-fraction", "0.9"], capture_output=True, text=True, cwd=ROOT)
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

    def full_disk():
        raise OSError(code, os.strerror(code), "/project/data/1a_gallica_fullweight")

    with pytest.raises(SystemExit) as stop:
        run(full_disk)
    err = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2 and len(err) == 1 and expected in err[0] and "/project/data" in err[0]
