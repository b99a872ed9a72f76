"""The whole curriculum on CPU in about a minute, on tiny inputs of the real formats
(dev/fixtures.py): the way to see the pipeline work without a GPU or any download.

    ./dev/run demo                 # sets up .venv if missing, then this, in /tmp/kafka-demo
    python -m dev.demo /path/dir   # elsewhere (from the repository root, in the venv)

Runs the very scripts the real run uses, with the fixtures' tiny settings, and prints each
stage's validation loss before and after, a generated sample, then the continuation
(3_continue_kafka.py) and the scoreboard.
"""
import json
import os
import shutil
import sys
import time
from pathlib import Path

from chateau import scoreboard, stages
from dev import fixtures
from dev.runner import ScriptFailed, run_script, scoreboard_settings


def main():
    os.environ.setdefault("KAFKA_DEVICE", "cpu")  # on purpose, for every step and the scoreboard, GPU or not
    project = Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/kafka-demo")
    shutil.rmtree(project, ignore_errors=True)
    began = time.time()
    fixtures.build_project(project)
    print(f"tiny inputs in {project}: a locally trained French tokenizer, a 2-layer TinyLlama-shaped model, "
          f"Gallica parquet files, a PDF novel with headers and page numbers")
    try:
        for script, flags in fixtures.TINY_STEPS:
            out = run_script(project, script, *flags)
            print(f"\n== {script}")
            print("\n".join(l for l in out.stdout.splitlines() if l[:3] in ("1a ", "1b ", "1c ", "2a:", "2b:", "2c:")
                            or " done:" in l))
            samples = stages.folder(project, stages.stage_of_script(script)) / "samples.jsonl"
            if samples.exists():
                print(f"   sample: {json.loads(samples.read_text().splitlines()[-1])['text'][:200]!r}")
        print("\n== 3_continue_kafka.py")
        run_script(project, "3_continue_kafka.py", *fixtures.TINY_CONTINUE)
    except ScriptFailed as failed:
        raise SystemExit(str(failed))
    continuation = (project / "output" / "continuation_2c.md").read_text().split("\n---\n", 1)[1]
    print(f"   {continuation.strip()[:300]!r} ...\n   (a 100k-parameter model trained for seconds: the words are French-shaped, not yet French)")

    print("\n== scoreboard (output/scoreboard.json)")
    print(scoreboard.format_table(scoreboard.build(project, scoreboard_settings("tiny"))))
    print(f"\nthe curriculum ran in {time.time() - began:.0f} s; outputs under {project}")


if __name__ == "__main__":
    main()
