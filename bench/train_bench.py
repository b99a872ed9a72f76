"""Training benchmark: each stage's real code path at its base's real shape, on synthetic data.

    python -m bench.train_bench --memory-cap-gib 12            # on a GPU: ~10 minutes, every variant
    python -m bench.train_bench --memory-cap-gib 12 --only 2e,2f   # the 7B path alone (~5 minutes)
    python -m bench.train_bench --tiny                         # CPU, a few minutes: checks the script runs

Builds the real TinyLlama_v1.1 shape from config (hidden 2048, 22 layers, 32 heads / 4 KV heads,
intermediate 5632, vocab 32000, 2048 positions; random bf16 weights: no download) in a scratch
project with synthetic prepared data, then runs the train scripts themselves (2a at 512 tokens,
2b and 2c at 2048 with the 4-bit base and LoRA) for --steps steps per variant, and as the
baseline what a competent user writes for 12 GB (bench/plain_trainer.py): a plain HF Trainer with
bf16=True, paged 8-bit AdamW and gradient checkpointing (+ peft's default 4-bit LoRA for 2b/2c) at
the same shapes. Beside them, the path of a base whose full weights do not fit 12 GB: 2e and 2f
(QLoRA on the 4-bit base itself, 8 x 512 tokens, LoRA r 16) at Mistral-7B-v0.1's real shape
(hidden 4096, 32 layers, 32 heads / 8 KV heads, intermediate 14336, vocab 32000, sliding window
4096; random weights built in bf16 on the GPU and written once, 14.5 GB on disk, never an fp32
copy), in that base's own workspace (--base-model models/Mistral-7B-v0.1, as a user runs it).
The 2f row trains with --merge false: it times training only (the 7B merge runs on the CPU,
minutes, and is not what the row measures). No baseline row for 2e/2f (the 2b/2c baselines
compare the recipe; a 7B plain-Trainer run would spend a minute of the budget per batch it
tries). With --tiny, 2e/2f run on the CPU at a tiny Mistral shape; on a CPU without --tiny their
rows are skipped (a 4-bit 7B model needs a GPU).

Prints per run: peak memory (torch.cuda.max_memory_reserved, with the container's
expandable_segments allocator), tokens/s after warm-up, MFU, ratio to the baseline, and the
training loss of the last step (same data and seed
in every row of a stage at the same batch: a lever that changes the numerics shows it there; the
baseline trains at the Trainer's default learning rate, so its loss is not one to compare).
--memory-cap-gib caps each run (bench/capped.py) so a big card behaves like a 12 GB one.

MFU = tokens/s x FLOPs per token / peak FLOP/s. FLOPs per token (forward + backward, PaLM's
count): full weights 6N + 12·L·d·T; LoRA on a frozen base 4N + 12·L·d·T (no weight gradients for
the base; LoRA's own FLOPs are <3% and left out). N = non-embedding parameters + the LM head
(the embedding lookup costs no FLOPs), L layers, d hidden size, T sequence length. The recompute
of gradient checkpointing is not counted (MFU, not HFU).
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

from chateau import memory_plan, models, stages, training
from dev import fixtures
from dev.runner import ROOT, profile, run_script, script_env

REAL = dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
            num_key_value_heads=4, vocab_size=32000, max_position_embeddings=2048)
TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=512, max_position_embeddings=2048)
# Mistral-7B-v0.1 (chateau.memory_plan's copy of its config.json; "sliding_window" makes it a
# MistralConfig), and the same architecture at the tiny shape for --tiny.
MISTRAL_7B = {k: v for k, v in memory_plan.MISTRAL_7B_V0_1.items() if k != "tie_word_embeddings"}
TINY_MISTRAL = dict(TINY, sliding_window=4096, rms_norm_eps=1e-5, rope_theta=10000.0)
ON_BASE = ("2e", "2f")  # the stages benched at the 7B base's shape, in its workspace
BASE_7B = "models/Mistral-7B-v0.1"  # its folder, as chateau/downloads.py's BASES names it (--base-model)
# Dense bf16 tensor-core peaks (FLOP/s) used for MFU, from the vendors' data sheets.
PEAKS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "RTX 3090": 71e12, "RTX 4090": 165e12, "cpu": None}
# The curriculum's default path, then the 7B path (2e, 2f); 2d is 2a's recipe at 2a's shape.
BENCHED = ("2a", "2b", "2c", "2e", "2f")
BASELINED = ("2a", "2b", "2c")  # the stages with a plain-Trainer baseline row
SEQ = {"2a": 512, "2b": 2048, "2c": 2048, "2e": 512, "2f": 512}
DEFAULT_BATCH = {"2a": 8, "2b": 2, "2c": 2, "2e": 8, "2f": 8}  # the steps' default --batch-size, also the baseline's first try
# The run profile each stage reads (profiles/bench/): 2e and 2f read those of the same recipe's rows.
PROFILE = {"2e": "2b", "2f": "2c"}
# (stage, label, flags): every lever measured against the stage's defaults. Batch sizes are per GPU.
VARIANTS = [
    ("2a", "default (bs 8, checkpointing)", []),
    ("2a", "bs 16", ["--batch-size", "16"]),
    ("2a", "no checkpointing, bs 4", ["--gradient-checkpointing", "false", "--batch-size", "4"]),
    ("2a", "torch.compile", ["--torch-compile"]),
    ("2a", "liger kernels", ["--liger-kernel"]),       # needs `pip install liger-kernel`: a row with its reason if not
    ("2b", "default (bs 2, checkpointing)", []),
    # The residual stream in bf16: no fp32 norms, embedding and head (peft's upcast), as Unsloth does;
    # the loss column shows whether it changes what is learned.
    ("2b", "bf16 residual stream", ["--upcast-norms", "false"]),
    ("2b", "bs 4", ["--batch-size", "4"]),
    ("2b", "bs 4, bf16 residual stream", ["--batch-size", "4", "--upcast-norms", "false"]),
    ("2b", "no checkpointing, bs 1", ["--gradient-checkpointing", "false", "--batch-size", "1"]),
    ("2b", "liger kernels", ["--liger-kernel"]),
    ("2c", "default (bs 2, checkpointing)", []),
    ("2c", "bf16 residual stream", ["--upcast-norms", "false"]),  # continuing an adapter trained with fp32 norms
    ("2e", "default (bs 8, checkpointing)", []),
    ("2e", "bf16 residual stream", ["--upcast-norms", "false"]),  # ~1.5 GiB less at 7B (docs/performance.md)
    ("2e", "bs 4", ["--batch-size", "4"]),                        # the fallback if 8 x 512 does not fit 12 GiB
    ("2f", "default (bs 8, checkpointing)", ["--merge", "false"]),  # training only: the 7B merge runs on the CPU
]
ROW_NOTE = {"2f": "--merge false: training only (the 7B merge runs on the CPU)"}


def flops_per_token(shape, seq_len, lora):
    d, L, f, v = shape["hidden_size"], shape["num_hidden_layers"], shape["intermediate_size"], shape["vocab_size"]
    kv = d // shape["num_attention_heads"] * shape["num_key_value_heads"]
    n = L * (2 * d * d + 2 * d * kv + 3 * d * f) + d * v  # attention + MLP matrices, and the LM head
    return (4 if lora else 6) * n + 12 * L * d * seq_len


def lora(stage):
    return stages.stage(stage).recipe == "qlora"


def shape_of(stage, tiny=False):
    """The model shape a stage is benched at: Mistral-7B's for the 7B path (2e, 2f), else TinyLlama's."""
    if stage in ON_BASE:
        return TINY_MISTRAL if tiny else MISTRAL_7B
    return TINY if tiny else REAL


def base_of(stage):
    """The --base-model of a stage's rows (its workspace: stages.workspace)."""
    return BASE_7B if stage in ON_BASE else stages.BASE_MODEL


def flops_per_step(shape, stage):
    """FLOPs of one micro-step of `stage` at its default batch: what scales one stage's measured
    time into an estimate for another that has not run yet."""
    return flops_per_token(shape, SEQ[stage], lora(stage)) * SEQ[stage] * DEFAULT_BATCH[stage]


def random_model(shape):
    """A causal LM of `shape` (a Llama, or a Mistral when it has a sliding window) with random
    weights, built in bf16 where it will be written: on the GPU when there is one (Mistral-7B's
    14.5 GB initialised there in a second, never as a 29 GB fp32 copy), else on the CPU."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig, MistralConfig
    config_class = MistralConfig if "sliding_window" in shape else LlamaConfig
    config = config_class(**shape, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2)
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        return AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)


def build_project(project, shape, n_train, base_model=stages.BASE_MODEL, data=("1a", "1b", "1c"), with_2a=True):
    """A scratch project: the base model `base_model` (random bf16 weights at `shape`), 2a output
    (`with_2a`: 2b and 2c start from it), prepared data for `data` in the base's workspace
    (stages.workspace) written as the prepare steps write it (their Settings, PreparedWriter's
    manifest). 1c's windows are cut from a random token stream of ~`n_train` samples exactly as 1c
    cuts the novel's (2c, 2f rebuild the text from them and train on it in passes), with the text
    decoded beside them."""
    import gc
    import random

    import numpy as np
    import torch

    from chateau import prepared, windows
    from dev.runner import script_module
    workspace = stages.claim_workspace(project, base_model)
    base = stages.base_model_dir(project, base_model)
    tokenizer = fixtures.build_tokenizer(base)
    model = random_model(shape)
    model.save_pretrained(base, max_shard_size="5GB")  # shard by shard: a 7B model never held twice in RAM
    if with_2a:
        two_a = stages.folder(workspace, "2a")
        model.save_pretrained(two_a, max_shard_size="5GB")
        tokenizer.save_pretrained(two_a)
        (two_a / "metrics.json").write_text("{}")
    del model
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()  # the rows run in their own processes, under their own cap
    rng = np.random.default_rng(0)
    identity = {"inputs": {"tokenizer": models.tokenizer_fingerprint(tokenizer)}}
    for stage, seq in (("1a", 512), ("1b", 2048), ("1c", 2048)):
        if stage not in data:
            continue
        settings = script_module(stages.script_of(stage)).Settings(seq_len=seq)
        with prepared.PreparedWriter(stages.folder(workspace, stage)) as writer:
            if stage == stages.NOVEL_DATA:
                ids = rng.integers(3, len(tokenizer), size=(n_train + 2) * seq, dtype=np.int32)
                train, held_out = windows.novel_windows(len(ids), seq, settings.stride, settings.validation_fraction)
                random.Random(settings.seed).shuffle(train)
                writer.add("train", np.stack([ids[s:s + seq] for s in train]))
                writer.add("validation", np.stack([ids[s:s + seq] for s in held_out]))
                writer.add_text("clean_text.txt", tokenizer.decode(ids.tolist()))
                counts = {"tokens": len(ids), "train_windows": len(train), "validation_windows": len(held_out)}
            else:
                writer.add("train", rng.integers(3, len(tokenizer), size=(n_train, seq), dtype=np.int32))
                writer.add("validation", rng.integers(3, len(tokenizer), size=(4, seq), dtype=np.int32))
                counts = {"train": n_train, "validation": 4}
            writer.publish(settings, {"identity": identity, "counts": counts})


def scratch_copy(prepared_project, scratch, stage=None, base_model=stages.BASE_MODEL):
    """A variant's own project: the prepared starting point hard-linked (instant, no disk), without
    the folder the variant writes (its files would be truncated in place through the links), so no
    variant can damage the starting point or another variant."""
    import shutil
    shutil.rmtree(scratch, ignore_errors=True)
    own = stages.folder(stages.workspace(prepared_project, base_model), stage) if stage else None
    shutil.copytree(prepared_project, scratch, copy_function=os.link,
                    ignore=lambda folder, names: [n for n in names if Path(folder) / n == own])
    return scratch


def last_training_loss(project, stage):
    """The training loss of a step's last logged step (its TensorBoard logs), or None. `project`:
    the stage's workspace."""
    from chateau import monitor
    points = monitor.read_scalars(project / "runs" / stages.stage(stage).run_name).get("train/loss")
    return points[-1][1] if points else None


def run_stage(project, stage, flags, steps, cap):
    """One run of a train script, on its base (base_of: --base-model for the 7B path); returns
    (tokens/s after warm-up, peak GiB, note, last training loss)."""
    batch = next((int(flags[i + 1]) for i, f in enumerate(flags) if f == "--batch-size"), DEFAULT_BATCH[stage])
    base = [] if base_of(stage) == stages.BASE_MODEL else ["--base-model", base_of(stage)]
    # One micro-step per optimizer step: the row's batch is what is measured.
    common_flags = [*profile("bench", PROFILE.get(stage, stage)), *base, "--max-steps", str(steps),
                    "--tokens-per-step", str(batch * SEQ[stage])]
    out = run_script(project, stages.script_of(stage), *common_flags, *flags, check=False,
                     python=(sys.executable, "-m", "bench.capped", str(cap or 0)))
    if out.returncode != 0:
        lines = out.stderr.strip().splitlines() or ["failed"]
        return None, None, "out of memory" if "out of memory" in out.stderr.lower() else lines[-1][:100], None
    workspace = stages.workspace(project, base_of(stage))
    metrics = json.loads((stages.folder(workspace, stage) / "metrics.json").read_text())
    tps = training.tokens_per_second(metrics["step_end_times"], metrics["tokens_per_step"], warmup=max(2, steps // 4))
    return (tps, metrics["peak_memory_gib"] if metrics["device"] == "cuda" else None, ROW_NOTE.get(stage, ""),
            last_training_loss(workspace, stage))


def run_baseline(project, stage, batch_size, steps, cap):
    """The plain recipe a user writes for 12 GB (bench/plain_trainer.py), in its own process; returns
    (batch size, tokens/s, peak GiB, note, last training loss). Out of memory under the cap:
    recorded, then retried at half the batch until one fits."""
    notes = []
    while batch_size >= 1:
        out = subprocess.run([sys.executable, "-m", "bench.plain_trainer", str(project), stage, str(batch_size), str(steps),
                              str(cap or 0)], env=script_env(project), cwd=ROOT, text=True, capture_output=True)
        lines = [l for l in out.stdout.splitlines() if l.startswith("RESULT ")]
        if lines and lines[0] == "RESULT OOM":
            notes.append(f"bs {batch_size}: out of memory")
            batch_size //= 2
            continue
        if not lines:
            return batch_size, None, None, "; ".join(notes + [(out.stderr.strip().splitlines() or ["failed"])[-1][:100]]), None
        result = json.loads(lines[0][len("RESULT "):])
        note = "; ".join(notes + ([result["note"]] if result["note"] else []))
        return batch_size, result["tokens_per_second"], result["peak_gib"], note, result["loss"]
    return 0, None, None, "; ".join(notes), None


def plan(chosen, lever_filter=""):
    """Rows in priority order: each stage's default first, then the baselines (the ratio needs
    them), then the levers (those whose label contains one of `lever_filter`'s comma-separated
    words; all when empty). (stage, label, flags) with flags None for a baseline."""
    wanted = [w for w in lever_filter.split(",") if w]
    defaults = [(s, label, flags) for s, label, flags in VARIANTS if s in chosen and label.startswith("default")]
    baselines = [(s, "baseline", None) for s in chosen if s in BASELINED]
    levers = [(s, label, flags) for s, label, flags in VARIANTS if s in chosen and not label.startswith("default")
              and (not wanted or any(w in label for w in wanted))]
    return defaults + baselines + levers


class Row(NamedTuple):
    stage: str
    label: str
    tokens_per_second: float | None
    peak_gib: float | None
    note: str
    loss: float | None = None  # the training loss of the last step


def estimate_seconds(stage, took, cost):
    """Seconds a row of `stage` is expected to take: the longest row of that stage so far; for a
    stage not timed yet, the timed stages' rows scaled by FLOPs per step (`cost`: {stage: FLOPs});
    None when nothing has been timed (the first row is always tried while there is budget)."""
    if stage in took:
        return took[stage]
    known = [seconds * cost[stage] / cost[other] for other, seconds in took.items()]
    return max(known) if known else None


def run_rows(planned, deadline, measure, cost, clock=time.time, after_row=None):
    """Every planned (stage, label, flags) ends as one Row: measured by `measure(stage, label,
    flags)` (-> Row), or skipped with its reason when the budget (`deadline`, on `clock`) cannot
    hold it; a row whose measurement raises is a row with the error. Never stops early: the whole
    table always comes back. `after_row(rows)` after each row (the table is rewritten)."""
    rows, took = [], {}
    for stage, label, flags in planned:
        left = deadline - clock()
        need = estimate_seconds(stage, took, cost)
        if left <= 0:
            rows.append(Row(stage, label, None, None, "skipped: the budget is spent"))
        elif need is not None and need > left:
            rows.append(Row(stage, label, None, None, f"skipped: ~{need:.0f} s needed, {left:.0f} s left"))
        else:
            started = clock()
            try:
                rows.append(measure(stage, label, flags))
            except Exception as error:  # noqa: BLE001 - a failed row is a row, never the end of the table
                rows.append(Row(stage, label, None, None, f"failed: {type(error).__name__}: {str(error)[:80]}"))
            took[stage] = max(took.get(stage, 0.0), clock() - started)
        if after_row:
            after_row(rows)
    return rows


def format_rows(rows, shapes, peak_flops):
    """The table; `shapes`: {stage: the model shape it ran at} (MFU)."""
    lines = [f"{'stage':5} {'configuration':38} {'peak GiB':>8} {'tokens/s':>9} {'MFU':>6} {'x base':>6} {'loss':>7}  note"]
    for stage, label, tps, peak, note, loss in rows:
        base_tps = next((r.tokens_per_second for r in rows if r.stage == stage and r.label.startswith("baseline")), None)
        mfu = tps * flops_per_token(shapes[stage], SEQ[stage], lora(stage)) / peak_flops if tps and peak_flops else None
        cell = lambda x, spec, width: format(x, spec) if x is not None else "-".rjust(width)
        lines.append(f"{stage:5} {label:38} {cell(peak, '8.2f', 8)} {cell(tps, '9.0f', 9)} "
                     f"{cell(mfu and 100 * mfu, '5.1f', 5)}% {cell(tps and base_tps and tps / base_tps, '6.2f', 6)} "
                     f"{cell(loss, '7.4f', 7)}  {note}")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="tiny model on CPU: checks the script runs")
    parser.add_argument("--steps", type=int, default=12, help="optimizer steps per run (warm-up: the first quarter)")
    parser.add_argument("--memory-cap-gib", type=float, default=None, help="cap GPU memory, e.g. 12")
    parser.add_argument("--only", default="", help="comma-separated stages to run (default: all)")
    parser.add_argument("--levers", default="", help="comma-separated words: only the levers whose label has one (default: all)")
    parser.add_argument("--budget-s", type=float, default=480,
                        help="seconds for the whole run, set-up included: rows that would not fit are skipped "
                             "(with their reason), never cut off (one 600 s command, with margin)")
    parser.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "train_bench.txt",
                        help="the table, rewritten after every row (on the lent GPU: $OUT/train_bench.txt)")
    args = parser.parse_args(argv)
    import torch
    began = time.time()
    deadline = began + args.budget_s
    cuda = torch.cuda.is_available()
    if not cuda:
        os.environ["KAFKA_DEVICE"] = "cpu"  # the steps never fall back to the CPU unless asked: the bench asks
    # The container's allocator setting (Dockerfile), for every row's process: the peaks are the ones the steps meet.
    os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    device = torch.cuda.get_device_name(0) if cuda else "cpu"
    peak_flops = next((v for k, v in PEAKS.items() if k in device), None)
    chosen = [s for s in BENCHED if not args.only or s in args.only.split(",")]
    planned = plan(chosen, args.levers)
    shapes = {stage: shape_of(stage, args.tiny) for stage in BENCHED}
    # A 4-bit 7B model on a CPU: hours a step, and 14.5 GB written for it. Only a GPU (or --tiny) runs those rows.
    no_gpu = {s: "skipped: needs a GPU (a 4-bit 7B model; --tiny runs it at a tiny shape)"
              for s in chosen if s in ON_BASE and not cuda and not args.tiny}
    header = (f"device: {device}; peak {peak_flops / 1e12 if peak_flops else '?'} TFLOP/s bf16; cap {args.memory_cap_gib} GiB; "
              f"{time.strftime('%Y-%m-%d')}; torch {torch.__version__}; {args.steps} steps per row"
              + "".join(f"; {name} for {', '.join(group)}" for name, group in (
                  ("a tiny Llama" if args.tiny else "TinyLlama_v1.1's shape", [s for s in chosen if s not in ON_BASE]),
                  ("a tiny Mistral" if args.tiny else "Mistral-7B-v0.1's shape (4-bit base)", [s for s in chosen if s in ON_BASE]))
                  if group))
    print(header, flush=True)

    # Set-up, inside the budget: each base's real-shape starting point (the 7B one in its own
    # workspace), and the adapters 2c and 2f continue. When the stage that makes an adapter is
    # benched too, its default row runs in the starting point and leaves it there (a 7B load costs
    # a minute: no second run); otherwise a 2-step run makes one, unmeasured.
    work = Path(tempfile.mkdtemp(prefix="train_bench_"))
    starting = {}  # stage -> the starting point its rows copy
    n_train = max(64, args.steps * 16)
    if any(s not in ON_BASE for s in chosen):
        build_project(work / "prepared", shapes["2a"], n_train)
        starting.update({s: work / "prepared" for s in chosen if s not in ON_BASE})
    if any(s in ON_BASE and s not in no_gpu for s in chosen):
        build_project(work / "prepared-7b", shapes["2e"], n_train, base_model=BASE_7B, data=("1a", "1c"), with_2a=False)
        starting.update({s: work / "prepared-7b" for s in chosen if s in ON_BASE})
    adapter_note = {}  # stage -> why the adapter it continues is not there ("" when it is)
    in_place = {}  # stage -> the stages that continue the adapter its default row leaves in the starting point
    for stage in chosen:
        source = stages.stage(stage).adapter_from
        if not source or stage in no_gpu:
            continue
        if source in chosen:
            in_place.setdefault(source, []).append(stage)
            adapter_note[stage] = f"{source}'s default row did not run"
        elif time.time() < deadline:
            adapter_note[stage] = run_stage(starting[stage], source, [], 2, args.memory_cap_gib)[2]
        else:
            adapter_note[stage] = f"the budget was spent before the {source} adapter was made"
    set_up = time.time() - began
    made = [s for s in adapter_note if stages.stage(s).adapter_from not in in_place]
    print(f"budget {args.budget_s:.0f} s: set-up took {set_up:.0f} s (starting point"
          + ("s" if len(set(starting.values())) > 1 else "")
          + "".join(f", {stages.stage(s).adapter_from} adapter for {s}" for s in made)
          + f"); {max(0.0, args.budget_s - set_up):.0f} s for "
          f"{len(planned)} rows in this order: each stage's default, the baselines, then the levers"
          + "".join(f"; {s}'s default row leaves the adapter {', '.join(after)} continue{'s' if len(after) == 1 else ''}"
                    for s, after in in_place.items()), flush=True)

    def measure(stage, label, flags):
        if stage in no_gpu:
            return Row(stage, label, None, None, no_gpu[stage])
        if adapter_note.get(stage):
            return Row(stage, label, None, None, f"not run: no {stages.stage(stage).adapter_from} adapter to continue "
                                                 f"({adapter_note[stage]})")
        start = starting[stage]
        if flags is not None and label.startswith("default") and stage in in_place:
            row = Row(stage, label, *run_stage(start, stage, flags, args.steps, args.memory_cap_gib))
            for after in in_place[stage]:
                adapter_note[after] = "" if row.tokens_per_second else f"{stage}'s default row: {row.note}"
            return row
        # A baseline reads 2a's model and writes only its own folder; a step writes its stage's.
        project = scratch_copy(start, work / "variant", stage if flags is not None else None, base_of(stage))
        if flags is None:
            bs, tps, peak, note, loss = run_baseline(project, stage, DEFAULT_BATCH[stage], args.steps, args.memory_cap_gib)
            return Row(stage, f"baseline: plain Trainer{' + peft' if lora(stage) else ''}, bs {bs}", tps, peak, note, loss)
        return Row(stage, label, *run_stage(project, stage, flags, args.steps, args.memory_cap_gib))

    def write_table(rows):
        args.out.write_text(f"{header}\n\n{format_rows(rows, shapes, peak_flops)}\n")  # a cut-off run still leaves its figures
        print(f"  {tuple(rows[-1])}", flush=True)

    cost = {stage: flops_per_step(shapes[stage], stage) for stage in BENCHED}
    rows = run_rows(planned, deadline, measure, cost, after_row=write_table)
    table = format_rows(rows, shapes, peak_flops)
    args.out.write_text(f"{header}\n\n{table}\n")
    import shutil
    shutil.rmtree(work, ignore_errors=True)  # the starting points (a 7B one: 14.5 GB) and the last variant
    print(f"\n{table}\n\n{time.time() - began:.0f} s (budget {args.budget_s:.0f} s); table in {args.out}")


if __name__ == "__main__":
    main()
