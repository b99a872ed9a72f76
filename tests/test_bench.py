"""The benchmarks run (tiny mode, CPU) and print the numbers they promise; no timing is asserted.
The train bench's budget: every planned row comes back, measured or skipped with its reason."""
import re
import subprocess
import sys

import pytest
import torch

from bench import train_bench
from conftest import ROOT


def run(*args):
    """A benchmark in its own process: it measures its own peak RSS, which the test process's would spoil."""
    out = subprocess.run([sys.executable, *map(str, args)], cwd=ROOT, text=True, capture_output=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def test_prepare_bench_prints_throughputs_ratio_and_memory():
    out = run("-m", "bench.prepare_bench", "--tiny")
    for label in ("bare tokenizer", "prepare step (1a)", "ratio prepare / bare", "peak RSS", "(10x)"):
        assert label in out


def cells(line, label):
    """(peak GiB, tokens/s, MFU, x base, loss, note) of a table line whose configuration is `label`."""
    peak, tps, mfu, ratio, loss, *note = line.split(label, 1)[1].split()
    return peak, tps, mfu, ratio, loss, " ".join(note)


def test_train_bench_runs_the_real_code_path_and_a_baseline_and_a_failure_is_a_row(tmp_path, capsys):
    # A budget no busy CPU exhausts: the budget's own paths are the tests below.
    # 2a and 2b: the two recipes (2c is 2b's recipe continued, and would need a 2b adapter made first).
    train_bench.main(["--tiny", "--steps", "4", "--only", "2a,2b", "--levers", "liger,bf16", "--budget-s", "3600",
                      "--out", str(tmp_path / "t.txt")])
    out = capsys.readouterr().out
    text = (tmp_path / "t.txt").read_text()
    table = text.split("stage configuration")[1].splitlines()
    for stage in ("2a", "2b"):  # on CPU there is no GPU memory to report: speed and the loss are what is measured
        default = next(l for l in table if l.startswith(stage) and "default" in l)
        peak, tps, mfu, ratio, loss, note = cells(default, "checkpointing)")
        assert tps != "-" and float(tps) > 0 and float(loss) > 0 and float(ratio) > 0, text  # x baseline: the baseline ran
        baseline = next(l for l in table if l.startswith(f"{stage}    baseline: plain Trainer"))
        peak, tps, mfu, ratio, loss, note = cells(baseline, re.search(r"baseline: .*?, bs \d+", baseline).group(0))
        assert tps != "-" and float(tps) > 0 and float(loss) > 0, text
        assert "paged_adamw_8bit unpaged" in note, text  # on CPU bitsandbytes does not page: the row says so
    assert any(l.startswith("2b    baseline: plain Trainer + peft, bs 2") for l in table)
    # --upcast-norms false on CPU, where the compute is fp32 anyway: the same numbers, the same loss.
    default_loss = cells(next(l for l in table if l.startswith("2b") and "default" in l), "checkpointing)")[4]
    bf16 = next(l for l in table if l.startswith("2b") and l.split(None, 1)[1].startswith("bf16 residual stream"))
    assert cells(bf16, "bf16 residual stream")[4] == default_loss, text
    liger = next(l for l in table if "liger kernels" in l)  # liger-kernel is not installed here: a row with its reason
    assert "liger" in liger.lower().split("kernels", 1)[1]
    assert not any("missing or incomplete" in l for l in table)  # a failed row never takes others down
    assert "baseline: plain Trainer, bs 8" in out and "set-up took" in out


def test_train_bench_runs_the_7b_path_at_a_tiny_mistral_shape(tmp_path, capsys):
    """2e and 2f, the path of a base whose full weights do not fit 12 GB: the scripts themselves
    with --base-model in that base's workspace, on a Mistral-architecture model (tiny, on CPU);
    2e's default row leaves the adapter 2f continues, and 2f trains with its merge off."""
    train_bench.main(["--tiny", "--steps", "4", "--only", "2e,2f", "--levers", "none", "--budget-s", "3600",
                      "--out", str(tmp_path / "t.txt")])
    out = capsys.readouterr().out
    header, body = (tmp_path / "t.txt").read_text().split("stage configuration")
    table = body.splitlines()[1:]
    assert "a tiny Mistral for 2e, 2f" in header and [l[:2] for l in table] == ["2e", "2f"], body
    for line in table:
        peak, tps, mfu, ratio, loss, note = cells(line, "checkpointing)")
        assert float(tps) > 0 and float(loss) > 0, body  # measured, not skipped: the 2f row continued 2e's adapter
    assert "--merge false: training only" in table[1]  # the 2f row times training, not the 7B merge
    assert "2e's default row leaves the adapter 2f continues" in out


def test_without_a_gpu_the_7b_rows_are_listed_with_their_reason(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a GPU machine measures them")
    train_bench.main(["--only", "2e,2f", "--budget-s", "3600", "--out", str(tmp_path / "t.txt")])  # not --tiny
    table = (tmp_path / "t.txt").read_text().split("stage configuration")[1].strip().splitlines()[1:]
    assert [l.split(None, 1)[0] for l in table] == ["2e", "2f", "2e", "2e"]  # defaults, then 2e's levers; no baseline
    assert all("skipped: needs a GPU (a 4-bit 7B model" in l for l in table)


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def measured_in(clock, seconds):
    """A measurement that takes `seconds[stage]` on the fake clock."""
    def measure(stage, label, flags):
        clock.now += seconds[stage]
        return train_bench.Row(stage, label, 100.0, None, "")
    return measure


PLANNED = train_bench.plan(list(train_bench.BENCHED))
COST = {stage: train_bench.flops_per_step(train_bench.REAL, stage) for stage in train_bench.BENCHED}
SECONDS = {"2a": 10.0, "2b": 40.0, "2c": 40.0, "2e": 60.0, "2f": 60.0}


@pytest.mark.parametrize("budget, measured, first_skipped", [
    (0, 0, 0),                                   # spent before 2a (by the set-up)
    (10 + 40 + 5, 2, 2),                         # runs out between 2b's and 2c's defaults
    (10 + 40 + 40 + 60 + 60 + 10 + 40 + 40 + 10 + 5, 9, 9),  # defaults (2e, 2f too) and baselines, one lever, then out
])
def test_every_planned_row_comes_back_whatever_the_budget(budget, measured, first_skipped):
    clock = FakeClock()
    rows = train_bench.run_rows(PLANNED, budget, measured_in(clock, SECONDS), COST, clock=clock)
    assert [(r.stage, r.label) for r in rows] == [(s, label) for s, label, _ in PLANNED]  # every row, in order
    done = [r for r in rows if not r.note.startswith("skipped")]
    assert len(done) == measured and all(r.note.startswith("skipped") for r in rows[first_skipped:first_skipped + 1])
    for row in rows:
        assert row.tokens_per_second or "skipped: " in row.note  # a reason for each row not measured
    assert clock.now <= max(budget, 0) + 1e-9  # no row was started that the budget could not hold


def test_a_stage_never_timed_is_estimated_from_the_others_by_flops():
    # 2a timed at 10 s; 2c not yet: its estimate is 10 s x (2c's FLOPs per step / 2a's), never a KeyError.
    assert train_bench.estimate_seconds("2c", {"2a": 10.0}, COST) == pytest.approx(10.0 * COST["2c"] / COST["2a"])
    assert train_bench.estimate_seconds("2c", {}, COST) is None


def test_a_row_that_raises_is_a_row_and_the_table_goes_on():
    clock = FakeClock()

    def measure(stage, label, flags):
        if stage == "2b":
            raise RuntimeError("boom")
        return train_bench.Row(stage, label, 1.0, None, "")
    rows = train_bench.run_rows(PLANNED, 1000, measure, COST, clock=clock)
    assert len(rows) == len(PLANNED) and any("failed: RuntimeError: boom" in r.note for r in rows if r.stage == "2b")


def test_train_bench_with_its_budget_spent_at_set_up_prints_every_row_and_exits_0(tmp_path, capsys):
    out_file = tmp_path / "t.txt"
    train_bench.main(["--tiny", "--budget-s", "0", "--out", str(out_file)])
    table = out_file.read_text().split("stage configuration")[1].strip().splitlines()[1:]
    assert len(table) == len(PLANNED) and all("skipped: the budget is spent" in line for line in table)
    assert {line.split(None, 1)[0] for line in table} == set(train_bench.BENCHED)  # 2e and 2f listed too
    assert "set-up took" in capsys.readouterr().out


def test_qlora_memory_the_bf16_residual_stream_is_bf16_and_smaller():
    """`--upcast-norms false` with the GPU's bf16 compute (bench.qlora_memory runs the recipe's own
    qlora_model so): the decoder layers' outputs are bf16 (fp32 with peft's upcast), and every
    measured step's activation peak is lower."""
    out = run("-m", "bench.qlora_memory", "--tiny")
    peaks = {}
    for upcast, dtype in (("true", "float32"), ("false", "bfloat16")):
        lines = [l for l in out.splitlines() if l.startswith(f"--upcast-norms {upcast}: ") and "residual stream" in l]
        assert len(lines) == 1 and f"residual stream {dtype}," in lines[0], out
        peaks[upcast] = [float(re.search(r"activation peak ([\d.]+) MiB", l).group(1)) for l in lines]
    assert all(0 < bf16 < fp32 for fp32, bf16 in zip(peaks["true"], peaks["false"])), peaks
