"""The container's entrypoint never serves Jupyter without a token, and never as root."""
import os
import re
import subprocess
from pathlib import Path

import pytest

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


def torch_install_command():
    """The Dockerfile's RUN line that installs the requirements, as the shell sees it."""
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    return next(l.strip()[len("RUN "):] for l in text.splitlines() if l.startswith("RUN ") and "requirements.txt" in l)


@pytest.mark.parametrize("index_url", ["", "https://download.pytorch.org/whl/cu129"])
def test_the_cuda_12_build_argument_reaches_pip(tmp_path, index_url):
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "pip").write_text(f'#!/bin/sh\necho "pip $*" >> {tmp_path / "calls"}\n')
    (fake / "pip").chmod(0o755)
    command = torch_install_command().replace("/app/requirements.txt", str(ROOT / "requirements.txt"))
    env = dict(os.environ, PATH=f"{fake}:{os.environ['PATH']}", TORCH_INDEX_URL=index_url)
    subprocess.run(["sh", "-c", command], env=env, check=True)
    calls = (tmp_path / "calls").read_text().splitlines()
    torch_pin = next(l for l in (ROOT / "requirements.txt").read_text().splitlines() if l.startswith("torch==")).split()[0]
    if index_url:
        assert calls[0] == f"pip install --index-url {index_url} {torch_pin}"  # the same version, for CUDA 12
    assert calls[-1] == f"pip install -r {ROOT / 'requirements.txt'}" and len(calls) == (2 if index_url else 1)


def test_a_driver_too_old_for_the_cuda_build_is_one_clear_line(monkeypatch):
    import torch
    from chateau import models
    from chateau.cli import StageError
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(models, "nvidia_driver_version", lambda: "535.104.05")
    with pytest.raises(StageError) as error:
        models.set_up_device("cuda")
    assert "535.104.05" in error.value.message and "580" in error.value.message and "cu129" in error.value.message
    monkeypatch.setattr(models, "nvidia_driver_version", lambda: None)  # no NVIDIA GPU at all: the CPU, if asked for
    with pytest.raises(StageError) as error:
        models.set_up_device("cuda")
    assert "no CUDA GPU is visible" in error.value.message
    assert models.set_up_device("cpu") == "cpu"


def test_docker_stop_lets_the_running_step_save_its_checkpoint(tmp_path):
    """`docker stop` signals PID 1 only: the entrypoint forwards SIGTERM to the running step and
    waits until it has saved and exited (here a stand-in step that takes 2 s to save)."""
    import signal
    import sys
    import time
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "jupyter").write_text("#!/bin/sh\nexec sleep 600\n")
    (fake / "jupyter").chmod(0o755)
    project = tmp_path / "project"
    project.mkdir()
    step = tmp_path / "2a_train_gallica_fullweight.py"  # the name is how the entrypoint knows a step
    saved = tmp_path / "saved"
    step.write_text("import signal, sys, time\n"
                    "def stop(*_):\n"
                    f"    time.sleep(2); open({str(saved)!r}, 'w').write('checkpoint'); sys.exit(143)\n"
                    "signal.signal(signal.SIGTERM, stop)\n"
                    f"open({str(tmp_path / 'started')!r}, 'w').close()\n"
                    "time.sleep(600)\n")
    env = dict(os.environ, PATH=f"{fake}:{os.environ['PATH']}", KAFKA_PROJECT_DIR=str(project), JUPYTER_TOKEN="t" * 32)
    entry = subprocess.Popen(["sh", str(ROOT / "docker-entrypoint.sh")], env=env, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    running = subprocess.Popen([sys.executable, str(step)], env=env)  # a step of this project (its environment says so)
    try:
        deadline = time.time() + 30
        while not (tmp_path / "started").exists() and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)  # the entrypoint is waiting on Jupyter
        entry.send_signal(signal.SIGTERM)
        out = entry.communicate(timeout=60)[0]
        assert saved.read_text() == "checkpoint", out  # the step had saved before PID 1 exited
        assert running.wait(timeout=5) == 143 and "asking the running steps" in out and entry.returncode == 143
    finally:
        running.kill()
        entry.kill()
