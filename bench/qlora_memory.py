"""Activation memory of the QLoRA recipe (2b/2c), measured on the CPU: what docs/performance.md's
2b/2c memory table rests on, reproducible without a GPU.

    python -m bench.qlora_memory           # TinyLlama's width, 2 and 4 layers, 2 and 4 x 2048: ~10 min of CPU time
    python -m bench.qlora_memory --mistral # 2e/2f: Mistral-7B's width, 2 layers, 8 x 512, LoRA r 16
    python -m bench.qlora_memory --tiny    # seconds: checks the script runs

One training step (forward + backward, gradient checkpointing) of the recipe's own model
(chateau.qlora.qlora_model: NF4 base, peft's prepare_model_for_kbit_training, LoRA r 32) with
the 4-bit compute in bf16 as on a GPU (on CPU the recipe computes in fp32, where the fp32 upcast
changes nothing), under bf16 autocast as the Trainer's bf16=True, with --upcast-norms true (the
default) and false. Random weights at TinyLlama's width (hidden 2048, intermediate 5632, vocab
32000) and a few layers: each further layer adds only its checkpointed input, so the peak at 22
layers is the measured one plus the measured per-layer growth.

How live bytes are read on a CPU: every allocation above 64 KiB goes through mmap
(MALLOC_MMAP_THRESHOLD_=65536, set for a child process; glibc then returns freed blocks at once),
so glibc's mmapped bytes (mallinfo2().hblkhd), read after every ATen op, are the live tensor
bytes. The peak is that of live tensors: a GPU's caching allocator reserves some more.

--mistral measures the step of 2e and 2f (QLoRA on the 4-bit base, LoRA r 16, 8 x 512) at
Mistral-7B-v0.1's width (hidden 4096, intermediate 14336, 8 KV heads, vocab 32000) with 2 layers,
--upcast-norms true and false (~8 min of CPU time), and sets it beside chateau.memory_plan's
estimate of the same step; its 32 layers are the measured step plus 30 more checkpointed inputs
(what each further layer adds, measured at TinyLlama's width above).
"""
import argparse
import ctypes
import functools
import gc
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.train_bench import REAL, TINY

MMAP_THRESHOLD = "65536"
FULL_LAYERS = 22  # TinyLlama_v1.1
SMALL = dict(TINY, hidden_size=256, intermediate_size=512)


class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]


@functools.cache
def glibc():
    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = MallInfo2
    return libc


def mapped_bytes():
    return glibc().mallinfo2().hblkhd


def one_step(shape, layers, batch, seq, upcast_norms, folder, lora_r=32):
    """{residual dtype, static GiB (the model as loaded: 4-bit weights, embedding, head, LoRA),
    activation peak GiB (above what is live before the step), LoRA parameters} of the second
    training step of the QLoRA recipe's model (the first one's one-time allocations left out)."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from transformers import LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM

    from chateau import models, qlora, stages
    base = Path(folder) / f"base-{layers}"
    if not base.exists():
        config_class, model_class = (MistralConfig, MistralForCausalLM) if "sliding_window" in shape else \
            (LlamaConfig, LlamaForCausalLM)
        config = config_class(**{**shape, "num_hidden_layers": layers}, tie_word_embeddings=False)
        model_class(config).to(torch.bfloat16).save_pretrained(base)
    models.compute_dtype = lambda: torch.bfloat16  # the GPU's compute dtype, on the CPU
    gc.collect()
    before = mapped_bytes()  # what earlier measurements left in this process is not this model's
    model = qlora.qlora_model(qlora.QLoRASettings(upcast_norms=upcast_norms, lora_r=lora_r), None, stages.stage("2b"), base)
    model.train()
    gc.collect()
    weights = mapped_bytes() - before
    dtypes = []
    model.base_model.model.model.layers[-1].register_forward_hook(
        lambda module, inputs, output: dtypes.append((output[0] if isinstance(output, tuple) else output).dtype))
    peak = [0]

    class Peak(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            peak[0] = max(peak[0], mapped_bytes())
            return out

    ids = torch.randint(3, shape["vocab_size"], (batch, seq))

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(input_ids=ids, labels=ids).loss  # as the Trainer: the logits are not kept
        loss.backward()
        model.zero_grad(set_to_none=True)  # as the Trainer after each optimizer step

    step()  # the first step's one-time allocations (kernels' tables, thread pools) are not the recipe's
    gc.collect()
    start = peak[0] = mapped_bytes()
    with Peak():
        step()
    lora = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"residual": str(dtypes[0]).replace("torch.", ""), "static_gib": weights / 2**30,
            "activation_gib": (peak[0] - start) / 2**30, "lora_parameters": lora}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="tiny shape: checks the script runs")
    parser.add_argument("--mistral", action="store_true", help="2e/2f's step at Mistral-7B's width (2 layers, 8 x 512)")
    args = parser.parse_args(argv)
    if os.environ.get("MALLOC_MMAP_THRESHOLD_") != MMAP_THRESHOLD:  # glibc reads it at start: a child process
        env = dict(os.environ, MALLOC_MMAP_THRESHOLD_=MMAP_THRESHOLD, KAFKA_DEVICE="cpu", PYTHONWARNINGS="ignore")
        sys.exit(subprocess.run([sys.executable, "-m", "bench.qlora_memory", *(argv or sys.argv[1:])], env=env).returncode)
    import torch
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    if args.mistral:
        return mistral_step()
    # --tiny: one small step per setting, most tensors above the 64 KiB that mmap sees (per-layer
    # growth at that size would be noise: a layer's LoRA gradients there outweigh its checkpointed input).
    shape, seq, batch, layers = (SMALL, 256, 1, (2, None)) if args.tiny else (REAL, 2048, 2, (2, 4))
    few, more = layers
    print(f"QLoRA training step, 4-bit compute bf16 under bf16 autocast, CPU; hidden {shape['hidden_size']}, "
          f"{seq} tokens a sample; live tensor bytes", flush=True)
    with tempfile.TemporaryDirectory(prefix="qlora_memory_") as folder:
        for upcast in (True, False):
            runs = [(few, batch)] if args.tiny else [(few, batch), (more, batch), (few, 2 * batch)]
            at = {(n, b): one_step(shape, n, b, seq, upcast, folder) for n, b in runs}
            name = f"--upcast-norms {str(upcast).lower()}"
            for (n, b), m in at.items():
                print(f"{name}: {n} layers, batch {b}: residual stream {m['residual']}, static {1024 * m['static_gib']:.1f} MiB, "
                      f"activation peak {1024 * m['activation_gib']:.1f} MiB", flush=True)
            if not args.tiny:  # the real model: 22 layers, AdamW's two fp32 moments for the LoRA parameters
                per_layer = (at[more, batch]["activation_gib"] - at[few, batch]["activation_gib"]) / (more - few)
                static_per_layer = (at[more, batch]["static_gib"] - at[few, batch]["static_gib"]) / (more - few)
                print(f"{name}: each further layer adds {1024 * per_layer:.2f} MiB at batch {batch}", flush=True)
                lora = at[few, batch]["lora_parameters"] / few * FULL_LAYERS
                static = at[few, batch]["static_gib"] + (FULL_LAYERS - few) * static_per_layer + lora * 8 / 2**30
                for b in (batch, 2 * batch):
                    peak = at[few, b]["activation_gib"] + (FULL_LAYERS - few) * per_layer * b / batch
                    print(f"{name}: {FULL_LAYERS} layers, batch {b}: static {static:.2f} (AdamW moments included) + "
                          f"activation peak {peak:.2f} = {static + peak:.2f} GiB", flush=True)


def mistral_step(layers=2, batch=8, seq=512, full_layers=32):
    """2e/2f's training step at Mistral-7B's width, measured with `layers` layers, --upcast-norms
    true and false, beside chateau.memory_plan's estimate of the same step, then extrapolated to its
    `full_layers` (each further layer adds its checkpointed input)."""
    from bench.train_bench import MISTRAL_7B
    from chateau import memory_plan

    def without_activations(need):
        return sum(v for k, v in need.parts.items() if "checkpointed" not in k and "peak of a step" not in k)

    defaults = memory_plan.stage_defaults("2e")
    print(f"2e/2f's QLoRA step (LoRA r {defaults['lora_r']}, {batch} x {seq}), 4-bit compute bf16 under bf16 autocast, "
          f"CPU; Mistral-7B's width, {layers} layers; live tensor bytes", flush=True)
    few = memory_plan.Shape.from_config({**MISTRAL_7B, "num_hidden_layers": layers})
    full = memory_plan.Shape.from_config(MISTRAL_7B)
    with tempfile.TemporaryDirectory(prefix="qlora_memory_") as folder:
        for upcast in (True, False):
            settings = {**defaults, "upcast_norms": upcast}
            estimate = memory_plan.train_memory("2e", few, seq, settings, batch_size=batch)
            m = one_step(MISTRAL_7B, layers, batch, seq, upcast, folder, lora_r=defaults["lora_r"])
            name = f"--upcast-norms {str(upcast).lower()}"
            print(f"{name}: {layers} layers, batch {batch}: residual stream {m['residual']}, static "
                  f"{1024 * m['static_gib']:.1f} MiB, activation peak {1024 * m['activation_gib']:.1f} MiB (memory_plan's "
                  f"estimate of the same: {1024 * (estimate.gib - without_activations(estimate) - estimate.overhead_gib):.1f} "
                  f"MiB)", flush=True)
            whole = memory_plan.train_memory("2e", full, seq, settings, batch_size=batch)
            per_layer = batch * seq * full.hidden * (4 if upcast else 2) / 2**30  # one more checkpointed layer input
            measured = without_activations(whole) + m["activation_gib"] + (full_layers - layers) * per_layer
            print(f"{name}: {full_layers} layers, batch {batch}: the estimate's weights, LoRA and AdamW + the measured "
                  f"activation peak + {full_layers - layers} more checkpointed inputs = {measured:.2f} GiB of live tensors "
                  f"(memory_plan: {whole.gib - whole.overhead_gib:.2f} GiB; both + {whole.overhead_gib} GiB of CUDA "
                  f"context)", flush=True)

if __name__ == "__main__":
    main()
