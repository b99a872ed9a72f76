"""How every numbered script talks to its user: settings from flags, one-line errors, exit codes.

A script is `main()` wrapped by `run(main)`. The library raises exceptions (StageError for a
problem the user can fix, Interrupted for a clean stop on a signal); only `run` turns them into
a message and an exit code.
"""
import argparse
import dataclasses
import errno
import json
import logging
import math
import os
import sys
import typing
import warnings
from pathlib import Path


class StageError(Exception):
    """A problem the user can fix: printed as one line `error: ...`, exit code 2."""

    def __init__(self, message):
        super().__init__(message)
        self.message = message


class Interrupted(Exception):
    """A run stopped cleanly by SIGINT or SIGTERM after saving its work: exit code 130 or 143."""

    def __init__(self, signal_name, message):
        super().__init__(message)
        self.signal_name, self.message = signal_name, message
        self.exit_code = 130 if signal_name == "SIGINT" else 143  # 128 + the signal's number


# Warnings the libraries print for their own deprecations, not the user's doing: kept out of the
# notebook's output (each a message pattern, matched from the start).
KNOWN_WARNINGS = (
    "IProgress not found",                       # tqdm in Jupyter without ipywidgets: the bars are off anyway
    "`gradient_checkpointing_kwargs` is deprecated", "`gradient_checkpointing_enable` is deprecated",
    "`is_gradient_checkpointing` is deprecated",  # transformers 5 renamed these; peft still calls them
    "builtin type swig",                          # pymupdf's SWIG bindings under Python 3.11+
)


def quiet(training_bar=True):
    """A step's (and the notebook's) output without the libraries' noise: no loading bars
    (transformers' "Loading weights", the hub's) and none of the known deprecation warnings above;
    the training's own progress bar stays in a terminal (`training_bar=False`, the notebook: no
    bar at all). Call it before importing them: the bars read their switches at import."""
    if not training_bar:
        os.environ["TQDM_DISABLE"] = "1"
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"  # transformers' own bars read this switch too
    os.environ["HF_DATASETS_DISABLE_PROGRESS_BARS"] = "1"  # datasets' "Saving the dataset" bars
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    for message in KNOWN_WARNINGS:
        warnings.filterwarnings("ignore", message=message)
    # bitsandbytes on CPU logs that an optional faster kernel (the `kernels` package) is absent;
    # its own CPU path runs without it, and on a GPU the message never comes.
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)


def close_progress_bars():
    """End the progress bars a failure left open, so that the one error line starts a line of its own."""
    tqdm = sys.modules.get("tqdm.std")
    for bar in list(getattr(getattr(tqdm, "tqdm", None), "_instances", None) or []):
        bar.close()


def size(n_bytes):
    """Bytes for people: "1.24 GiB", or "3.1 MiB" below a tenth of a GiB."""
    return f"{n_bytes / 2**30:.2f} GiB" if n_bytes >= 2**30 / 10 else f"{n_bytes / 2**20:.1f} MiB"


def run(main, argv=None):
    """Entry point of every script: `main(argv)` (argv None: the command line); a StageError
    becomes one clear line and exit code 2; a clean stop on a signal says where the work was saved
    and exits 130 (SIGINT) or 143 (SIGTERM)."""
    try:
        main(argv)
    except StageError as error:
        close_progress_bars()
        print(f"error: {error.message}", file=sys.stderr)
        raise SystemExit(2)
    except Interrupted as stop:
        say(stop.message)
        raise SystemExit(stop.exit_code)
    except KeyboardInterrupt:  # a second Ctrl-C (or SIGTERM) while the first one was being honoured
        print("error: stopped at once by a second signal: what was being written is not finished and is never taken "
              "for finished; rerun the same command (without --overwrite) to resume from the last complete checkpoint",
              file=sys.stderr)
        raise SystemExit(130)
    except OSError as error:
        fix = DISK_FIXES.get(error.errno)
        if fix is None:
            raise
        close_progress_bars()
        print(f"error: {error.strerror} writing {error.filename or 'the project folder'}: {fix}", file=sys.stderr)
        raise SystemExit(2)


# What the user can do about the disk errors every step may meet while writing.
DISK_FIXES = {
    errno.ENOSPC: "free some disk space, then rerun the same command (unfinished work is never taken for finished)",
    errno.EDQUOT: "free some of your disk quota, then rerun the same command",
    errno.EROFS: "the project folder is read-only: mount it writable (docker run -v \"$PWD/project:/project\")",
    errno.EACCES: "this user cannot write there: make the project folder writable by it (in the container: uid 1000)",
}


# How a full disk shows itself while torch, safetensors or the GGUF writer write: an OSError (ENOSPC,
# EDQUOT), torch's zip writer's RuntimeError ("[enforce fail at inline_container.cc:...] . unexpected
# pos"), or a short write without an errno ("4096 requested and 928 written").
DISK_FULL_SIGNS = ("No space left", "file write failed", "unexpected pos", "Disk quota exceeded", "requested and")


def is_disk_full(error):
    return getattr(error, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or any(sign in str(error) for sign in DISK_FULL_SIGNS)


def project_dir(value=""):
    """--project-dir, else $KAFKA_PROJECT_DIR, else /project (the container's volume)."""
    return Path(value or os.environ.get("KAFKA_PROJECT_DIR") or "/project")


def rank():
    """This process's rank under torchrun / accelerate launch; 0 in a plain run."""
    return int(os.environ.get("RANK", 0))


def is_main_process():
    """Rank 0: the process that talks and writes."""
    return rank() == 0


def pid_alive(pid):
    """Whether process `pid` still runs (a lock or staging folder of a dead run can be taken over)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def say(message):
    if is_main_process():
        print(message, flush=True)


# ---------------------------------------------------------------------------------------------
# Settings: one dataclass per script, every field a --flag. A field whose type is itself a
# dataclass (e.g. the sampling settings) is a group: its fields become flags with the group's
# prefix (`sample: Sampling` -> --sample-temperature), so a group is declared once and reused.

def setting(default, help, identity=True):
    """A settings field. `identity=False` marks a setting that says how a run is executed, watched
    or resumed (batch size per device, frequencies, kernels, folders), not what it makes: changing
    it never makes a finished stage "other", and a run continues from its checkpoint."""
    return dataclasses.field(default=default, metadata={"help": help, "identity": identity})


def group(factory, prefix, help="", identity=True):
    """A nested settings group; its flags are `--<prefix>-<field>` (no prefix: `--<field>`)."""
    return dataclasses.field(default_factory=factory, metadata={"prefix": prefix, "help": help, "identity": identity})


def identity_settings(settings):
    """The settings that decide what a run makes (every field not marked identity=False), as a dict."""
    return {f.name: dataclasses.asdict(v) if dataclasses.is_dataclass(v := getattr(settings, f.name)) else v
            for f in dataclasses.fields(settings) if f.metadata.get("identity", True)}


def _parse_bool(text):
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults shown; the script's docstring (its commands) kept as written."""


def _flag_fields(cls, defaults, prefix=""):
    """[(flag, dest path, type, default, help)] for every leaf field of `cls`, groups flattened."""
    hints = typing.get_type_hints(cls)
    out = []
    for field in dataclasses.fields(cls):
        kind, default = hints[field.name], getattr(defaults, field.name)
        if dataclasses.is_dataclass(kind):
            sub = field.metadata.get("prefix", field.name)
            out += [(flag, (field.name, *path), k, d, h)
                    for flag, path, k, d, h in _flag_fields(kind, default, f"{prefix}{sub}-" if sub else prefix)]
        else:
            out.append((f"--{prefix}{field.name.replace('_', '-')}", (field.name,), kind, default,
                        field.metadata.get("help", "")))
    return out


def flag_names(cls):
    """Every flag of a settings class (groups flattened): what --help must list."""
    return [flag for flag, *_ in _flag_fields(cls, cls())]


def parse_settings(cls, argv=None, description=None):
    """Build `cls` from the command line: `--field-name value` for each field (groups flattened),
    defaults shown by --help, unknown or abbreviated flags refused, then every problem from
    `cls.problems()` reported at once. `--config FILE` starts from a settings file (a stage's
    settings.json, or a run profile under profiles/): flags given beside it override it."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(description=description, formatter_class=HelpFormatter, allow_abbrev=False)
    parser.add_argument("--config", metavar="FILE", default=None,
                        help="start from this settings file (JSON: a stage's settings.json or a profile); flags override it")
    defaults = cls()
    config = _config_path(argv)
    if config:
        problem = load_config(defaults, config)
        if problem:
            parser.error(problem)
    fields = _flag_fields(cls, defaults)
    for index, (flag, _, kind, default, help) in enumerate(fields):
        parser.add_argument(flag, dest=f"f{index}", default=default, type=_parse_bool if kind is bool else kind,
                            help=help.replace("%", "%%"), metavar=kind.__name__.upper(),
                            **({"nargs": "?", "const": True} if kind is bool else {}))
    values = vars(parser.parse_args(argv))
    settings = defaults
    for index, (_, path, *_rest) in enumerate(fields):
        _set(settings, path, values[f"f{index}"])
    # NaN passes every comparison (`nan <= 0` is False): no setting of the project may be NaN or infinite.
    problems = [f"{flag} must be a finite number (got {values[f'f{i}']})" for i, (flag, _, kind, *_r) in enumerate(fields)
                if kind is float and not math.isfinite(values[f"f{i}"])]
    problems += settings.problems() if hasattr(settings, "problems") else []
    if problems:
        parser.error("\n  ".join(["invalid settings:"] + problems))
    if config:
        given = [flag for flag, *_ in fields if any(a == flag or a.startswith(flag + "=") for a in argv)]
        say(f"settings from {config}" + (f"; overridden on the command line: {', '.join(given)}" if given else ""))
    return settings


def _config_path(argv):
    for i, arg in enumerate(argv):
        if arg == "--config" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--config="):
            return arg.split("=", 1)[1]
    return None


def load_config(settings, path):
    """Apply the JSON settings file `path` onto `settings` (in place); returns a one-line problem
    (unreadable file, unknown setting) or None."""
    try:
        values = json.loads(Path(path).read_text())
    except OSError as error:
        return f"--config {path}: {error.strerror}"
    except ValueError as error:
        return f"--config {path} is not a JSON settings file ({error})"
    if not isinstance(values, dict):
        return f"--config {path} is not a JSON object of settings"

    def apply(obj, values, prefix):
        names = {f.name: f for f in dataclasses.fields(obj)}
        unknown = [f"{prefix}{k}" for k in values if k not in names]
        if unknown:
            return f"--config {path}: unknown settings {', '.join(unknown)} (see --help)"
        for key, value in values.items():
            current = getattr(obj, key)
            if dataclasses.is_dataclass(current):
                if not isinstance(value, dict):
                    return f"--config {path}: {prefix}{key} must be an object of settings"
                problem = apply(current, value, f"{prefix}{key}.")
                if problem:
                    return problem
            else:
                if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
                    value = float(value)
                if type(value) is not type(current):
                    return f"--config {path}: {prefix}{key} must be a {type(current).__name__} (got {value!r})"
                setattr(obj, key, value)
        return None

    return apply(settings, values, "")


def _set(obj, path, value):
    for name in path[:-1]:
        obj = getattr(obj, name)
    setattr(obj, path[-1], value)


def positive(settings, *names, allow=()):
    """Problems for fields that must be > 0 (or one of `allow`, e.g. -1 for "all")."""
    return [f"--{n.replace('_', '-')} must be > 0 (got {getattr(settings, n)})"
            for n in names if getattr(settings, n) <= 0 and getattr(settings, n) not in allow]


def save_settings(settings, path):
    """The final settings beside the artifacts they made (`--config` reads them back)."""
    write_atomic(path, json.dumps(dataclasses.asdict(settings), indent=2, ensure_ascii=False) + "\n")


def write_atomic(path, text):
    """Write a file whole or not at all: a temporary file beside it, flushed to disk, renamed over
    it. A kill or a full disk leaves the old file (or none), never a truncated one."""
    path = Path(path)
    partial = path.with_name(f".{path.name}.partial-{os.getpid()}")
    try:
        with open(partial, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
