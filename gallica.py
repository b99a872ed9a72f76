"""The Gallica recipe shared by steps 1a and 1b (they differ only in settings): stream the parquet
files, filter books, clean their OCR, tokenize each book once, cut fixed-length samples.

Memory stays flat whatever the corpus size: parquet is read in record batches, workers clean and
tokenize in parallel (ordered, so output is deterministic), samples go straight to Arrow files.
"""
import dataclasses
import glob
import math
import multiprocessing
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

import common
from cleaning import clean_ocr_text, french_score
from sampling import book_split, book_windows

COLUMNS = ["file_id", "ocr", "complete_text"]
# French prose: >= 75% letters among visible characters, >= 12% French function words (see french_score).
MIN_LETTER_SHARE, MIN_FUNCTION_WORD_SHARE = 0.75, 0.12


@dataclasses.dataclass
class GallicaSettings:
    project_dir: str = common.setting("", "project folder (default: $KAFKA_PROJECT_DIR or /project)")
    n_samples: int = common.setting(0, "training samples to cut")
    seq_len: int = common.setting(0, "tokens per sample")
    max_samples_per_book: int = common.setting(0, "cap per book, so that a few long books don't dominate")
    validation_samples: int = common.setting(0, "validation samples, from held-out books")
    validation_percent: float = common.setting(1.0, "% of books held out whole for validation (by file_id hash)")
    min_ocr: float = common.setting(80.0, "skip books whose OCR quality (the `ocr` column) is below this")
    min_chars: int = common.setting(2000, "skip books shorter than this (characters, before cleaning)")
    allow_fewer: bool = common.setting(False, "when the corpus is too small, go on with the samples it gives")
    num_proc: int = common.setting(os.cpu_count() or 1, "worker processes for cleaning and tokenizing")
    overwrite: bool = common.setting(False, "replace data prepared with other settings")

    def problems(self):
        out = common.positive(self, "n_samples", "seq_len", "max_samples_per_book", "validation_samples", "num_proc")
        if not 0 < self.validation_percent < 50:
            out.append("--validation-percent must be in (0, 50)")
        return out


def parse_ocr(value):
    """Gallica's `ocr` column is a string ("96"); missing or odd values give None."""
    try:
        score = float(value)
    except (TypeError, ValueError):
        return None
    return score if math.isfinite(score) else None


_worker = {}


def _init_worker(tokenizer, seq_len, max_samples_per_book, min_chars):
    # Forked workers inherit the main process's tokenizer: loading Llama's 61k merges again costs
    # each worker ~0.1 s, as much as tokenizing a whole book.
    _worker.update(tokenizer=tokenizer, seq_len=seq_len, max_windows=max_samples_per_book, min_chars=min_chars)


def _process_book(book):
    """(file_number, file_id, split, skip_reason | None, (n_tokens, windows) | None): filter, clean,
    tokenize once, cut."""
    number, file_id, split, text, skipped = book
    tok, seq_len = _worker["tokenizer"], _worker["seq_len"]
    if skipped or len(text) < _worker["min_chars"]:
        return number, file_id, split, skipped or "too_short", None
    letters, function_words = french_score(text)
    if letters < MIN_LETTER_SHARE or function_words < MIN_FUNCTION_WORD_SHARE:
        return number, file_id, split, "not_french", None
    # A Llama base model saw each document as BOS ... EOS; samples stay inside one book.
    ids = [tok.bos_token_id] + token_ids(tok, clean_ocr_text(text)) + [tok.eos_token_id]
    windows = book_windows(ids, seq_len, _worker["max_windows"])
    return number, file_id, split, None if len(windows) else "too_short", (len(ids), windows)


def token_ids(tokenizer, text):
    """The step's one tokenizer call (bench/prepare_bench.py times it alone as the baseline)."""
    return tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]


def arrow_samples(windows):
    """(n, seq_len) int32 windows -> an Arrow table with a list<int32> `input_ids` column, built from
    the numpy buffer directly (a Python list per token would cost more than the tokenizer)."""
    n, seq_len = windows.shape
    offsets = pa.array(np.arange(0, (n + 1) * seq_len, seq_len, dtype=np.int32))
    return pa.table({"input_ids": pa.ListArray.from_arrays(offsets, pa.array(windows.reshape(-1)))})


def parquet_files(corpus_dir):
    files = sorted(glob.glob(str(Path(corpus_dir) / "**" / "*.parquet"), recursive=True))
    if not files:
        raise common.StageError(f"no parquet files under {corpus_dir}: download some with notebook.ipynb (section 1)")
    return files


def iter_books(files, step, settings):
    """(file_number, file_id, split, text, skip_reason) for this step's books, streamed in batches.
    Books with a missing or low OCR score come with no text (nothing to send to a worker)."""
    for number, path in enumerate(files, 1):
        for batch in pq.ParquetFile(path).iter_batches(batch_size=16, columns=COLUMNS):
            for file_id, ocr, text in zip(*(batch.column(c).to_pylist() for c in COLUMNS)):
                book_step, split = book_split(file_id, settings.validation_percent)
                if book_step != step:
                    continue  # the other step's book: 1a and 1b never share one
                score = parse_ocr(ocr)
                if score is None or score < settings.min_ocr:
                    yield number, file_id, split, None, "missing_ocr" if score is None else "low_ocr"
                else:
                    yield number, file_id, split, text or "", None


def prepare(settings, step):
    """The whole recipe of step 1a or 1b."""
    from datasets import DatasetDict, Features, Sequence, Value, Dataset
    from datasets.arrow_writer import ArrowWriter

    project = common.project_dir(settings.project_dir)
    model_dir = project / common.BASE_MODEL
    tokenizer = common.load_tokenizer(model_dir)
    files = parquet_files(project / common.GALLICA_DIR)
    out_dir = project / common.DATA[step]
    identity = {k: v for k, v in dataclasses.asdict(settings).items() if k not in ("project_dir", "num_proc", "overwrite")}
    identity |= {"source_files": [os.path.relpath(f, project) for f in files],
                 "tokenizer_fingerprint": common.tokenizer_fingerprint(tokenizer)}
    if common.check_not_prepared(out_dir, identity, settings.overwrite):
        print(f"already prepared: {out_dir} (pass --overwrite to redo it)")
        return

    # 1. Stream books -> workers clean + tokenize -> samples written as they come.
    counts = {k: 0 for k in ("files_read", "books_read", "skipped_missing_ocr", "skipped_low_ocr",
                             "skipped_too_short", "skipped_not_french", "books_used", "tokens_read")}
    quota = {"train": settings.n_samples, "validation": settings.validation_samples}
    written = {"train": 0, "validation": 0}
    books_in = {"train": [], "validation": []}
    staging = common.staging_dir(out_dir)
    features = Features({"input_ids": Sequence(Value("int32"))})
    writers = {split: ArrowWriter(features=features, path=str(staging / f"{split}.arrow")) for split in quota}
    # Counting happens here, on ordered results, so the manifest is deterministic; the filter on
    # the feeding side only saves work once a split is full.
    books = (b for b in iter_books(files, step, settings) if written[b[2]] < quota[b[2]])
    init = (tokenizer, settings.seq_len, settings.max_samples_per_book, settings.min_chars)
    from tqdm.auto import tqdm
    progress = tqdm(total=settings.n_samples, desc=f"{step} samples", unit="sample")
    began = time.perf_counter()  # the step's own work: streaming, cleaning, tokenizing, writing
    with multiprocessing.get_context("fork").Pool(settings.num_proc, _init_worker, init) as pool:
        for number, file_id, split, skipped, tokenized in pool.imap(_process_book, books, chunksize=4):
            if written[split] >= quota[split]:
                continue
            counts["files_read"] = number
            counts["books_read"] += 1
            if skipped:
                counts[f"skipped_{skipped}"] += 1
                continue
            n_tokens, windows = tokenized
            counts["tokens_read"] += n_tokens
            take = windows[: quota[split] - written[split]]
            writers[split].write_table(arrow_samples(take))
            written[split] += len(take)
            books_in[split].append(file_id)
            counts["books_used"] += 1
            if split == "train":
                progress.update(len(take))
            if written == quota:
                break
        else:
            counts["files_read"] = len(files)
    progress.close()
    for writer in writers.values():
        writer.finalize()

    # 2. Too small a corpus: say what it gives and what more is needed.
    if written != quota:
        files_read = max(1, counts["files_read"])
        more = max(math.ceil((quota[s] - written[s]) * files_read / written[s]) if written[s] else 2 * files_read
                   for s in quota)
        message = (f"the corpus gives {written['train']} of {quota['train']} training and {written['validation']} of "
                   f"{quota['validation']} validation samples from {files_read} parquet files: about {more} more "
                   f"files are needed (notebook.ipynb, section 1)")
        if not settings.allow_fewer or 0 in written.values():
            raise common.StageError(message + ", or pass --allow-fewer to go on with fewer")
        print(f"warning: {message}; going on with fewer (--allow-fewer)")

    # 3. Publish: final shards, settings and manifest, swapped in atomically.
    DatasetDict({s: Dataset.from_file(str(staging / f"{s}.arrow")) for s in quota}).save_to_disk(str(staging / "final"))
    final = staging / "final"
    common.save_settings(settings, final / "settings.json")
    counts |= {"train_samples": written["train"], "validation_samples": written["validation"],
               "train_tokens": written["train"] * settings.seq_len, "train_books": len(books_in["train"]),
               "validation_books": len(books_in["validation"])}
    common.publish(final, out_dir, {
        "identity": identity, "settings": dataclasses.asdict(settings) | {"project_dir": str(project)},
        "tokenizer_fingerprint": identity["tokenizer_fingerprint"], "source_files": identity["source_files"],
        "counts": counts, "books": books_in, "versions": common.versions(),
    })
    shutil.rmtree(staging)
    nxt = {"1a": common.SCRIPTS["2a"], "1b": f"{common.SCRIPTS['2b']} (after 2a)"}[step]
    seconds = time.perf_counter() - began
    print(f"{step} done: {written['train']} training + {written['validation']} validation samples of "
          f"{settings.seq_len} tokens from {counts['books_used']} books in {out_dir}; {counts['tokens_read']:,} tokens "
          f"tokenized in {seconds:.1f} s ({counts['tokens_read'] / seconds:,.0f} tokens/s). Next: python {nxt}")
