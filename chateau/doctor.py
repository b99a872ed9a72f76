"""What this machine can do for each stage at its defaults: one line per check, `ok` or the
problem and its fix. Run it before the first step (the container runs the quick form at start,
`docker logs kafka` shows it; the notebook's first cell runs the quick one too):

    python -m chateau.doctor            # everything, with the model probes (~10-60 s)
    python -m chateau.doctor --quick    # GPU, driver, memory, disk, RAM only (no probes; ~2 s)
    python -m chateau.doctor --project-dir /path/to/project
    python -m chateau.doctor --base-model models/Mistral-7B-v0.1   # that base's stages (bases/<its folder name>/)

Checks: the GPU(s) and the NVIDIA driver against this PyTorch's CUDA; compute capability (bf16);
the base's path (a base whose full weights do not fit the card, e.g. a 7B model on 12 GB, takes
QLoRA on its 4-bit self: 1a, 1c -> 2e -> 2f; decided from the estimates, said in one line); free
GPU memory against each train stage's peak at its defaults; bitsandbytes' library and a 4-bit
matmul with a LoRA backward; torchao's 8-bit AdamW step (compiled and timed on a GPU); SDPA /
flash attention; free disk under the project folder against what the unfinished stages will
write; RAM (step 4's export, a merge that runs on the CPU). The needs come from
chateau/memory_plan.py (estimates; bench/train_bench.py measures), for the base --base-model names
(its config.json; default: the project's TinyLlama).

Exit code 1 when a default stage cannot run here (a FAIL line), else 0. Without a GPU that is
always so, unless the CPU is asked for on purpose (--device cpu / KAFKA_DEVICE=cpu). In Python
(the notebook): `checks(quick=False, project=None, base_model=None) -> [Check(name, ok, text,
blocking)]`, `report(checks)` the text, `main(argv)` both and the exit code.
"""
import argparse
import importlib.metadata
import importlib.util
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from chateau import lineage, memory_plan, models, prepared, stages
from chateau.cli import project_dir
from chateau.memory_plan import GIB

# models.set_up_device refuses to train below it: bf16 is native from Ampere (compute capability 8.0) on.
BF16_CAPABILITY = (8, 0)
WEEKS = "the real model on CPU would take weeks"


@dataclass(frozen=True)
class Check:
    """One line of the doctor. `ok`: True (fine), False (a problem; `text` says the fix) or None
    (information only). A problem that is not `blocking` is a warning: it does not stop a
    default stage, and the exit code stays 0."""
    name: str
    ok: bool | None
    text: str
    blocking: bool = True

    @property
    def status(self):
        return {True: "ok", None: "info"}.get(self.ok, "FAIL" if self.blocking else "warn")

    @property
    def stops_a_stage(self):
        return self.ok is False and self.blocking


def _version(package):
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "?"


def _first_line(error):
    return f"{type(error).__name__}: {(str(error).strip().splitlines() or [''])[0][:200]}"


def gpus():
    """[(name, (major, minor))] of the visible CUDA GPUs (empty: none)."""
    import torch
    if not torch.cuda.is_available():
        return []
    return [(torch.cuda.get_device_name(i), tuple(torch.cuda.get_device_capability(i)))
            for i in range(torch.cuda.device_count())]


def finished(project, name, end=stages.CURRICULUM_END):
    """Whether stage `name` has finished in `project` (a base's workspace): a prepared folder's
    manifest, a train stage's metrics.json (lineage's rule), an export's files (of stage `end`, the
    path's model) at their default types."""
    step = stages.stage(name)
    if step.kind == "prepare":
        try:
            return prepared.read_manifest(step.folder(project)) is not None
        except ValueError:
            return False
    if step.kind == "train":
        return lineage.is_finished(project, name)
    if step.kind == "export":
        settings = memory_plan.stage_defaults(name)
        return all((stages.export_dir(project, end) / f"{settings['name']}-{kind}.gguf").exists()
                   for kind in settings["types"].split(","))
    return False  # the continuation: a few kB, whether written or not


def path_of(end):
    """The stages of the path that ends at train stage `end`: everything it is made from (its
    inputs, theirs...), then the write and export stages (steps 3 and 4, with --stage `end`)."""
    todo, seen = [end], set()
    while todo:
        name = todo.pop()
        if name in stages.STAGES and name not in seen:  # "base", "gallica", "novel" are inputs, not stages
            seen.add(name)
            todo.extend(stages.stage(name).inputs)
    return [s.name for s in stages.TABLE if s.name in seen or s.kind in ("write", "export")]


def default_path():
    """The stages of the curriculum's default path: the write and export stages and everything
    they are made from (2d, the alternative imprint, is not on it; nor 2e, 2f)."""
    return path_of(stages.CURRICULUM_END)


# The path of a base whose full weights do not fit the card: the merged stage whose whole chain is
# QLoRA on the 4-bit base itself (2e -> 2f), no full-weight stage before it.
ON_BASE_END = next(s.name for s in stages.TABLE if s.produces == stages.MERGED
                   and all(stages.stage(n).recipe == "qlora" for n in stages.path_to(s.name)))


def chain(path, end):
    """"1a, 1c → 2e → 2f": a path's data, then its train stages in training order."""
    data = [n for n in path if stages.stage(n).kind == "prepare"]
    return f"{', '.join(data)} → {' → '.join(stages.path_to(end))}"


def choose_path(project, base_model, shape, free_gib, where):
    """The path of `base_model` (its workspace: `project`) on this card (`free_gib` GiB free, said as `where`), decided from
    the estimates: the curriculum's (its end, CURRICULUM_END) when its full-weight stages fit at
    their defaults or a smaller --batch-size; else QLoRA on the 4-bit base (ON_BASE_END). Returns
    (end, the Check that says so, or None for the default base on its default path)."""
    full = [n for n in default_path() if stages.stage(n).recipe == "fullweight"]
    needs = {n: memory_plan.train_memory(n, shape, memory_plan.sample_tokens(project, n), free_gib=free_gib,
                                         project=project) for n in full}
    if all(memory_plan.fits(n, shape, memory_plan.sample_tokens(project, n), free_gib, project=project) for n in full):
        end = stages.CURRICULUM_END
        if stages.inputs_dir(project) == Path(project):  # the project's own base (TinyLlama), on its own path
            return end, None
        text = (f"its full weights fit {where} ({'; '.join(f'{n}: ~{need.gib:.1f} GiB' for n, need in needs.items())}): "
                f"the curriculum's path, {chain(path_of(end), end)}")
    else:
        end = ON_BASE_END
        smallest = {n: memory_plan.train_memory(n, shape, memory_plan.sample_tokens(project, n), batch_size=1,
                                                free_gib=free_gib, project=project) for n in full}
        text = (f"its full weights do not fit {where} ("
                + "; ".join(f"{n}: ~{needs[n].gib:.1f} GiB at its defaults, ~{smallest[n].gib:.1f} at --batch-size 1"
                            for n in full)
                + f"): its path is QLoRA on its 4-bit self, {chain(path_of(end), end)}, then steps 3 and 4 with "
                  f"--stage {end}")
    return end, Check("path", None, f"{base_model} ({shape.params / 1e9:.2f}B parameters, {shape.source}): {text}")


def ram():
    """(total, available) RAM in GiB for this process: the machine's, or the container's memory
    limit where one is set (cgroup v2 or v1), whichever is smaller."""
    import psutil
    memory = psutil.virtual_memory()
    total, available = memory.total, memory.available
    for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            limit, usage = int(Path(limit_file).read_text()), int(Path(usage_file).read_text())
        except (OSError, ValueError):  # no such file, or "max": no limit
            continue
        if limit < total:
            total, available = limit, min(available, limit - usage)
        break
    return total / GIB, available / GIB


# ---------------------------------------------------------------------------------------------
# The checks. Each returns a Check; `pending` are the stages not finished yet.

def device_check(found, cpu):
    import torch
    problems = models.device_problems()
    if problems:
        return Check("device", False, f"{problems[0]}: unset it (the GPU) or set KAFKA_DEVICE=cpu (the CPU on purpose)")
    if found:
        names = sorted({name for name, _ in found})
        text = (f"{len(found)} x {' / '.join(names)}, PyTorch {torch.__version__} built for CUDA {torch.version.cuda}")
        if len(found) > 1:
            text += (f"; a plain run uses GPU 0, torchrun --nproc_per_node {len(found)} <step>.py trains on all of them "
                     f"(the same tokens per step)")
        if cpu:
            return Check("device", None, f"{text}; but the CPU is asked for (KAFKA_DEVICE=cpu or --device cpu): the steps "
                                         f"compute on the CPU ({WEEKS}); unset KAFKA_DEVICE to train on the GPU")
        return Check("device", True, text)
    build = (f"this PyTorch ({torch.__version__}) is a CPU-only build" if torch.version.cuda is None else
             f"PyTorch (CUDA {torch.version.cuda}) sees none; in Docker: docker run --gpus all (NVIDIA Container Toolkit)")
    if cpu:
        return Check("device", True, f"no CUDA GPU ({build}); the CPU is asked for (KAFKA_DEVICE=cpu or --device cpu): "
                                     f"fine for the tiny profiles (profiles/tiny); {WEEKS}")
    return Check("device", False, f"no CUDA GPU: training steps refuse unless --device cpu / KAFKA_DEVICE=cpu; {WEEKS} "
                                  f"({build})")


def driver_check(found, cpu):
    import torch
    driver = models.nvidia_driver_version()
    blocking = not cpu
    if torch.version.cuda is None:
        if driver:
            return Check("driver", False, f"NVIDIA driver {driver} is here but this PyTorch ({torch.__version__}) is a "
                                          f"CPU-only build: install the CUDA build (pip install -r requirements.txt on "
                                          f"Linux from PyPI gives it; the Docker image has it)", blocking)
        return Check("driver", None, f"no NVIDIA driver and a CPU-only PyTorch ({torch.__version__}): nothing to match")
    needed = models.MIN_DRIVER.get(torch.version.cuda.split(".")[0])
    problem = models.driver_problem()
    if problem:
        return Check("driver", False, problem, blocking)
    if driver is None:
        if found:
            return Check("driver", True, f"CUDA {torch.version.cuda} runs (the driver's version is not readable here: "
                                         f"no /proc/driver/nvidia/version)")
        return Check("driver", False, f"no NVIDIA driver visible to this process (/proc/driver/nvidia/version): install "
                                      f"the NVIDIA driver ({needed} or newer for CUDA {torch.version.cuda}); in Docker, "
                                      f"docker run --gpus all with the NVIDIA Container Toolkit", blocking)
    return Check("driver", True, f"NVIDIA driver {driver}; this PyTorch's CUDA {torch.version.cuda} needs {needed} or newer")


def capability_check(found, pending, cpu, path=None):
    name, capability = min(found, key=lambda gpu: gpu[1])
    text = f"{name}: compute capability {capability[0]}.{capability[1]}"
    if capability >= BF16_CAPABILITY:
        return Check("bf16", True, f"{text}, native bf16 (every recipe trains in bf16)")
    training = [n for n in pending if stages.stage(n).kind == "train" and (path is None or n in path)]
    text += (", no native bf16: every train step refuses on it (bf16 weights, 4-bit compute and optimizer; fp16 would "
             "overflow)")
    if not training:
        return Check("bf16", False, f"{text}; every train stage is finished, so nothing left needs it", blocking=False)
    return Check("bf16", False, f"{text}, so {', '.join(training)} cannot run; an Ampere card or newer (RTX 30xx, "
                                f"A-series, compute capability 8.0+) is needed to train (preparing, writing and exporting "
                                f"run here)", blocking=not cpu)


def gpu_free(found, cpu):
    """GiB free on GPU 0 where the steps will use it, else None."""
    import torch
    return torch.cuda.mem_get_info(0)[0] / GIB if found and not cpu else None


def memory_checks(project, shape, found, cpu, pending, path=None):
    """One line per train stage: its estimated peak at its defaults against GPU 0's free memory
    (or, with the CPU asked for, against the RAM available). `project`: the base's workspace;
    `path`: the base's stages when it is not the curriculum's (the others only say their need)."""
    device = "cuda" if found and not cpu else "cpu"
    free = gpu_free(found, cpu)
    available = ram()[1] if cpu else None
    out = []
    for name in stages.TRAIN_STAGES:
        settings = memory_plan.stage_defaults(name)
        tokens = memory_plan.sample_tokens(project, name, settings)
        need = memory_plan.train_memory(name, shape, tokens, settings, "cuda" if not cpu else "cpu",
                                        free_gib=free if free is not None else memory_plan.CARD_GIB, project=project)
        head = f"{need.setup}: ~{need.gib:.1f} GiB"
        label = f"memory {name}"
        if path is not None and name not in path:
            out.append(Check(label, None, f"{head}: not on this base's path"))
        elif name not in pending:
            out.append(Check(label, True, f"{name} is finished ({head} to train it again)"))
        elif device == "cuda":
            text = f"{head}; {free:.1f} GiB free on GPU 0"
            if need.gib <= free:
                out.append(Check(label, True, text))
                continue
            fit = memory_plan.largest_batch(name, shape, tokens, free, settings, project=project)
            fix = (f"pass --batch-size {fit[0]} (~{fit[1].gib:.1f} GiB; the tokens per step stay "
                   f"{settings['tokens_per_step']:,}, the accumulation grows)" if fit else
                   "it does not fit even at --batch-size 1: free the GPU (nvidia-smi shows what holds it) or use a "
                   "card with more memory")
            out.append(Check(label, False, f"{text}: {fix}"))
        elif cpu:
            text = f"{head} of RAM on the CPU at its defaults, {available:.1f} GiB available"
            if need.gib <= available:
                out.append(Check(label, True, text))
            else:
                out.append(Check(label, False, f"{text}: the tiny profiles fit (--config profiles/tiny/{name}.json); "
                                               f"the real run needs a GPU anyway", blocking=False))
        else:
            out.append(Check(label, None, f"{head} of GPU memory (no GPU here)"))
    return out


def four_bit_lora_probe(device):
    """An NF4 layer with double quantization (bitsandbytes' Linear4bit, as the 4-bit loader makes
    them) under a LoRA pair of nn.Linear, forward and backward under the Trainer's autocast,
    compared with the same computation in fp32 on the dequantized weight. Returns the largest
    relative error of the output and of the LoRA factors' gradients."""
    import bitsandbytes as bnb
    import torch
    torch.manual_seed(0)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32  # models.compute_dtype's rule
    width, rank = 256, 32  # multiples of 32, as bitsandbytes' kernels want
    layer = bnb.nn.Linear4bit(width, width, bias=False, compute_dtype=dtype, quant_type="nf4", compress_statistics=True)
    layer.weight = bnb.nn.Params4bit(torch.randn(width, width) / width ** 0.5, requires_grad=False, quant_type="nf4",
                                     compress_statistics=True)
    layer = layer.to(device)  # quantizes
    if device == "cpu":  # as models.load_model_4bit does: the avx512_bf16 repacking breaks the gradients
        layer.support_avx512bf16_for_cpu = False
    down = torch.nn.Linear(width, rank, bias=False).to(device)
    up = torch.nn.Linear(rank, width, bias=False).to(device)
    torch.nn.init.normal_(up.weight, std=0.02)  # LoRA starts it at zero; not zero here, so both factors get gradients
    x = torch.randn(4, 64, width, device=device)
    with torch.autocast(device, dtype=dtype, enabled=device == "cuda"):
        y = layer(x) + up(down(x)) * 2.0
    y.float().pow(2).mean().backward()

    dense = bnb.functional.dequantize_4bit(layer.weight.data, layer.weight.quant_state).float()
    a, b = (m.weight.detach().float().requires_grad_() for m in (down, up))
    reference = x @ dense.T + (x @ a.T) @ b.T * 2.0
    reference.pow(2).mean().backward()
    relative = lambda got, want: ((got.float() - want).norm() / want.norm()).item()
    return max(relative(y.detach(), reference.detach()), relative(down.weight.grad, a.grad), relative(up.weight.grad, b.grad))


def bitsandbytes_check(device, pending):
    import torch
    blocking = any(stages.stage(n).recipe == "qlora" for n in pending)
    version = _version("bitsandbytes")
    try:
        from bitsandbytes import cextension
    except Exception as error:  # noqa: BLE001 - any import failure is this line
        return Check("bitsandbytes", False, f"bitsandbytes does not import ({_first_line(error)}): "
                                            f"pip install -r requirements.txt (bitsandbytes==0.50.2)", blocking)
    library = cextension.lib.__dict__.get("_lib")
    library = Path(library._name).name if library is not None else "no native library"
    if device == "cuda" and not getattr(cextension.lib, "compiled_with_cuda", False):
        reason = str(getattr(cextension.lib, "error_msg", "") or "").strip().splitlines()
        return Check("bitsandbytes", False, f"bitsandbytes {version} loaded no CUDA library for PyTorch's CUDA "
                                            f"{torch.version.cuda} ({reason[0][:160] if reason else library}): reinstall "
                                            f"bitsandbytes==0.50.2 (its wheel carries the CUDA 11.8-13.x libraries)", blocking)
    began = time.perf_counter()
    try:
        error = four_bit_lora_probe(device)
    except Exception as failure:  # noqa: BLE001 - what 2b and 2c would meet
        return Check("bitsandbytes", False, f"bitsandbytes {version} ({library}): a 4-bit matmul with a LoRA backward "
                                            f"fails on the {device.upper()} ({_first_line(failure)}): 2b and 2c cannot "
                                            f"train; reinstall bitsandbytes==0.50.2", blocking)
    seconds = time.perf_counter() - began
    tolerance = 0.05 if device == "cuda" else 1e-3  # bf16 compute on GPU; fp32 on CPU
    text = (f"bitsandbytes {version} ({library}): an NF4 matmul with a LoRA backward on the {device.upper()} "
            f"matches the dequantized fp32 reference to {error:.1e} ({seconds:.1f} s)")
    if error > tolerance:
        return Check("bitsandbytes", False, f"{text}, beyond {tolerance:g}: its 4-bit kernels compute wrongly here; "
                                            f"2b and 2c would train on garbage: reinstall bitsandbytes==0.50.2", blocking)
    return Check("bitsandbytes", True, text)


def optimizer_check(device, pending):
    """torchao's AdamW8bit, the full-weight steps' optimizer: one step on a scratch parameter,
    compiled and timed on a GPU (as the steps run it), eager on the CPU (where they run it so)."""
    import torch
    blocking = any(stages.stage(n).recipe == "fullweight" for n in pending)
    version = _version("torchao")
    try:
        from torchao.optim import AdamW8bit
    except Exception as error:  # noqa: BLE001
        return Check("optimizer", False, f"torchao does not import ({_first_line(error)}): pip install -r "
                                         f"requirements.txt (torchao==0.18.0)", blocking)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32  # the full-weight recipe's weights
    parameter = torch.nn.Parameter(torch.randn(256, 256, device=device, dtype=dtype))  # 8-bit state from 4,096 values
    parameter.grad = torch.randn_like(parameter)
    optimizer = AdamW8bit([parameter], lr=1e-3, bf16_stochastic_round=dtype is torch.bfloat16)
    before = parameter.detach().clone()

    def step():
        began = time.perf_counter()
        optimizer.step()
        if device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - began

    name = f"torchao {version} AdamW8bit" + (" (bf16 stochastic rounding)" if dtype is torch.bfloat16 else "")
    try:
        if device == "cuda":
            try:
                first, then = step(), step()
                text = (f"{name}: its step compiles ({first:.0f} s for the first, compilation included; then "
                        f"{1000 * then:.1f} ms); 2a and 2d compile it once per parameter shape at their start")
                ok, warning = True, False
            except Exception as error:  # noqa: BLE001 - the steps then run it eagerly (fullweight.prepare_optimizer_step)
                with torch.compiler.set_stance("force_eager"):
                    step()
                text = (f"{name}: its step does not compile here ({_first_line(error)}): 2a and 2d run it eagerly "
                        f"(the same updates, a slower step)")
                ok, warning = False, True
        else:
            with torch.compiler.set_stance("force_eager"):
                step()
            text = f"{name}: one step runs on the CPU, not compiled (torch.compile is off on the CPU: the steps run it eagerly)"
            ok, warning = True, False
    except Exception as error:  # noqa: BLE001 - what 2a and 2d would meet
        return Check("optimizer", False, f"{name}: a step fails on the {device.upper()} ({_first_line(error)}): 2a and 2d "
                                         f"cannot train with --optimizer adamw8bit_sr; reinstall torchao==0.18.0", blocking)
    finite = bool(torch.isfinite(parameter).all())
    if not finite or torch.equal(parameter.detach(), before):
        return Check("optimizer", False, f"{name}: a step leaves the weights {'not finite' if not finite else 'unchanged'}: "
                                         f"2a and 2d would not train; reinstall torchao==0.18.0", blocking)
    return Check("optimizer", ok, text, blocking=not warning)


def attention_check(device):
    """SDPA, the steps' default attention (--attn-implementation sdpa): which fused kernel runs."""
    import torch
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    q = torch.randn(1, 4, 256, 64, device=device, dtype=dtype)
    flash_attn = "installed" if importlib.util.find_spec("flash_attn") else "not installed, not needed"
    if device == "cpu":
        try:
            F.scaled_dot_product_attention(q, q, q, is_causal=True)
        except Exception as error:  # noqa: BLE001
            return Check("attention", False, f"SDPA fails on the CPU ({_first_line(error)}): use --attn-implementation "
                                             f"eager", blocking=False)
        return Check("attention", True, "SDPA runs on the CPU (fp32); flash attention is a GPU kernel")
    runs = []
    for label, backend in (("flash", SDPBackend.FLASH_ATTENTION), ("memory-efficient", SDPBackend.EFFICIENT_ATTENTION)):
        try:
            with sdpa_kernel([backend]):
                F.scaled_dot_product_attention(q, q, q, is_causal=True)
            runs.append(label)
        except RuntimeError:
            pass
    if "flash" in runs:
        return Check("attention", True, f"SDPA's flash kernel runs (bf16, causal): the steps' default "
                                        f"--attn-implementation sdpa uses it (flash-attn package: {flash_attn})")
    if runs:
        return Check("attention", False, "SDPA's flash kernel does not run on this GPU; its memory-efficient kernel does "
                                         "(no T x T matrix either: the memory estimates hold, the steps are a little "
                                         "slower)", blocking=False)
    return Check("attention", False, "neither of SDPA's fused kernels runs on this GPU: it falls back to its math kernel, "
                                     "which keeps T x T attention matrices (more memory than estimated): lower "
                                     "--batch-size if a step runs out of memory", blocking=False)


def disk_check(project, shape, pending, device, path=None):
    where = Path(project)
    while not where.exists() and where != where.parent:
        where = where.parent
    free = shutil.disk_usage(where).free / GIB
    folder = str(project) + ("" if where == Path(project) else f" (not created yet; its disk: {where})")
    on_path = path or default_path()
    todo = [n for n in on_path if n in pending and stages.stage(n).kind != "write"]  # a chapter of text: kB
    plans = {n: memory_plan.stage_disk(n, shape, project, device) for n in todo}
    need = sum(p.kept_gib for p in plans.values()) + max([p.peak_gib - p.kept_gib for p in plans.values()], default=0)
    largest = sorted(plans.values(), key=lambda p: -p.kept_gib)[:3]
    text = (f"{free:.1f} GiB free under {folder}; the stages not finished yet ({', '.join(todo) or 'none'}) will write "
            f"~{need:.1f} GiB" + (f" ({'; '.join(f'{p.stage}: ~{p.kept_gib:.1f} GiB, {p.what}' for p in largest)})"
                                  if largest else ""))
    # Off the curriculum's path: the alternatives (2d; 2e, 2f). Off a base's own path: stages that do not fit.
    others = [n for n in pending if n not in on_path and stages.stage(n).kind == "train"] if path is None else []
    if others:
        extra = sum(memory_plan.stage_disk(n, shape, project, device).kept_gib for n in others)
        text += f"; {', '.join(others)} (off the default path) would add ~{extra:.1f} GiB"
    if need <= free:
        return Check("disk", True, text)
    return Check("disk", False, f"{text}: free ~{need - free:.0f} GiB more, or put the project folder on a bigger disk "
                                f"(--project-dir / KAFKA_PROJECT_DIR)")


def ram_check(shape, pending, merges=()):
    """Step 4's export against the RAM available, and each pending merge that runs on the CPU
    (`merges`: their Needs, memory_plan's Need.merge: a 7B merge does not fit a 12 GB card)."""
    total, available = ram()
    need = memory_plan.ram_need(shape)
    text = f"{total:.1f} GiB, {available:.1f} GiB available; {need.setup} needs ~{need.gib:.1f} GiB"
    text += "".join(f"; {m.stage}'s merge on the CPU needs ~{m.gib:.1f} GiB (once, at its end)" for m in merges)
    short = [m.stage for m in merges if m.stage in pending and m.gib > available]
    export_short = "4" in pending and need.gib > available
    if not short and not export_short:
        return Check("RAM", True, text)
    fixes = ["close what else uses memory"]
    if export_short:
        lighter = memory_plan.ram_need(shape, verify=False)
        fixes.append(f"run step 4 with --verify false (~{lighter.gib:.1f} GiB, the files unchecked)")
    if short:
        fixes.append(f"give {', '.join(short)} a machine with more RAM for {'its' if len(short) == 1 else 'their'} merge")
    return Check("RAM", False, f"{text}: {'; or '.join(fixes)}")


def checks(quick=False, project=None, base_model=None):
    """Every check, in order; `quick`: no model probes (GPU, driver, memory, disk, RAM only).
    `base_model` (default: the project's TinyLlama): the base whose stages are checked, in its
    workspace (stages.workspace), with its shape (its config.json)."""
    import torch  # noqa: F401 - the first import is most of the quick form's time
    project = Path(project) if project else project_dir()
    base_model = base_model or stages.BASE_MODEL
    workspace = stages.workspace(project, base_model)
    cpu = models.cpu_requested()
    found = gpus()
    device = "cuda" if found and not cpu else "cpu"  # where the probes run
    plan = "cpu" if cpu else "cuda"  # what the steps will compute on: the GPU unless the CPU is asked for
    shape = memory_plan.model_shape(project, base_model)
    free = gpu_free(found, cpu)
    where = (f"the {free:.1f} GiB free on GPU 0" if free is not None else
             f"a {memory_plan.CARD_GIB:.0f} GB card ({'the CPU is asked for' if cpu else 'no GPU here'})")
    end, path_line = choose_path(workspace, base_model, shape, free if free is not None else memory_plan.CARD_GIB, where)
    path = path_of(end) if end != stages.CURRICULUM_END else None  # None: every stage, as the curriculum's
    pending = [name for name in stages.STAGES if not finished(workspace, name, end)]
    out = [device_check(found, cpu), driver_check(found, cpu)]
    if found:
        out.append(capability_check(found, pending, cpu, path))
    if path_line:
        out.append(path_line)
    out += memory_checks(workspace, shape, found, cpu, pending, path)
    if not quick:
        relevant = [n for n in pending if path is None or n in path]
        out += [bitsandbytes_check(device, relevant), optimizer_check(device, relevant), attention_check(device)]
    merges = [memory_plan.train_memory(n, shape, memory_plan.sample_tokens(workspace, n), device=plan,
                                       free_gib=free if free is not None else memory_plan.CARD_GIB, project=workspace).merge
              for n in pending if stages.stage(n).produces == stages.MERGED and (path is None or n in path)]
    out += [disk_check(workspace, shape, pending, plan, path), ram_check(shape, pending, [m for m in merges if m])]
    return out


def report(results):
    """The checks as text: one line each, then what it means for the exit code."""
    lines = [f"{c.status:<4} {c.name}: {c.text}" for c in results]
    stops = [c.name for c in results if c.stops_a_stage]
    lines.append(f"=> {len(stops)} problem(s) stop a default stage here ({', '.join(stops)}): fix the FAIL lines" if stops
                 else "=> every default stage can run here")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m chateau.doctor", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    parser.add_argument("--quick", action="store_true", help="no model probes: GPU, driver, memory, disk, RAM only")
    parser.add_argument("--project-dir", default="", help="project folder (default: $KAFKA_PROJECT_DIR or /project)")
    parser.add_argument("--base-model", default=stages.BASE_MODEL, help=stages.BASE_MODEL_HELP)
    args = parser.parse_args(argv)
    project = project_dir(args.project_dir)
    began = time.perf_counter()
    results = checks(quick=args.quick, project=project, base_model=args.base_model)
    base = "" if args.base_model == stages.BASE_MODEL else f", base {args.base_model}: {stages.workspace(project, args.base_model)}"
    # One write: the container runs the quick form beside Jupyter's start, whose lines must not cut it.
    print(f"chateau doctor{' --quick' if args.quick else ''}: this machine against each stage's defaults "
          f"(project folder {project}{base}; estimates from chateau/memory_plan.py)\n{report(results)}\n"
          f"({time.perf_counter() - began:.1f} s)", flush=True)
    return 1 if any(c.stops_a_stage for c in results) else 0


if __name__ == "__main__":
    sys.exit(main())
