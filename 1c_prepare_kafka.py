"""Step 1c: the novel's PDF -> clean text -> 2048-token windows (stride 512) for step 2c.

    docker exec -it kafka python 1c_prepare_kafka.py
    python 1c_prepare_kafka.py --project-dir /tmp/kafka-demo --seq-len 128 --stride 32   # tiny, CPU

Reads /project/Kafka-Le-Chateau.pdf with positions (pymupdf), drops running headers and page
numbers, undoes hyphenation, keeps paragraphs, and writes:
  data/1c_kafka/clean_text.txt   exactly the text that is tokenized, for people to read
  data/1c_kafka/{train,validation} + manifest.json
With stride 512 every token appears in ~4 windows: one pass over the shuffled windows is the
curriculum's "4 pseudo-epochs". Validation is a contiguous slice from the middle of the book.
"""
import hashlib
import random
from dataclasses import dataclass

import common
from cleaning import novel_paragraphs
from sampling import novel_windows


@dataclass
class Settings:
    project_dir: str = common.setting("", "project folder (default: $KAFKA_PROJECT_DIR or /project)")
    seq_len: int = common.setting(2048, "tokens per window (TinyLlama's context)")
    stride: int = common.setting(512, "tokens between window starts: seq_len/stride = times each token is seen")
    validation_fraction: float = common.setting(0.05, "share of the book held out, from its middle (0 = none)")
    seed: int = common.setting(0, "seed of the window shuffle")
    overwrite: bool = common.setting(False, "replace data prepared with other settings")

    def problems(self):
        out = common.positive(self, "seq_len", "stride")
        if self.stride > self.seq_len:
            out.append(f"--stride {self.stride} > --seq-len {self.seq_len} would skip text")
        if not 0 <= self.validation_fraction < 0.5:
            out.append("--validation-fraction must be in [0, 0.5)")
        return out


def read_pdf_lines(pdf_path):
    """[(page_height, [(x0, y0, x1, y1, text), ...]), ...], lines sorted top to bottom."""
    import pymupdf
    try:
        doc = pymupdf.open(pdf_path)
    except Exception as error:  # pymupdf raises several types for empty or corrupt files
        raise common.StageError(f"{pdf_path} is not a readable PDF ({error}): download it again") from None
    pages = []
    for page in doc:
        lines = []
        for block in page.get_text("dict")["blocks"]:
            for line in block.get("lines", []):
                text = "".join(span["text"] for span in line["spans"])
                lines.append((*line["bbox"], text))
        lines.sort(key=lambda l: (round(l[1]), l[0]))
        pages.append((page.rect.height, lines))
    if not any(text.strip() for _, lines in pages for *_, text in lines):
        raise common.StageError(f"{pdf_path} has no text layer (scanned images?): OCR it first "
                                f"(e.g. `ocrmypdf in.pdf out.pdf`) or use a PDF with text")
    return pages


def main():
    settings = common.parse_settings(Settings, description=__doc__)
    project = common.project_dir(settings.project_dir)
    pdf = common.require(project / common.NOVEL_PDF, "the novel's PDF",
                         "put the French translation there (notebook.ipynb, section 1, says where to get it)")
    tokenizer = common.load_tokenizer(project / common.BASE_MODEL)
    out_dir = project / common.DATA["1c"]
    identity = {
        "seq_len": settings.seq_len, "stride": settings.stride, "validation_fraction": settings.validation_fraction,
        "seed": settings.seed, "source_sha256": hashlib.sha256(pdf.read_bytes()).hexdigest(),
        "tokenizer_fingerprint": common.tokenizer_fingerprint(tokenizer),
    }
    if common.check_not_prepared(out_dir, identity, settings.overwrite):
        print(f"already prepared: {out_dir} (pass --overwrite to redo it)")
        return

    # 1. Text: positions tell headers, page numbers and paragraphs apart.
    pages = read_pdf_lines(pdf)
    text = "\n\n".join(novel_paragraphs(pages)) + "\n"

    # 2. Tokens: the whole book once, framed like a pretraining document (BOS ... EOS).
    ids = [tokenizer.bos_token_id] + tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"] + [tokenizer.eos_token_id]
    train_starts, validation_starts = novel_windows(len(ids), settings.seq_len, settings.stride, settings.validation_fraction)
    if not train_starts:
        raise common.StageError(f"the book has {len(ids)} tokens, too few for one {settings.seq_len}-token "
                                f"training window: lower --seq-len or --validation-fraction")
    random.Random(settings.seed).shuffle(train_starts)

    # 3. Write: into a staging folder, swapped in when complete.
    from datasets import Dataset, DatasetDict, Features, Sequence, Value
    features = Features({"input_ids": Sequence(Value("int32"))})
    window = lambda starts: Dataset.from_dict({"input_ids": [ids[s:s + settings.seq_len] for s in starts]}, features=features)
    staging = common.staging_dir(out_dir)
    DatasetDict({"train": window(train_starts), "validation": window(validation_starts)}).save_to_disk(str(staging))
    (staging / "clean_text.txt").write_text(text)
    common.save_settings(settings, staging / "settings.json")
    common.publish(staging, out_dir, {
        "identity": identity, "settings": vars(settings) | {"project_dir": str(project)},
        "tokenizer_fingerprint": identity["tokenizer_fingerprint"], "source_files": [str(pdf)],
        "counts": {"pages": len(pages), "characters": len(text), "tokens": len(ids),
                   "train_windows": len(train_starts), "validation_windows": len(validation_starts)},
        "versions": common.versions(),
    })
    print(f"1c done: {len(train_starts)} training and {len(validation_starts)} validation windows of "
          f"{settings.seq_len} tokens from {len(ids)} tokens in {out_dir} (read {out_dir / 'clean_text.txt'}). "
          f"Next: python {common.SCRIPTS['2a']} (if not done), then {common.SCRIPTS['2c']}")


if __name__ == "__main__":
    common.run(main)
