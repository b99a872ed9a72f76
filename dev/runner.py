"""Running a numbered script as a user would: in this process (`call_script`: its `main(argv)`
through the same `cli.run` as the command line, output captured) or in a subprocess
(`run_script`, where a signal, a kill, a lock race or DDP is the point). The one runner of the
tests, the demo and the benchmarks."""
import contextlib
import io
import os
import subprocess
import sys
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROFILES = ROOT / "profiles"


def profile(name, stage):
    """The flags that read run profile `name` (profiles/<name>/<stage>.json) for stage `stage`."""
    return ["--config", str(PROFILES / name / f"{stage}.json")]


def scoreboard_settings(name, *flags):
    """chateau.scoreboard's settings from run profile `name` (profiles/<name>/scoreboard.json), `flags` beside it."""
    from chateau import cli, scoreboard
    return cli.parse_settings(scoreboard.Settings, profile(name, "scoreboard") + [str(f) for f in flags])


def script_module(script):
    """A numbered script imported as a module (chateau.stages.script_module)."""
    from chateau import stages
    return stages.script_module(script)


def call_script(project, script, *flags, check=True):
    """Run `script`'s main(argv) in this process, as `python script --project-dir project flags`
    would (same exit codes and messages, through cli.run); returns a CompletedProcess with the
    captured output, or raises ScriptFailed when `check` and it failed. An unexpected exception
    is exit code 1 with its traceback on stderr, as in a subprocess."""
    from chateau import cli
    argv = ["--project-dir", str(project), *map(str, flags)]
    out, err, code = io.StringIO(), io.StringIO(), 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            cli.run(script_module(script).main, argv)
        except SystemExit as stop:
            code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
        except Exception:  # noqa: BLE001 - what a user would see as a traceback
            traceback.print_exc()
            code = 1
    result = subprocess.CompletedProcess([script, *argv], code, out.getvalue(), err.getvalue())
    if check and code != 0:
        raise ScriptFailed(script, result)
    return result


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


def start_script(project, script, *flags, python=(sys.executable,), **popen):
    """The same, started in the background (to be interrupted, or beside another): a Popen."""
    return subprocess.Popen(command(project, script, *flags, python=python), env=popen.pop("env", None) or script_env(project),
                            cwd=ROOT, **popen)
