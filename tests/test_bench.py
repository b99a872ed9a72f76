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


def test_train_bench_runs_the_real_code_path_and_a_baseline_and_a_failure_is_a_row(tmp_path):
    out = run("-m", "bench.train_bench", "--tiny", "--steps", "4", "--only", "2a,2c", "--levers", "liger",
              "--out", tmp_path / "t.txt")
    table = (tmp_path / "t.txt").read_text().split("stage configuration")[1].splitlines()
    assert any(l.startswith("2c    baseline: plain Trainer + peft") for l in table)
    for stage in ("2a", "2c"):  # on CPU there is no GPU memory to report: speed is what is measured
        default = next(l for l in table if l.startswith(stage) and "default" in l)
        tokens_per_second = default.split("checkpointing)")[1].split()[1]
        assert float(tokens_per_second) > 0, default
    liger = next(l for l in table if "liger kernels" in l)  # liger-kernel is not installed here: a row with its reason
    assert "liger" in liger.lower().split("kernels", 1)[1]
    assert not any("missing or incomplete" in l for l in table)  # a failed row never takes others down
    assert "baseline: plain Trainer, bs 8" in out
