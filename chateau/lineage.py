"""What each stage was made from, so that nothing finished is changed by accident.

Every stage records its identity: its settings (those that change what it makes: every field
not marked `identity=False`) and the digests of its inputs (the base model's files, the prepared
data's manifests, the previous stage's metrics). `already_done` is the one rule for prepare, train
and export steps alike: the same identity is "already done" and changes nothing; another identity
needs --overwrite; a stage whose inputs changed since it was made is stale, and every later step
says so. One run at a time per stage: a lock file holds the running process's pid.
"""
import hashlib
import json
import os
from pathlib import Path

from chateau import prepared, stages
from chateau.cli import StageError, identity_settings, pid_alive


def _sha(data):
    return hashlib.sha256(data).hexdigest()[:16]


def model_digest(folder):
    """The base model's identity: its config, weights and tokenizer files (cheap digests)."""
    folder = Path(folder)
    files = sorted(p for p in folder.iterdir() if p.is_file() and (p.suffix in (".json", ".safetensors", ".model")))
    return _sha(json.dumps([(p.name, prepared.file_digest(p)) for p in files]).encode())


def stage_digest(project, name):
    """A finished stage's identity as later steps see it (None when it is not finished): its
    manifest (prepared data) or metrics.json (a trained stage), both written last."""
    step = stages.stage(name)
    marker = step.folder(project) / ("manifest.json" if step.kind == "prepare" else "metrics.json")
    return _sha(marker.read_bytes()) if marker.exists() else None


def identity(settings, inputs):
    """What a run makes depends on: its identity settings and its inputs ({name: digest})."""
    return {"settings": identity_settings(settings), "inputs": inputs}


def already_done(recorded, identity, overwrite, what):
    """The one "already done" rule of every step. `recorded`: the identity the finished artifact
    was made with (None when there is none). True: made from the same inputs and settings, nothing
    to do. False: to be made (nothing finished there, or --overwrite). A finished artifact made
    from other inputs or settings is never replaced without --overwrite."""
    if recorded is None or overwrite:
        return False
    if recorded == identity:
        return True
    raise StageError(f"{what} was made from other inputs or settings: pass --overwrite to make it again "
                     f"(what is finished stays until the new run starts)")


def train_inputs(project, stage_names, base_dir=None):
    """{input: digest} of a train step: the stages it reads, and the base model's folder."""
    out = {name: stage_digest(project, name) for name in stage_names if name != "base"}
    if base_dir is not None:
        out["base"] = model_digest(base_dir)
    return out


def current_digest(project, name, settings):
    """An input's digest as it is now: a stage's marker, or the base model named by `settings`."""
    if name == "base":
        base = stages.base_model_dir(project, settings.get("base_model", stages.BASE_MODEL))
        return model_digest(base) if base.is_dir() else None
    return stage_digest(project, name)


def check_current(project, name):
    """Refuse a finished stage whose inputs (the base model included) changed since it was made:
    it is stale, and whatever is built on it would not be the model the user trained."""
    step = stages.stage(name)
    marker = step.folder(project) / "metrics.json"
    recorded = json.loads(marker.read_text()).get("identity", {}) if marker.exists() else {}
    settings = recorded.get("settings", {})
    changed = [k for k, digest in recorded.get("inputs", {}).items() if current_digest(project, k, settings) != digest]
    if changed:
        raise StageError(f"step {name} is stale: {', '.join(changed)} changed since it was trained: "
                         f"rerun `python {step.script} --overwrite`")


class StageLock:
    """`with StageLock(folder, name):` one run at a time per stage. The lock file beside the folder
    holds the pid; a lock left by a dead process is taken over."""

    def __init__(self, folder, name):
        self.path = Path(folder).parent / f".{Path(folder).name}.lock"
        self.name = name

    def __enter__(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                holder = self._holder()
                if holder is not None and holder != os.getpid() and pid_alive(holder):
                    raise StageError(f"step {self.name} is already running (pid {holder}): wait for it to finish, "
                                     f"or stop it, then run this again") from None
                self.path.unlink(missing_ok=True)  # a dead run's lock
                continue
            with os.fdopen(fd, "w") as f:
                f.write(str(os.getpid()))
            return self
        raise StageError(f"could not take the lock {self.path}: remove it if no step {self.name} is running")

    def _holder(self):
        try:
            return int(self.path.read_text().strip() or 0) or None
        except (OSError, ValueError):
            return None

    def __exit__(self, *exc):
        if self._holder() == os.getpid():
            self.path.unlink(missing_ok=True)
        return False
