"""How every numbered script talks to its user: settings from flags, one-line errors, exit codes.

A script is `main()` wrapped by `run(main)`. The library raises exceptions (StageError for a
problem the user can fix, Interrupted for a clean stop on a signal); only `run` turns them into
a message and an exit code.
"""
import argparse
import dataclasses
import errno
import json
import os
import sys
import typing
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


def run(main):
    """Entry point of every script: a StageError becomes one clear line and exit code 2; a clean
    stop on a signal says where the work was saved and exits 130 (SIGINT) or 143 (SIGTERM)."""
    try:
        main()
    except StageError as error:
        print(f"error: {error.message}", file=sys.stderr)
        raise SystemExit(2)
    except Interrupted as stop:
        say(stop.message)
        raise SystemExit(stop.exit_code)
    except OSError as error:
        fix = DISK_FIXES.get(error.errno)
        if fix is None:
            raise
        print(f"error: {error.strerror} writing {error.filename or 'the project folder'}: {fix}", file=sys.stderr)
        raise SystemExit(2)


# What the user can do about the disk errors every step may meet while writing.
DISK_FIXES = {
    errno.ENOSPC: "free some disk space, then rerun the same command (unfinished work is never taken for finished)",
    errno.EDQUOT: "free some of your disk quota, then rerun the same command",
    errno.EROFS: "the project folder is read-only: mount it writable (docker run -v \"$PWD/project:/project\")",
    errno.EACCES: "this user cannot write there: make the project folder writable by it (in the container: uid 1000)",
}


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

def setting(default, help):
    return dataclasses.field(default=default, metadata={"help": help})


def group(factory, prefix, help=""):
    """A nested settings group; its flags are `--<prefix>-<field>` (no prefix: `--<field>`)."""
    return dataclasses.field(default_factory=factory, metadata={"prefix": prefix, "help": help})


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
    `cls.problems()` reported at once."""
    parser = argparse.ArgumentParser(description=description, formatter_class=HelpFormatter, allow_abbrev=False)
    defaults = cls()
    fields = _flag_fields(cls, defaults)
    for index, (flag, _, kind, default, help) in enumerate(fields):
        parser.add_argument(flag, dest=f"f{index}", default=default, type=_parse_bool if kind is bool else kind,
                            help=help.replace("%", "%%"), metavar=kind.__name__.upper(),
                            **({"nargs": "?", "const": True} if kind is bool else {}))
    values = vars(parser.parse_args(argv))
    settings = defaults
    for index, (_, path, *_rest) in enumerate(fields):
        _set(settings, path, values[f"f{index}"])
    problems = settings.problems() if hasattr(settings, "problems") else []
    if problems:
        parser.error("\n  ".join(["invalid settings:"] + problems))
    return settings


def _set(obj, path, value):
    for name in path[:-1]:
        obj = getattr(obj, name)
    setattr(obj, path[-1], value)


def positive(settings, *names, allow=()):
    """Problems for fields that must be > 0 (or one of `allow`, e.g. -1 for "all")."""
    return [f"--{n.replace('_', '-')} must be > 0 (got {getattr(settings, n)})"
            for n in names if getattr(settings, n) <= 0 and getattr(settings, n) not in allow]


def save_settings(settings, path):
    """The final settings beside the artifacts they made."""
    Path(path).write_text(json.dumps(dataclasses.asdict(settings), indent=2, ensure_ascii=False) + "\n")
