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
import random
from dataclasses import dataclass

import numpy as np

from chateau import lineage, models, prepared, stages
from chateau.cleaning import novel_paragraphs
from chateau.cli import StageError, parse_settings, positive, run, setting
from chateau.novel import read_pdf_pages
from chateau.windows import novel_windows


@dataclass
class Settings:
    project_dir: str = setting("", "project folder (default: $KAFKA_PROJECT_DIR or /project)", identity=False)
    base_model: str = setting(stages.BASE_MODEL, stages.BASE_MODEL_HELP)
    seq_len: int = setting(2048, "tokens per window (TinyLlama's context)")
    stride: int = setting(512, "tokens between window starts: seq_len/stride = times each token is seen")
    validation_fraction: float = setting(0.05, "share of the book held out, from its middle (2c, the scoreboard and the sample prompts need it)")
    seed: int = setting(0, "seed of the window shuffle")
    overwrite: bool = setting(False, "replace data prepared with other settings", identity=False)

    def problems(self):
        out = positive(self, "seq_len", "stride")
        if 0 < self.seq_len < 2:
            out.append(f"--seq-len must be >= 2: a {self.seq_len}-token window has no next token to learn")
        if self.stride > self.seq_len:
            out.append(f"--stride {self.stride} > --seq-len {self.seq_len} would skip text")
        if not 0 < self.validation_fraction < 0.5:
            out.append(f"--validation-fraction must be in (0, 0.5) (got {self.validation_fraction}): 2c measures the "
                       f"novel on its held-out slice; 0.05 holds out 5% of the book")
        return out


def main(argv=None):
    settings = parse_settings(Settings, argv, description=__doc__)
    project = stages.workspace_of(settings)
    pdf = models.require(stages.inputs_dir(project) / stages.NOVEL_PDF, "the novel's PDF",
                         "put the French translation there (notebook.ipynb, section 1, says where to get it)")
    base = stages.base_model_dir(project, settings.base_model)
    tokenizer = models.load_tokenizer(base)
    models.check_context(base, settings.seq_len)
    out_dir = stages.folder(stages.workspace_of(settings, claim=True), "1c")  # everything checked: its base's folder
    with lineage.StageLock(out_dir, "1c"):  # one run at a time: another one refuses
        identity = lineage.identity(settings, {"sources": {stages.NOVEL_PDF: prepared.file_digest(pdf)},
                                               "tokenizer": models.tokenizer_fingerprint(tokenizer)})
        if prepared.already_prepared(out_dir, identity, settings.overwrite):
            print(f"already prepared: {out_dir} (pass --overwrite to redo it)")
            return

        # 1. Text: positions tell headers, page numbers and paragraphs apart.
        pages = read_pdf_pages(pdf)
        text = "\n\n".join(novel_paragraphs(pages)) + "\n"

        # 2. Tokens: the whole book once, framed like a pretraining document (BOS ... EOS).
        ids = np.array(models.document_ids(tokenizer, tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]),
                       dtype=np.int32)
        train_starts, validation_starts = novel_windows(len(ids), settings.seq_len, settings.stride, settings.validation_fraction)
        if not train_starts:
            raise StageError(f"the book has {len(ids)} tokens, too few for one {settings.seq_len}-token "
                             f"training window: lower --seq-len or --validation-fraction")
        random.Random(settings.seed).shuffle(train_starts)

        # 3. Write: the windows and the text, published when complete.
        windows = lambda starts: np.array([ids[s:s + settings.seq_len] for s in starts], dtype=np.int32).reshape(-1, settings.seq_len)
        with prepared.PreparedWriter(out_dir) as writer:
            writer.add("train", windows(train_starts))
            writer.add("validation", windows(validation_starts))
            writer.add_text("clean_text.txt", text)
            writer.publish(settings, {"identity": identity, "counts": {
                "pages": len(pages), "characters": len(text), "tokens": len(ids),
                "train_windows": len(train_starts), "validation_windows": len(validation_starts)}})
        print(f"1c done: {len(train_starts)} training and {len(validation_starts)} validation windows of "
              f"{settings.seq_len} tokens from {len(ids)} tokens in {out_dir} (read {out_dir / 'clean_text.txt'}). "
              f"Next: {stages.command('2a', settings.base_model)} or {stages.command('2e', settings.base_model)} (if not "
              f"done), then {' or '.join(stages.command(s.name, settings.base_model) for s in stages.TABLE if s.data == stages.NOVEL_DATA)}")


if __name__ == "__main__":
    run(main)
