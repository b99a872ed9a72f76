"""Step 1a: Gallica books -> 1M samples of 512 tokens for the full-weight training (2a).

    docker exec -it kafka python 1a_prepare_gallica_fullweight.py
    python 1a_prepare_gallica_fullweight.py --project-dir /tmp/kafka-demo --n-samples 40 \\
        --seq-len 64 --validation-samples 8 --validation-percent 20 --min-chars 500   # tiny, CPU

Reads every parquet file under /project/datasets/French-PD-Books (streamed: memory stays flat),
keeps this step's half of the books (1b gets the other half, by file_id hash), skips books with
OCR quality below --min-ocr, non-French or tiny texts, cleans the OCR, tokenizes each book once
and cuts 512-token samples, at most 128 per book (64k tokens, about 3/4 of a typical 88k-token
book) so that the 1M samples (512M tokens) come from >= 7.8k books, none above 0.013% of them. Whole books are held out for validation.
Writes data/1a_gallica_fullweight/{train,validation} + manifest.json. The recipe is chateau/gallica.py's.
"""
from chateau import gallica
from chateau.cli import parse_settings, run

# The settings (defaults = the curriculum's 1M x 512 tokens) live in the library: the download
# planner and the prepare benchmark size the corpus from them.
Settings = gallica.Settings1a


def main(argv=None):
    settings = parse_settings(Settings, argv, description=__doc__)
    gallica.prepare(settings, "1a")


if __name__ == "__main__":
    run(main)
