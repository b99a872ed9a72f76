"""The whole curriculum on CPU in ~2 minutes, on tiny inputs of the real formats (fixtures.py):
the way to see the pipeline work without a GPU or any download.

    python demo.py                 # scratch project in /tmp/kafka-demo
    python demo.py /path/to/dir    # elsewhere

Runs the very scripts the real run uses, with tiny settings (below), and prints each stage's
validation loss before and after, a generated sample, then the continuation (3_continue_kafka.py)
and the scoreboard.
"""
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
TRAIN_COMMON = ["--warmup-steps", "3", "--eval-steps", "20", "--save-steps", "20", "--logging-steps", "10",
                "--max-eval-samples", "32", "--sample-steps", "0", "--sample-new-tokens", "40"]
# (script, tiny flags): sizes shrunk, rates raised so that a 100k-parameter model learns in seconds.
STEPS = [
    ("1a_prepare_gallica_fullweight.py", ["--n-samples", "96", "--seq-len", "64", "--max-samples-per-book", "24",
                                          "--validation-samples", "12", "--validation-percent", "25", "--min-chars", "500"]),
    ("1b_prepare_gallica_QLoRA.py", ["--n-samples", "40", "--seq-len", "128", "--max-samples-per-book", "8",
                                     "--validation-samples", "6", "--validation-percent", "25", "--min-chars", "500"]),
    ("1c_prepare_kafka.py", ["--seq-len", "128", "--stride", "32"]),
    ("2a_train_gallica_fullweight.py", ["--max-steps", "40", "--batch-size", "8", "--grad-accum", "1", "--lr", "3e-3"] + TRAIN_COMMON),
    ("2b_train_gallica_QLoRA.py", ["--max-steps", "30", "--batch-size", "4", "--grad-accum", "1", "--lr", "1e-2",
                                   "--lora-r", "8", "--lora-alpha", "16"] + TRAIN_COMMON),
    ("2c_train_kafka_QLoRA.py", ["--batch-size", "2", "--grad-accum", "1", "--lr", "1e-2"] + TRAIN_COMMON),
]


CONTINUE = ["--new-tokens", "300", "--context-tokens", "128", "--chunk-tokens", "64"]


def script_env(project):
    env = dict(os.environ, KAFKA_PROJECT_DIR=str(project), HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               PYTHONWARNINGS="ignore")
    env.setdefault("HF_HOME", str(Path(project) / ".hf_home"))  # datasets' cache stays in the scratch folder
    return env


def run_step(project, script, flags, quiet=False):
    cmd = [sys.executable, str(HERE / script), "--project-dir", str(project), *flags]
    out = subprocess.run(cmd, env=script_env(project), cwd=HERE, text=True, capture_output=True)
    if out.returncode != 0:
        sys.stderr.write(out.stdout[-4000:] + out.stderr[-4000:])
        raise SystemExit(f"{script} failed with exit code {out.returncode}")
    return out


def main():
    project = Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/kafka-demo")
    shutil.rmtree(project, ignore_errors=True)
    began = time.time()
    import common
    import fixtures
    fixtures.build_project(project)
    print(f"tiny inputs in {project}: a locally trained French tokenizer, a 2-layer TinyLlama-shaped model, "
          f"Gallica parquet files, a PDF novel with headers and page numbers")
    for script, flags in STEPS:
        out = run_step(project, script, flags)
        print(f"\n== {script}")
        print("\n".join(l for l in out.stdout.splitlines() if l[:3] in ("1a ", "1b ", "1c ", "2a:", "2b:", "2c:")
                        or " done:" in l))
        samples = project / common.MODELS.get(script[:2], "-") / "samples.jsonl"
        if samples.exists():
            print(f"   sample: {json.loads(samples.read_text().splitlines()[-1])['text'][:200]!r}")
    print("\n== 3_continue_kafka.py")
    run_step(project, "3_continue_kafka.py", CONTINUE)
    continuation = (project / "output" / "continuation_2c.md").read_text().split("\n---\n", 1)[1]
    print(f"   {continuation.strip()[:300]!r} ...\n   (a 100k-parameter model trained for seconds: the words are French-shaped, not yet French)")

    print("\n== scoreboard (output/scoreboard.json)")
    import generation
    import scoreboard
    rows = scoreboard.build(project, n_samples=4, sampling=generation.Sampling(new_tokens=60), max_eval_samples=16)
    print(scoreboard.format_table(rows))
    print(f"\nthe curriculum ran in {time.time() - began:.0f} s; outputs under {project}")


if __name__ == "__main__":
    main()
