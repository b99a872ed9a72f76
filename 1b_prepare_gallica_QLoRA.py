"""Step 1b: Gallica books -> 250k samples of 2048 tokens for the QLoRA training (2b).

    docker exec -it kafka python 1b_prepare_gallica_QLoRA.py
    python 1b_prepare_gallica_QLoRA.py --project-dir /tmp/kafka-demo --n-samples 16 \\
        --seq-len 128 --validation-samples 4 --validation-percent 20 --min-chars 500   # tiny, CPU

Same recipe as 1a (chateau/gallica.py) on the other half of the books (a deterministic split by file_id,
so no book is in both steps), with TinyLlama's full 2048-token context: contiguous windows,
at most 32 per book (64k tokens, about one typical book). 250k x 2048 = 512M tokens (the source
curriculum says "250M samples", but its own total of 1B tokens means 250k).
Writes data/1b_gallica_qlora/{train,validation} + manifest.json.
"""
from chateau import gallica
from chateau.cli import parse_settings, run

# The settings (defaults = the curriculum's 250k x 2048 tokens) live in the library: the download
# planner and the prepare benchmark size the corpus from them.
Settings = gallica.Settings1b


def main(argv=None):
    settings = parse_settings(Settings, argv, description=__doc__)
    gallica.prepare(settings, "1b")


if __name__ == "__main__":
    run(main)
