"""Running a numbered script as a user would, in a subprocess: the one runner of the tests, the
demo and the benchmarks."""
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


class ScriptFailed(Exception):
    def __init__(self, script, result):
        super().__init__(f"{script} exited {result.returncode}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
        self.result = result


def script_env(project, **extra):
    """The environment of a scripted run: offline, the project folder, quiet warnings, and the
    datasets cache inside the scratch project unless HF_HOME is set."""
    env = dict(os.environ, KAFKA_PROJECT_DIR=str(project), HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               PYTHONWARNINGS="ignore", **extra)
    env.setdefault("HF_HOME", str(Path(project) / ".hf_home"))
    return env


def command(project, script, *flags, python=(sys.executable,)):
    return [*python, str(ROOT / script), "--project-dir", str(project), *map(str, flags)]


def run_script(project, script, *flags, check=True, timeout=None, env=None, python=(sys.executable,)):
    """Run `script` (a file at the repository root, e.g. "2a_train_gallica_fullweight.py") on
    `project`; returns the CompletedProcess, or raises ScriptFailed when `check` and it failed."""
    result = subprocess.run(command(project, script, *flags, python=python), env=env or script_env(project), cwd=ROOT,
                            text=True, capture_output=True, timeout=timeout)
    if check and result.returncode != 0:
        raise ScriptFailed(script, result)
    return result


def start_script(project, script, *flags, **popen):
    """The same, started in the background (to be interrupted): a Popen."""
    return subprocess.Popen(command(project, script, *flags), env=popen.pop("env", None) or script_env(project),
                            cwd=ROOT, **popen)
