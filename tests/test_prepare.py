"""The prepare steps on fixtures with planted noise: clean text, honest splits, atomic and repeatable."""
import hashlib
import json
import re
import shutil
import signal
import subprocess
import time

import pytest

from chateau import stages
from conftest import fixtures, one_error_line, run_script, tiny_flags
from dev.runner import start_script

GALLICA = ["1a_prepare_gallica_fullweight.py", "1b_prepare_gallica_QLoRA.py"]


def shard_hashes(out_dir):
    """Hashes of the shards themselves (the manifest and settings name the project folder)."""
    return {str(p.relative_to(out_dir)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(out_dir.rglob("*")) if p.is_file() and p.name not in ("manifest.json", "settings.json", "state.json")}


def decoded_samples(project, stage):
    from datasets import load_from_disk
    from transformers import AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained(project / stages.BASE_MODEL)
    data = load_from_disk(str(stages.folder(project, stage)))
    return {split: [tokenizer.decode(ids) for ids in data[split]["input_ids"]] for split in data}


def test_novel_clean_text_has_no_headers_or_page_numbers_and_every_paragraph(fresh_project):
    project, info = fresh_project
    run_script(project, "1c_prepare_kafka.py", *tiny_flags("1c_prepare_kafka.py"))
    text = (stages.folder(project, "1c") / "clean_text.txt").read_text()
    paragraphs = text.strip().split("\n\n")
    assert "FRANZ KAFKA" not in text and "LE CHÂTEAU" not in text
    assert not re.search(r"\d", text)  # the source has no digits: any digit is a page number
    for kind, source in info["novel"]:
        assert source in paragraphs, source  # every paragraph and heading intact, on its own
    assert len(paragraphs) == len(info["novel"])
    assert "- " not in text.replace("— ", "")  # no hyphen left from a line break


def test_novel_windows_and_validation_slice(fresh_project):
    from datasets import load_from_disk
    project, _ = fresh_project
    run_script(project, "1c_prepare_kafka.py", "--seq-len", "64", "--stride", "16", "--validation-fraction", "0.1")
    data = load_from_disk(str(stages.folder(project, "1c")))
    manifest = json.loads((stages.folder(project, "1c") / "manifest.json").read_text())
    tokens = manifest["counts"]["tokens"]
    assert len(data["validation"]) * 64 >= 0.1 * tokens
    train = [tuple(r) for r in data["train"]["input_ids"]]
    assert len(train) >= (tokens * 0.9 - 2 * 64) / 16 - 2  # stride 16 over both sides of the slice: 4 windows per token
    assert train != sorted(train)  # shuffled


@pytest.mark.parametrize("content, expected", [
    (b"", "is not a PDF"),
    (b"%PDF-1.4 garbage \x00\x01", "is truncated"),
    (None, "no text layer"),
])
def test_bad_pdfs_fail_with_one_clear_line(fresh_project, content, expected):
    import pymupdf
    project, _ = fresh_project
    pdf = project / stages.NOVEL_PDF
    if content is None:  # a scan: pages with pictures of text, no text layer
        doc = pymupdf.open()
        page = doc.new_page()
        page.draw_rect(pymupdf.Rect(50, 50, 300, 400), fill=(0.2, 0.2, 0.2))
        doc.save(pdf)
    else:
        pdf.write_bytes(content)
    out = run_script(project, "1c_prepare_kafka.py", check=False)
    one_error_line(out, expected)
    assert not (stages.folder(project, "1c")).exists()


def test_gallica_samples_are_clean_and_books_disjoint(fresh_project):
    project, info = fresh_project
    found = {}
    for script in GALLICA:
        run_script(project, script, *tiny_flags(script))
        stage = script[:2]
        for split, texts in decoded_samples(project, stage).items():
            joined = "\n".join(texts)
            assert "gallica" not in joined.lower() and "bibliothèque nationale" not in joined.lower()
            assert not re.search(r"\d", joined), "a page number or running head leaked"
            assert "ſ" not in joined and "<unk>" not in joined
            assert all(len(set(re.findall(r"zorg[a-z]{3}", t))) <= 1 for t in texts)  # no sample spans two books
            found[stage, split] = set(re.findall(r"zorg[a-z]{3}", joined))
    kinds = {fixtures.marker_word(i): kind for i, kind in enumerate(info["book_kinds"].values())}
    used = set().union(*found.values())
    assert used and all(kinds[m] == "kept" for m in used), {m: kinds[m] for m in used}
    groups = list(found.values())
    assert all(groups) and all(not (a & b) for i, a in enumerate(groups) for b in groups[i + 1:])
    counts = json.loads((stages.folder(project, "1a") / "manifest.json").read_text())["counts"]
    assert counts["skipped_low_ocr"] > 0 and counts["train_samples"] == 96


def test_rerun_is_byte_identical_and_says_already_prepared(fresh_project):
    project, _ = fresh_project
    script = GALLICA[0]
    run_script(project, script, *tiny_flags(script))
    first = shard_hashes(stages.folder(project, "1a"))
    again = run_script(project, script, *tiny_flags(script))
    assert "already prepared" in again.stdout
    run_script(project, script, *tiny_flags(script), "--overwrite", "--num-proc", "1")
    assert shard_hashes(stages.folder(project, "1a")) == first
    other = run_script(project, script, *tiny_flags(script), "--min-chars", "400", check=False)
    assert other.returncode == 2 and "--overwrite" in other.stderr
    assert shard_hashes(stages.folder(project, "1a")) == first  # nothing overwritten


def test_too_small_corpus_says_what_is_missing(fresh_project):
    project, _ = fresh_project
    flags = [*tiny_flags(GALLICA[0]), "--n-samples", "5000"]
    out = run_script(project, GALLICA[0], *flags, check=False)
    assert out.returncode == 2 and re.search(r"gives \d+ of 5000 training .* about \d+ more files", out.stderr)
    assert not (stages.folder(project, "1a")).exists()
    out = run_script(project, GALLICA[0], *flags, "--allow-fewer")
    counts = json.loads((stages.folder(project, "1a") / "manifest.json").read_text())["counts"]
    assert "going on with fewer" in out.stdout and 0 < counts["train_samples"] < 5000


def test_sigkill_midway_then_rerun_gives_the_uninterrupted_result(fresh_project, tmp_path):
    project, _ = fresh_project
    # A bigger corpus so the step runs long enough to be killed midway.
    shutil.rmtree(project / stages.GALLICA_DIR)
    fixtures.build_gallica(project / stages.GALLICA_DIR, n_files=6, books_per_file=24, pages=12)
    reference = tmp_path / "reference"
    shutil.copytree(project, reference)
    flags = ["--n-samples", "400", "--seq-len", "64", "--max-samples-per-book", "40", "--validation-samples", "20",
             "--validation-percent", "25", "--min-chars", "500", "--num-proc", "1"]
    run_script(reference, GALLICA[0], *flags)

    out_dir = stages.folder(project, "1a")
    staging = lambda: list(out_dir.parent.glob(f".{out_dir.name}.partial-*"))
    proc = start_script(project, GALLICA[0], *flags, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not any(f for s in staging() for f in s.rglob("*.arrow")) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the step finished before it could be killed"
    assert not (out_dir / "manifest.json").exists()  # nothing that looks finished

    run_script(project, GALLICA[0], *flags)
    assert shard_hashes(out_dir) == shard_hashes(stages.folder(reference, "1a"))
    assert not staging()  # the killed run's staging folder was cleaned up
