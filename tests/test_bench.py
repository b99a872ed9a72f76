"""The benchmarks run (tiny mode, CPU) and print the numbers they promise; no timing is asserted."""
import subprocess
import sys

from conftest import ROOT


def run(*args):
    out = subprocess.run([sys.executable, *map(str, args)], cwd=ROOT, text=True, capture_output=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def test_prepare_bench_prints_throughputs_ratio_and_memory():
    out = run("-m", "bench.prepare_bench", "--tiny")
    for label in ("bare tokenizer", "prepare step (1a)", "ratio prepare / bare", "peak RSS", "(10x)"):
        assert label in out


def test_train_bench_runs_the_real_code_path_and_a_baseline():
    out = run("-m", "bench.train_bench", "--tiny", "--steps", "4", "--only", "2c")
    table = out.split("stage configuration")[1].splitlines()
    assert any(l.startswith("2c    baseline: plain Trainer + peft") for l in table)
    default = next(l for l in table if "default (bs 2, checkpointing)" in l)
    peak_gib, tokens_per_second = default.split("checkpointing)")[1].split()[:2]
    assert float(peak_gib) > 0 and float(tokens_per_second) > 0  # memory and speed were measured
