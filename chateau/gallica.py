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
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np

from chateau import lineage, models, prepared, stages
from chateau.cleaning import clean_ocr_text, french_score
from chateau.cli import StageError, positive, setting
from chateau.windows import book_split, book_windows

COLUMNS = ["file_id", "ocr", "complete_text"]
# French prose: >= 75% letters among visible characters, >= 12% French function words (see french_score).
MIN_LETTER_SHARE, MIN_FUNCTION_WORD_SHARE = 0.75, 0.12


@dataclasses.dataclass
class GallicaSettings:
    project_dir: str = setting("", "project folder (default: $KAFKA_PROJECT_DIR or /project)", identity=False)
    base_model: str = setting(stages.BASE_MODEL, stages.BASE_MODEL_HELP)
    n_samples: int = setting(0, "training samples to cut")
    seq_len: int = setting(0, "tokens per sample")
    max_samples_per_book: int = setting(0, "cap per book, so that a few long books don't dominate")
    validation_samples: int = setting(0, "validation samples, from held-out books")
    validation_percent: float = setting(1.0, "% of books held out whole for validation (by file_id hash)")
    min_ocr: float = setting(80.0, "skip books whose OCR quality (the `ocr` column) is below this")
    min_chars: int = setting(2000, "skip books shorter than this (characters, before cleaning)")
    allow_fewer: bool = setting(False, "when the corpus is too small, go on with the samples it gives")
    num_proc: int = setting(os.cpu_count() or 1, "worker processes for cleaning and tokenizing", identity=False)
    overwrite: bool = setting(False, "replace data prepared with other settings", identity=False)

    def problems(self):
        out = positive(self, "n_samples", "seq_len", "max_samples_per_book", "validation_samples", "num_proc")
        if 0 < self.seq_len < 2:
            out.append(f"--seq-len must be >= 2: a {self.seq_len}-token sample has no next token to learn")
        if not 0 <= self.min_ocr <= 100:
            out.append(f"--min-ocr must be in [0, 100] (got {self.min_ocr})")
        if not 0 < self.validation_percent < 50:
            out.append("--validation-percent must be in (0, 50)")
        return out


# The curriculum's two Gallica steps. Their defaults live here, not in the scripts, because the
# download planner (downloads.py) and the prepare benchmark size the corpus from them.
@dataclasses.dataclass
class Settings1a(GallicaSettings):
    n_samples: int = setting(1_000_000, "training samples to cut (1M x 512 = 512M tokens)")
    seq_len: int = setting(512, "tokens per sample")
    max_samples_per_book: int = setting(128, "cap per book (128 x 512 = 64k tokens), so that long books don't dominate")
    validation_samples: int = setting(2000, "validation samples (1M tokens), from held-out books")


@dataclasses.dataclass
class Settings1b(GallicaSettings):
    n_samples: int = setting(250_000, "training samples to cut (250k x 2048 = 512M tokens)")
    seq_len: int = setting(2048, "tokens per sample (TinyLlama's context)")
    max_samples_per_book: int = setting(32, "cap per book (32 x 2048 = 64k tokens)")
    validation_samples: int = setting(500, "validation samples (1M tokens), from held-out books")


STEP_SETTINGS = {"1a": Settings1a, "1b": Settings1b}


class Book(NamedTuple):
    """A book of this step, as streamed from the parquet files (text None when it is skipped unread)."""
    file_number: int   # 1-based position of its parquet file, for the "files read" count
    file_id: str
    split: str         # "train" | "validation"
    text: str | None
    skipped: str | None  # "missing_ocr" | "low_ocr" | None


class Processed(NamedTuple):
    """A worker's answer for one book: why it was skipped, or its tokens cut into windows."""
    book: Book
    skipped: str | None  # "missing_ocr" | "low_ocr" | "too_short" | "not_french" | None
    n_tokens: int = 0
    windows: np.ndarray | None = None


def parse_ocr(value):
    """Gallica's `ocr` column is a string ("96", a percentage); missing or odd values (not a
    number, or outside 0-100) give None."""
    try:
        score = float(value)
    except (TypeError, ValueError):
        return None
    return score if 0 <= score <= 100 else None


def token_ids(tokenizer, text):
    """The step's one tokenizer call (bench/prepare_bench.py times it alone as the baseline)."""
    return tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]


_worker = {}


def _init_worker(tokenizer, seq_len, max_samples_per_book, min_chars):
    # Forked workers inherit the main process's tokenizer: loading Llama's 61k merges again costs
    # each worker ~0.1 s, as much as tokenizing a whole book.
    _worker.update(tokenizer=tokenizer, seq_len=seq_len, max_windows=max_samples_per_book, min_chars=min_chars)


def _process_book(book):
    """Filter, clean, tokenize once, cut (in a worker)."""
    tok = _worker["tokenizer"]
    if book.skipped or len(book.text) < _worker["min_chars"]:
        return Processed(book._replace(text=None), book.skipped or "too_short")
    letters, function_words = french_score(book.text)
    if letters < MIN_LETTER_SHARE or function_words < MIN_FUNCTION_WORD_SHARE:
        return Processed(book._replace(text=None), "not_french")
    # Samples stay inside one book.
    ids = models.document_ids(tok, token_ids(tok, clean_ocr_text(book.text)))
    windows = book_windows(ids, _worker["seq_len"], _worker["max_windows"])
    return Processed(book._replace(text=None), None if len(windows) else "too_short", len(ids), windows)


def parquet_files(corpus_dir):
    files = sorted(glob.glob(str(Path(corpus_dir) / "**" / "*.parquet"), recursive=True))
    if not files:
        raise StageError(f"no parquet files under {corpus_dir}: download some with notebook.ipynb (section 1)")
    return files


def open_parquet(path):
    """A Gallica parquet file, checked: readable, with the columns the recipe reads."""
    import pyarrow.parquet as pq
    try:
        parquet = pq.ParquetFile(path)
    except Exception as error:  # pyarrow raises ArrowInvalid, OSError... for empty, truncated or non-parquet files
        raise StageError(f"{path} is not a readable parquet file ({str(error).splitlines()[0][:120]}): "
                         f"download it again or remove it") from None
    missing = [c for c in COLUMNS if c not in parquet.schema_arrow.names]
    if missing:
        raise StageError(f"{path} has no column {', '.join(missing)} (it has {', '.join(parquet.schema_arrow.names)}): "
                         f"it is not a PleIAs/French-PD-Books file; remove it")
    import pyarrow as pa
    schema = parquet.schema_arrow
    for column in ("file_id", "complete_text"):  # the text columns are strings; `ocr` may be a string or a number
        kind = schema.field(column).type
        if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
            raise StageError(f"{path}: column {column} is {kind}, not text: it is not a PleIAs/French-PD-Books file; remove it")
    return parquet


def iter_books(files, step, settings):
    """This step's books, streamed in record batches. Books with a missing or low OCR score come
    with no text (nothing to send to a worker)."""
    for number, path in enumerate(files, 1):
        for batch in open_parquet(path).iter_batches(batch_size=16, columns=COLUMNS):
            for file_id, ocr, text in zip(*(batch.column(c).to_pylist() for c in COLUMNS)):
                book_step, split = book_split(file_id, settings.validation_percent)
                if book_step != step:
                    continue  # the other step's book: 1a and 1b never share one
                score = parse_ocr(ocr)
                if score is None or score < settings.min_ocr:
                    yield Book(number, file_id, split, None, "missing_ocr" if score is None else "low_ocr")
                else:
                    yield Book(number, file_id, split, text or "", None)


def shortfall_message(written, quota, counts, settings, n_files):
    """What to do when the corpus gave fewer samples than asked: more files only when more files
    would help; otherwise the real cause."""
    if counts["books_read"] == 0:
        return (f"the {n_files} parquet files hold no book for this step (half of the books go to 1a, half to 1b): "
                f"they are empty, or too few; download more with notebook.ipynb (section 1)")
    if written["train"] == 0 and counts["skipped_too_short"] == counts["books_read"] - sum(
            counts[f"skipped_{k}"] for k in ("missing_ocr", "low_ocr", "not_french")):
        return (f"no book is longer than one {settings.seq_len}-token sample (--seq-len) after --min-chars "
                f"{settings.min_chars}: lower --seq-len")
    if written["validation"] == 0:
        return (f"no book of the {counts['books_read']} read was held out for validation: raise --validation-percent "
                f"(now {settings.validation_percent}) or add parquet files")
    files_read = max(1, counts["files_read"])
    message = (f"the corpus gives {written['train']} of {quota['train']} training and {written['validation']} of "
               f"{quota['validation']} validation samples from {files_read} parquet files: about "
               f"{shortfall(written, quota, files_read)} more files are needed (notebook.ipynb, section 1)")
    return message if settings.allow_fewer else message + ", or pass --allow-fewer to go on with fewer"


def shortfall(written, quota, files_read):
    """How many more parquet files the missing samples need, at the yield seen so far (twice as
    many files as were read when a split got nothing)."""
    files_read = max(1, files_read)
    return max(math.ceil((quota[s] - written[s]) * files_read / written[s]) if written[s] else 2 * files_read
               for s in quota)


def cut_samples(files, step, settings, tokenizer, writer):
    """Stream this step's books through the workers and write their windows until both splits
    are full. Returns (counts, books per split); counting happens here, on ordered results, so
    the manifest is deterministic."""
    from tqdm.auto import tqdm
    counts = dict.fromkeys(("files_read", "books_read", "skipped_missing_ocr", "skipped_low_ocr",
                            "skipped_too_short", "skipped_not_french", "books_used", "tokens_read"), 0)
    quota = {"train": settings.n_samples, "validation": settings.validation_samples}
    books_in = {"train": [], "validation": []}
    # The filter on the feeding side only saves work once a split is full.
    books = (b for b in iter_books(files, step, settings) if writer.rows[b.split] < quota[b.split])
    init = (tokenizer, settings.seq_len, settings.max_samples_per_book, settings.min_chars)
    progress = tqdm(total=settings.n_samples, desc=f"{step} samples", unit="sample")
    with multiprocessing.get_context("fork").Pool(settings.num_proc, _init_worker, init) as pool:
        for result in pool.imap(_process_book, books, chunksize=4):
            book = result.book
            if writer.rows[book.split] >= quota[book.split]:
                continue
            counts["files_read"] = book.file_number
            counts["books_read"] += 1
            if result.skipped:
                counts[f"skipped_{result.skipped}"] += 1
                continue
            counts["tokens_read"] += result.n_tokens
            take = result.windows[: quota[book.split] - writer.rows[book.split]]
            writer.add(book.split, take)
            books_in[book.split].append(book.file_id)
            counts["books_used"] += 1
            if book.split == "train":
                progress.update(len(take))
            if writer.rows == quota:
                break
        else:
            counts["files_read"] = len(files)
    progress.close()
    return counts, books_in


def prepare(settings, step):
    """The whole recipe of step 1a or 1b."""
    project = stages.workspace_of(settings)
    base = stages.base_model_dir(project, settings.base_model)
    tokenizer = models.load_tokenizer(base)
    models.check_context(base, settings.seq_len)
    files = parquet_files(stages.inputs_dir(project) / stages.GALLICA_DIR)
    out_dir = stages.folder(stages.workspace_of(settings, claim=True), step)  # everything checked: its base's folder
    with lineage.StageLock(out_dir, step):
        _prepare(settings, step, project, tokenizer, files, out_dir)


def _prepare(settings, step, project, tokenizer, files, out_dir):
    for path in files:  # every file checked (readable, the right columns) before any work starts
        open_parquet(path)
    identity = lineage.identity(settings, {"sources": {os.path.relpath(f, stages.inputs_dir(project)): prepared.file_digest(f) for f in files},
                                           "tokenizer": models.tokenizer_fingerprint(tokenizer)})
    if prepared.already_prepared(out_dir, identity, settings.overwrite):
        print(f"already prepared: {out_dir} (pass --overwrite to redo it)")
        return

    began = time.perf_counter()  # the step's own work: streaming, cleaning, tokenizing, writing
    with prepared.PreparedWriter(out_dir) as writer:
        # 1. Stream books -> workers clean + tokenize -> samples written as they come.
        counts, books_in = cut_samples(files, step, settings, tokenizer, writer)
        written = dict(writer.rows)

        # 2. Too small a corpus: say what it gives and what more is needed.
        quota = {"train": settings.n_samples, "validation": settings.validation_samples}
        if written != quota:
            message = shortfall_message(written, quota, counts, settings, len(files))
            if not settings.allow_fewer or 0 in written.values():
                raise StageError(message)
            print(f"warning: {message}; going on with fewer (--allow-fewer)")

        # 3. Publish: final shards, settings and manifest, swapped in atomically.
        counts |= {"train_samples": written["train"], "validation_samples": written["validation"],
                   "train_tokens": written["train"] * settings.seq_len, "train_books": len(books_in["train"]),
                   "validation_books": len(books_in["validation"])}
        writer.publish(settings, {"identity": identity, "counts": counts, "books": books_in})
    seconds = time.perf_counter() - began
    nxt = " or ".join(stages.command(s.name, settings.base_model) for s in stages.TABLE if s.data == step)
    print(f"{step} done: {written['train']} training + {written['validation']} validation samples of "
          f"{settings.seq_len} tokens from {counts['books_used']} books in {out_dir}; {counts['tokens_read']:,} tokens "
          f"tokenized in {seconds:.1f} s ({counts['tokens_read'] / seconds:,.0f} tokens/s). Next: {nxt}")
