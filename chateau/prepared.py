"""Prepared data, the contract between the prepare steps (1a, 1b, 1c) and the train steps:

    data/<stage>/                 a datasets DatasetDict saved with save_to_disk
        train/, validation/       one column `input_ids`: int32 token ids, every row seq_len long
        settings.json             the prepare step's final settings
        manifest.json             written last: identity (what the data was made from: settings,
                                  input digests, tokenizer fingerprint), counts, versions, extras
        clean_text.txt            1c only: exactly the text that was tokenized

One writer makes every prepared folder: it writes into a staging folder of its own (unique per
run), and renames it onto data/<stage> only when complete, so an interrupted or failed run never
leaves a folder that looks finished.
"""
import dataclasses
import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np

from chateau import models, stages
from chateau.cli import StageError, pid_alive, save_settings

INPUT_IDS = "input_ids"
SPLITS = ("train", "validation")
_DIGEST_EDGE = 1 << 20  # bytes read at each end of a large file for its digest


def features():
    """The one column of prepared data: int32 ids (vocabularies are < 2^31; half the bytes of int64)."""
    from datasets import Features, Sequence, Value
    return Features({INPUT_IDS: Sequence(Value("int32"))})


def file_digest(path):
    """A cheap content digest of an input file: its size and the sha256 of its first and last MiB
    (a parquet file's footer, its metadata and statistics, sits in the last bytes; a PDF's
    cross-reference table too). A file replaced by another of the same name gets another digest."""
    path = Path(path)
    size = path.stat().st_size
    h = hashlib.sha256(str(size).encode())
    with path.open("rb") as f:
        h.update(f.read(_DIGEST_EDGE))
        f.seek(max(f.tell(), size - _DIGEST_EDGE))
        h.update(f.read())
    return h.hexdigest()[:16]


def read_manifest(out_dir):
    path = Path(out_dir) / "manifest.json"
    return json.loads(path.read_text()) if path.exists() else None


def already_prepared(out_dir, identity, overwrite):
    """True when `out_dir` holds data prepared from the same inputs with the same settings
    (`identity`, from lineage.identity): the step says so and stops. Other data needs --overwrite."""
    from chateau import lineage
    remove_leftovers(out_dir)
    manifest = read_manifest(out_dir)
    return lineage.already_done(manifest and manifest["identity"], identity, overwrite, f"the prepared data in {out_dir}")


def tokenizer_of(manifest):
    """The tokenizer fingerprint prepared data was made with."""
    return manifest["identity"]["inputs"]["tokenizer"]


def windows_table(windows):
    """(n, seq_len) int32 windows -> an Arrow table with a list<int32> `input_ids` column, built from
    the numpy buffer directly (a Python list per token would cost more than the tokenizer)."""
    import pyarrow as pa
    windows = np.asarray(windows, dtype=np.int32)
    n, seq_len = windows.shape
    offsets = pa.array(np.arange(0, (n + 1) * seq_len, seq_len, dtype=np.int32))
    return pa.table({INPUT_IDS: pa.ListArray.from_arrays(offsets, pa.array(windows.reshape(-1)))})


def remove_leftovers(out_dir):
    """Remove what killed runs left beside `out_dir` (a staging folder, or the old folder a run
    was deleting when it was killed: gigabytes on the real run), saying so. Every prepare step
    calls this first, whether or not it then has anything to do."""
    out_dir = Path(out_dir)
    for pattern in (f".{out_dir.name}.partial-*", f".{out_dir.name}.old-*"):
        for left in out_dir.parent.glob(pattern):
            pid = left.name.rsplit("-", 1)[1]
            if pid.isdigit() and not pid_alive(int(pid)):
                print(f"removing {left}: left by a run that was killed (pid {pid})")
                shutil.rmtree(left, ignore_errors=True)


class PreparedWriter:
    """Writes one prepared folder: `with PreparedWriter(out_dir) as w: w.add(split, windows) ...
    w.publish(settings, manifest)`. Rows stream to Arrow files as they come (memory stays flat);
    on any exception the staging folder is removed and nothing is published."""

    def __init__(self, out_dir):
        self.out_dir = Path(out_dir)
        self.staging = self.out_dir.parent / f".{self.out_dir.name}.partial-{os.getpid()}"
        self.rows = dict.fromkeys(SPLITS, 0)

    def __enter__(self):
        from datasets.arrow_writer import ArrowWriter
        remove_leftovers(self.out_dir)
        shutil.rmtree(self.staging, ignore_errors=True)
        self.staging.mkdir(parents=True)
        self.writers = {s: ArrowWriter(features=features(), path=str(self.staging / f"{s}.arrow")) for s in SPLITS}
        return self

    def add(self, split, windows):
        """Append (n, seq_len) windows of token ids to `split`."""
        if len(windows):
            self.writers[split].write_table(windows_table(windows))
            self.rows[split] += len(windows)

    def add_text(self, name, text):
        (self.staging / name).write_text(text)

    def publish(self, settings, manifest):
        """Final shards, settings.json, then manifest.json last; the folder swapped in by renames."""
        from datasets import Dataset, DatasetDict
        for writer in self.writers.values():
            writer.finalize()
        final = self.staging / "final"
        if not all(self.rows.values()):  # datasets cannot load an empty split back; later steps need both
            raise StageError(f"{self.out_dir}: no {', no '.join(s for s in SPLITS if not self.rows[s])} samples to write")
        DatasetDict({s: Dataset.from_file(str(self.staging / f"{s}.arrow")) for s in SPLITS}).save_to_disk(str(final))
        for extra in self.staging.glob("*.txt"):
            extra.rename(final / extra.name)
        save_settings(settings, final / "settings.json")
        manifest = {**manifest, "shards": shard_records(final), "settings": dataclasses.asdict(settings),
                    "versions": models.versions()}
        (final / "manifest.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
        _swap_in(final, self.out_dir)
        shutil.rmtree(self.staging)

    def __exit__(self, kind, error, traceback):
        if kind is not None:
            shutil.rmtree(self.staging, ignore_errors=True)
        return False


def _swap_in(staging, out_dir):
    """Replace `out_dir` by the complete `staging` folder with renames (the old one goes last)."""
    out_dir = Path(out_dir)
    if out_dir.exists():
        old = out_dir.parent / f".{out_dir.name}.old-{os.getpid()}"
        out_dir.rename(old)
        Path(staging).rename(out_dir)
        shutil.rmtree(old)
    else:
        Path(staging).rename(out_dir)


def shard_records(folder):
    """{"train/data-00000-of-00001.arrow": {"bytes": n, "digest": d}, ...}: the content of prepared
    data as its manifest records it (what later steps see of it, and what a load checks first)."""
    folder = Path(folder)
    return {str(p.relative_to(folder)): {"bytes": p.stat().st_size, "digest": file_digest(p)}
            for p in sorted(folder.rglob("*.arrow"))}


def check_shards(out_dir, manifest, script):
    """Every shard the manifest records is there, whole and unchanged (a copy cut short, a file
    replaced): one line naming the shard and the fix, before anything reads it."""
    for name, record in (manifest.get("shards") or {}).items():
        path = Path(out_dir) / name
        size = path.stat().st_size if path.exists() else None
        if size != record["bytes"] or file_digest(path) != record["digest"]:
            found = "missing" if size is None else f"{size:,} bytes where {record['bytes']:,} were written" \
                if size != record["bytes"] else "changed since it was written"
            raise StageError(f"the prepared shard {path} is damaged ({found}): prepare it again with "
                             f"`python {script} --overwrite`")


def load_prepared(project, stage, tokenizer=None, max_positions=None):
    """The DatasetDict prepared by step `stage` ("1a", "1b", "1c"), checked against the model."""
    from datasets import load_from_disk
    step = stages.stage(stage)
    out_dir = step.folder(project)
    manifest = read_manifest(out_dir)
    if manifest is None:
        raise StageError(f"prepared data missing or incomplete at {out_dir}: {step.hint()}")
    if tokenizer is not None and tokenizer_of(manifest) != models.tokenizer_fingerprint(tokenizer):
        raise StageError(f"{out_dir} was tokenized with another tokenizer than the model's: "
                         f"rerun `python {step.script} --overwrite`")
    check_shards(out_dir, manifest, step.script)
    seq_len = manifest["settings"]["seq_len"]
    if max_positions is not None and seq_len > max_positions:
        raise StageError(f"{out_dir} has {seq_len}-token samples but the model's context is "
                         f"{max_positions}: rerun `python {step.script} --seq-len {max_positions} --overwrite`")
    return load_from_disk(str(out_dir)), manifest
