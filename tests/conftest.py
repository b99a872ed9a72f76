import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ["HF_HUB_OFFLINE"] = "1"  # a hub id would hang ~23 s before failing
os.environ.setdefault("HF_HOME", tempfile.mkdtemp(prefix="hf_home_"))  # datasets caches parquet there
os.environ["TOKENIZERS_PARALLELISM"] = "false"

import demo  # noqa: E402  (the demo's tiny settings are the tests' settings)
import fixtures  # noqa: E402


def run_script(project, script, *flags, check=True, timeout=300):
    """Run a numbered script as a user would; returns the CompletedProcess."""
    cmd = [sys.executable, str(ROOT / script), "--project-dir", str(project), *map(str, flags)]
    out = subprocess.run(cmd, env=demo.script_env(project), cwd=ROOT, text=True, capture_output=True, timeout=timeout)
    if check and out.returncode != 0:
        raise AssertionError(f"{script} exited {out.returncode}:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    return out


def tiny_flags(script):
    return dict(demo.STEPS)[script]


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


@pytest.fixture(scope="session")
def pipeline(inputs_dir, tmp_path_factory):
    """All six steps run once, as the demo runs them; shared by the end-to-end assertions."""
    src, info = inputs_dir
    project = tmp_path_factory.mktemp("pipeline") / "project"
    shutil.copytree(src, project)
    outputs = {script: run_script(project, script, *flags) for script, flags in demo.STEPS}
    return project, info, outputs
