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
import sys
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
    """A finished stage's identity as later steps see it (None when it is not finished): what the
    stage is, never where or how it was made. Its recorded identity (identity settings and input
    digests: no project folder, no --overwrite, no --config path) and its content (the digests of
    its shards or weights, recorded when it was written), read from its manifest.json (prepared
    data) or metrics.json (a trained stage), both written last. Re-preparing or retraining with the
    same inputs and settings into byte-identical files, here or in a moved project, keeps it."""
    step = stages.stage(name)
    try:
        record = prepared.read_manifest(step.folder(project)) if step.kind == "prepare" else read_metrics(project, name)
    except (StageError, ValueError):
        return None  # damaged: not finished, so whatever was made from it is stale
    if record is None:
        return None
    content = record.get("shards") if step.kind == "prepare" else record.get("weights")
    if content is None:  # written before content digests were recorded: its counts (prepared) or steps
        content = record.get("counts") if step.kind == "prepare" else record.get("step_end_times")
    return _sha(json.dumps([record.get("identity"), content], sort_keys=True, ensure_ascii=False).encode())


def weights_digests(folder):
    """{relative path: digest} of the safetensors files a stage publishes (its model or adapter,
    and merged/; not its checkpoints or its kept passes): the content part of a trained stage's
    identity."""
    folder = Path(folder)
    return {str(p.relative_to(folder)): prepared.file_digest(p)
            for p in sorted([*folder.glob("*.safetensors"), *folder.glob("merged/*.safetensors")])}


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
        base = stages.base_model_dir(project, settings.get("base_model") or stages.base_of(project))
        return model_digest(base) if base.is_dir() else None
    return stage_digest(project, name)


def read_metrics(project, name):
    """A finished train stage's metrics.json (None when it is not finished); a damaged one (a disk
    that filled up while it was written by an older version) is one line, not a JSON traceback."""
    marker = stages.folder(project, name) / "metrics.json"
    if not marker.exists():
        return None
    try:
        return json.loads(marker.read_text())
    except ValueError:
        raise StageError(f"{marker} is damaged (not JSON): the stage is not finished; rerun "
                         f"`python {stages.script_of(name)}` (it resumes from its last checkpoint)") from None


def is_finished(project, name):
    """Whether train stage `name` is finished: a whole metrics.json (written last, atomically)."""
    try:
        return read_metrics(project, name) is not None
    except StageError:
        return False  # damaged: not finished (its run resumes from the last checkpoint)


def stale_reason(project, name):
    """Why the finished stage `name` is stale (its inputs, the base model included, changed since
    it was made), or None when it is current."""
    recorded = (read_metrics(project, name) or {}).get("identity", {})
    settings = recorded.get("settings", {})
    changed = [k for k, digest in recorded.get("inputs", {}).items() if current_digest(project, k, settings) != digest]
    if not changed:
        return None
    return (f"step {name} is stale: {', '.join(changed)} changed since it was trained: "
            f"rerun `python {stages.script_of(name)} --overwrite`")


def check_current(project, name, allow_stale=None):
    """Refuse a finished stage that is stale: whatever is built on it, or made with it, would not
    come from the model the user trained. `allow_stale` is the consumers' --allow-stale (None for
    the train steps, which have none): True says so and goes on. Returns the reason, or None."""
    reason = stale_reason(project, name)
    if reason and not allow_stale:
        raise StageError(reason if allow_stale is None else f"{reason} (or pass --allow-stale to use it anyway)")
    if reason:
        print(f"warning: {reason}; used anyway (--allow-stale)", file=sys.stderr)
    return reason


def process_start(pid):
    """When process `pid` started (clock ticks since boot, /proc/PID/stat field 22), or None where
    /proc cannot tell: with the pid, it names one process (a pid can be reused by another)."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


class StageLock:
    """`with StageLock(folder, name):` one run at a time per stage. The lock file beside the folder
    holds the pid and start time of the process that runs the stage; a lock left by a dead process,
    or by one whose pid now belongs to another process, is taken over."""

    def __init__(self, folder, name):
        self.path = Path(folder).parent / f".{Path(folder).name}.lock"
        self.name = name

    def __enter__(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # The lock appears with its content or not at all (written beside it, then hard-linked into
        # place, which fails if it exists): a lock seen empty would be taken for a dead run's.
        claim = self.path.with_name(f"{self.path.name}.{os.getpid()}")
        claim.write_text(f"{os.getpid()} {process_start(os.getpid()) or ''}".strip())
        try:
            return self._take(claim)
        finally:
            claim.unlink(missing_ok=True)

    def _take(self, claim):
        for _ in range(2):
            try:
                os.link(claim, self.path)
            except FileExistsError:
                pid, started = self._holder()
                if pid is not None and pid != os.getpid() and pid_alive(pid) and started in (None, process_start(pid)):
                    raise StageError(f"step {self.name} is already running (pid {pid}; lock {self.path}): wait for it to "
                                     f"finish, or stop it, then run this again. If `ps -p {pid} -o args` shows no "
                                     f"{stages.script_of(self.name) if self.name in stages.STAGES else 'step'}, the lock "
                                     f"is left over: remove {self.path}") from None
                self.path.unlink(missing_ok=True)  # a dead run's lock (or its pid, now another process's)
                continue
            return self
        raise StageError(f"could not take the lock {self.path}: remove it if no step {self.name} is running")

    def _holder(self):
        """(pid, start time) written in the lock file; (None, None) when unreadable."""
        try:
            fields = self.path.read_text().split()
            return int(fields[0]), (int(fields[1]) if len(fields) > 1 else None)
        except (OSError, ValueError, IndexError):
            return None, None

    def __exit__(self, *exc):
        if self._holder()[0] == os.getpid():
            self.path.unlink(missing_ok=True)
        return False
