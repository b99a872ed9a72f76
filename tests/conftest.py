import os
import shutil
import tempfile

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"  # a hub id would hang ~23 s before failing
os.environ.setdefault("HF_HOME", tempfile.mkdtemp(prefix="hf_home_"))  # datasets caches parquet there
os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ["KAFKA_DEVICE"] = "cpu"  # the CPU on purpose: a step never falls back to it by itself

from chateau import stages  # noqa: E402
from dev import fixtures  # noqa: E402
from dev.fixtures import tiny_flags  # noqa: E402,F401  (the tests' tiny settings are the demo's)
from dev.runner import ROOT, ScriptFailed, call_script, run_script as _run_script, script_env  # noqa: E402,F401


def run_script(project, script, *flags, check=True, subprocess=False, timeout=300, **options):
    """Run a numbered script as a user would: its main(argv) in this process (the default: no
    interpreter start, no second import of torch), or, with `subprocess=True` or `options` (env,
    python: see dev.runner), in its own process, where a signal, a kill, a lock race, an
    environment or DDP is the point. Returns the CompletedProcess (fails the test when `check` and
    the script failed, with its output)."""
    try:
        if subprocess or options:
            return _run_script(project, script, *flags, check=check, timeout=timeout, **options)
        return call_script(project, script, *flags, check=check)
    except ScriptFailed as failed:
        raise AssertionError(str(failed)) from None


def one_error_line(result, expected, code=2):
    """A script refused with exit `code` and exactly one `error:` line, which contains `expected`."""
    assert result.returncode == code, (result.returncode, result.stderr[-1500:])
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and expected in errors[0], result.stderr[-1500:]
    return errors[0]


@pytest.fixture(scope="session")
def inputs_dir(tmp_path_factory):
    """The tiny inputs, built once; tests copy what they change."""
    project = tmp_path_factory.mktemp("inputs")
    info = fixtures.build_project(project)
    return project, info


@pytest.fixture
def fresh_project(inputs_dir, tmp_path):
    """A private copy of the inputs (models/, datasets/, the PDF)."""
    src, info = inputs_dir
    dst = tmp_path / "project"
    shutil.copytree(src, dst)
    return dst, info


def hashes(*folders):
    """{file: sha256} of every file under `folders`: what "nothing finished changed" compares."""
    import hashlib
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for f in folders if f.exists()
            for p in sorted(f.rglob("*")) if p.is_file()}


@pytest.fixture
def project(pipeline, tmp_path):
    """A private copy of the finished tiny project (checkpoints kept: resuming is part of the cases)."""
    copy = tmp_path / "p"
    shutil.copytree(pipeline[0], copy)
    return copy


PIPELINE_STAGES = (*fixtures.CURRICULUM, "2d")  # TinyLlama's path and its alternative imprint (2e/2f: test_bases.py)


@pytest.fixture(scope="session")
def pipeline(inputs_dir, tmp_path_factory):
    """The default base's steps run once, as the demo runs them, and 2d; shared by the end-to-end assertions."""
    src, info = inputs_dir
    project = tmp_path_factory.mktemp("pipeline") / "project"
    shutil.copytree(src, project)
    steps = fixtures.TINY_STEPS + [(stages.script_of("2d"), fixtures.tiny_flags(stages.script_of("2d")))]
    outputs = {script: run_script(project, script, *flags) for script, flags in steps}
    return project, info, outputs
