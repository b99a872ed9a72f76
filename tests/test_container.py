"""The container's entrypoint never serves Jupyter without a token, and never as root."""
import os
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_entrypoint(tmp_path, token, project=None):
    fake = tmp_path / "bin"
    fake.mkdir(parents=True)
    project = project or tmp_path / "project"
    project.mkdir(exist_ok=True)
    (fake / "jupyter").write_text('#!/bin/sh\necho "jupyter $*"\n')  # records how it would be started
    (fake / "jupyter").chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k != "JUPYTER_TOKEN"}
    env["PATH"] = f"{fake}:{env['PATH']}"
    env["KAFKA_PROJECT_DIR"] = str(project)
    if token is not None:
        env["JUPYTER_TOKEN"] = token
    return subprocess.run(["sh", str(ROOT / "docker-entrypoint.sh")], env=env, text=True, capture_output=True, check=True).stdout


def test_generated_token_is_shown_and_used(tmp_path):
    out = run_entrypoint(tmp_path, None)
    token = re.search(r"Generated Jupyter token: (\S+)", out).group(1)
    assert len(token) >= 32
    assert f"--IdentityProvider.token={token}" in out and "--ip=0.0.0.0 --port=8000" in out


def test_given_token_is_used_and_empty_one_replaced(tmp_path):
    assert "--IdentityProvider.token=s3cret-token" in run_entrypoint(tmp_path, "s3cret-token")
    out = run_entrypoint(tmp_path / "b", "")
    assert "Generated Jupyter token" in out and "--IdentityProvider.token= " not in out


def test_dockerfile_runs_as_a_normal_user():
    lines = [l.strip() for l in (ROOT / "Dockerfile").read_text().splitlines()]
    users = [l.split()[1] for l in lines if l.startswith("USER ")]
    assert users and users[-1] not in ("root", "0")
    assert lines.index(f"USER {users[-1]}") < next(i for i, l in enumerate(lines) if l.startswith("ENTRYPOINT"))


def test_jupyter_serves_the_project_with_the_users_own_notebook(tmp_path):
    project = tmp_path / "project"
    out = run_entrypoint(tmp_path / "a", "tok", project)
    assert f"--ServerApp.root_dir={project}" in out  # outputs, continuation, scoreboard open in Jupyter
    mine = project / "notebook.ipynb"
    assert mine.read_text() == (ROOT / "notebook.ipynb").read_text()
    mine.write_text(mine.read_text().replace("Downloads", "My downloads"))  # the user's edit
    run_entrypoint(tmp_path / "b", "tok", project)  # a new container on the same volume
    assert "My downloads" in mine.read_text()


def test_the_code_in_the_image_is_not_the_users_to_change():
    lines = [l.strip() for l in (ROOT / "Dockerfile").read_text().splitlines()]
    copies = [l for l in lines if l.startswith("COPY ") and "requirements" not in l]
    assert copies and not any("--chown" in l for l in copies)  # root's files: readable, not writable, by the user
    assert any(l.startswith("PYTHONPATH=/app") or "PYTHONPATH=/app" in l for l in lines)
