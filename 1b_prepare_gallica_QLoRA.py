"""Step 1b: Gallica books -> 250k samples of 2048 tokens for the QLoRA training (2b).

    docker exec -it kafka python 1b_prepare_gallica_QLoRA.py
    python 1b_prepare_gallica_QLoRA.py --project-dir /tmp/kafka-demo --n-samples 16 \\
        --seq-len 128 --validation-samples 4 --validation-percent 20 --min-chars 500   # tiny, CPU

Same recipe as 1a (gallica.py) on the other half of the books (a deterministic split by file_id,
so no book is in both steps), with TinyLlama's full 2048-token context: contiguous windows,
at most 32 per book (64k tokens, about one typical book). 250k x 2048 = 512M tokens (the source
curriculum says "250M samples", but its own total of 1B tokens means 250k).
Writes data/1b_gallica_qlora/{train,validation} + manifest.json.
"""
from dataclasses import dataclass

import common
import gallica


@dataclass
class Settings(gallica.GallicaSettings):
    n_samples: int = common.setting(250_000, "training samples to cut (250k x 2048 = 512M tokens)")
    seq_len: int = common.setting(2048, "tokens per sample (TinyLlama's context)")
    max_samples_per_book: int = common.setting(32, "cap per book (32 x 2048 = 64k tokens)")
    validation_samples: int = common.setting(500, "validation samples (1M tokens), from held-out books")


def main():
    settings = common.parse_settings(Settings, description=__doc__)
    gallica.prepare(settings, "1b")


if __name__ == "__main__":
    common.run(main)
