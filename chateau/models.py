"""Devices, tokenizers and models: how every step loads what it trains or generates with."""
import hashlib
import json
import logging
import math
import os
import re
import sys
import warnings
from pathlib import Path

from chateau.cli import StageError, say

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # we fork worker pools ourselves
# torchao announces, at import, CUDA kernels it cannot load on other GPUs or a CPU, and torch warns
# about its enum registrations: harmless lines that would bury each step's own output.
logging.getLogger("torchao").setLevel(logging.ERROR)
logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)

DOWNLOAD_HINT = "download it with notebook.ipynb (section 1)"


# Where the steps compute: "cuda" (the default: a train step without a visible GPU refuses, it never
# falls back to the CPU by itself) or "cpu", asked for on purpose with --device cpu or KAFKA_DEVICE=cpu
# (the tiny and real-cpu profiles, the demo, the tests and CI ask for it).
DEVICES = ("cuda", "cpu")
DEVICE_HELP = "cuda | cpu: where to compute (default: $KAFKA_DEVICE, else cuda; never the CPU unless asked)"
_chosen = {"device": None}  # set by set_up_device for this process


def requested_device(value=""):
    """The device asked for: --device, else $KAFKA_DEVICE, else "cuda"."""
    return value or os.environ.get("KAFKA_DEVICE", "") or "cuda"


def cpu_requested(value=""):
    return requested_device(value) == "cpu"


def device_problems(value=""):
    """A --device (or $KAFKA_DEVICE) that is neither cuda nor cpu, as a settings problem."""
    chosen = requested_device(value)
    if chosen in DEVICES:
        return []
    where = f"--device {value}" if value else f"KAFKA_DEVICE={chosen}"
    return [f"{where} must be cuda or cpu"]


def use_cuda():
    """Whether this process computes on the GPU: one is visible and the CPU was not asked for."""
    import torch
    return _chosen["device"] != "cpu" and not cpu_requested() and torch.cuda.is_available()


def compute_dtype():
    """bf16 on GPU (TinyLlama's training precision); fp32 on CPU, where bf16 only costs accuracy."""
    import torch
    return torch.bfloat16 if use_cuda() else torch.float32


# The oldest NVIDIA driver series for each CUDA major version PyTorch's wheels are built with.
MIN_DRIVER = {"13": 580, "12": 525, "11": 450}


def nvidia_driver_version():
    """The NVIDIA kernel driver's version ("535.104.05"), or None where there is no NVIDIA GPU."""
    try:
        text = Path("/proc/driver/nvidia/version").read_text()
    except OSError:
        return None
    match = re.search(r"Kernel Module\s+(?:for \S+\s+)?(\d+\.\d+(?:\.\d+)?)", text)
    return match.group(1) if match else None


def driver_problem():
    """The one line that says why a present NVIDIA GPU cannot be used (a driver older than this
    PyTorch's CUDA needs), or None."""
    import torch
    if torch.version.cuda is None or use_cuda():
        return None
    driver = nvidia_driver_version()
    needed = MIN_DRIVER.get(torch.version.cuda.split(".")[0])
    if driver is None or needed is None or int(driver.split(".")[0]) >= needed:
        return None
    return (f"the NVIDIA driver {driver} is too old for this PyTorch (CUDA {torch.version.cuda}): driver {needed} or "
            f"newer is needed. Update the driver, or build the image for CUDA 12 "
            f"(docker build --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu129 -t kafka .)")


def no_gpu_message():
    import torch
    build = f"this PyTorch is a CPU-only build (torch {torch.__version__})" if torch.version.cuda is None else \
        f"PyTorch (CUDA {torch.version.cuda}) sees none"
    return (f"no CUDA GPU is visible to this process ({build}): in Docker, start the container with `--gpus all` "
            f"(and the NVIDIA Container Toolkit; under WSL2, a Windows driver with WSL support); "
            f"`python -m chateau.doctor` says what is missing. To train on the CPU on purpose (tiny runs only: the real "
            f"model would take weeks), pass --device cpu or set KAFKA_DEVICE=cpu")


def set_up_device(device="", require_gpu=True):
    """The opening of every step that computes, before anything is loaded or changed: where it
    computes ("cuda" or "cpu"). No GPU and no --device cpu: a train step (`require_gpu`) refuses in
    one line, never falls back to the CPU for weeks; a GPU without bf16 (before Ampere) is refused
    for training, since every recipe computes in bf16; a GPU the driver cannot serve is one line,
    not a CUDA traceback. Several GPUs without torchrun: one is used (the Trainer would otherwise
    wrap the model in DataParallel and change the batch); says which. On CPU, torch.compile is off
    for this process (torchao's optimizer step compiles itself; eager mode computes the same)."""
    import torch
    chosen = requested_device(device)
    if chosen == "cpu":
        _chosen["device"] = "cpu"
        # torch.compile's own switch (torch._dynamo.config.disable would make torchao's
        # fullgraph compile raise "found no compiled frames" instead of running eagerly).
        os.environ["TORCHDYNAMO_DISABLE"] = "1"
        os.environ["KAFKA_DEVICE"] = "cpu"  # what this process's later loads and any worker read
        print("running on the CPU, as asked (--device cpu or KAFKA_DEVICE=cpu): fine for tiny runs", file=sys.stderr)
        return "cpu"
    problem = driver_problem()
    if problem:
        raise StageError(problem)
    if not torch.cuda.is_available():
        if require_gpu:
            raise StageError(no_gpu_message())
        _chosen["device"] = "cpu"
        os.environ["TORCHDYNAMO_DISABLE"] = "1"
        print("warning: no CUDA GPU found: running on the CPU (slow; --device cpu says it on purpose)", file=sys.stderr)
        return "cpu"
    name, capability = torch.cuda.get_device_name(0), torch.cuda.get_device_capability(0)
    if require_gpu and capability < (8, 0):
        raise StageError(f"{name} (compute capability {capability[0]}.{capability[1]}) has no bfloat16: every recipe "
                         f"trains in bf16 (weights, 4-bit compute, optimizer), and fp16 instead would overflow; an "
                         f"Ampere card or newer (RTX 30xx, A-series, compute capability 8.0+) is needed to train")
    count = torch.cuda.device_count()
    if count > 1 and "WORLD_SIZE" not in os.environ:
        print(f"{count} GPUs visible: this run uses one, GPU {os.environ.get('LOCAL_RANK', 0)} ({name}); to train on all "
              f"{count} with the same tokens per step: torchrun --nproc_per_node {count} {Path(sys.argv[0]).name}",
              file=sys.stderr)
    _chosen["device"] = "cuda"
    return "cuda"


def one_gpu_per_process(args):
    """TrainingArguments that use one GPU per process: without torchrun the Trainer would wrap the
    model in DataParallel over every visible GPU (and multiply the batch); under torchrun DDP
    already gives each process one."""
    if args.n_gpu > 1:
        args._n_gpu = 1  # transformers' own switch (Trainer does the same for model parallelism)
    return args


def require(path, what, fix):
    if not Path(path).exists():
        raise StageError(f"{what} not found at {path}: {fix}")
    return Path(path)


def load_tokenizer(model_dir, fix=DOWNLOAD_HINT):
    from transformers import AutoTokenizer
    require(Path(model_dir) / "config.json", "model", fix)
    check_model_folder(model_dir)
    return AutoTokenizer.from_pretrained(model_dir, trust_remote_code=False)  # never a prompt, never custom code


def check_context(model_dir, seq_len):
    """Refuse samples longer than the model's context before preparing any."""
    config = json.loads((Path(model_dir) / "config.json").read_text())
    positions = config.get("max_position_embeddings")
    if positions and seq_len > positions:
        raise StageError(f"--seq-len {seq_len} is longer than the model's context ({positions} tokens, {model_dir}): "
                         f"use --seq-len {positions} or less")


PICKLED_WEIGHTS = ("pytorch_model*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl")  # pickles: code can hide in them
# What the recipes, the 4-bit loader and the GGUF export are written for. A Mistral model is
# Llama's architecture plus a sliding attention window (4,096 tokens for Mistral-7B-v0.1), which
# changes nothing at the 512 and 2,048 tokens the curriculum trains at; llama.cpp runs it as `llama`.
ARCHITECTURES = ("llama", "mistral")


def check_model_folder(model_dir):
    """What a model folder must be before anything loads it or is made from it: a Llama- or
    Mistral-architecture config, no request for custom code (auto_map: transformers would offer to run the
    folder's Python), weights as safetensors only (a pickle can run code when loaded)."""
    model_dir = Path(model_dir)
    for name in ("config.json", "tokenizer_config.json"):
        path = model_dir / name
        try:
            config = json.loads(path.read_text()) if path.exists() else {}
        except ValueError:
            raise StageError(f"{path} is not valid JSON: download the model again or rerun the step that writes it") from None
        if "auto_map" in config:
            raise StageError(f"{path} asks for custom code (auto_map): refused, this project never runs a model "
                             f"folder's own Python (trust_remote_code stays off); use a folder without it")
        if name == "config.json" and config.get("model_type") not in ARCHITECTURES:
            raise StageError(f"{model_dir} is a {config.get('model_type')!r} model: the curriculum trains Llama- and "
                             f"Mistral-architecture models (model_type 'llama' or 'mistral') only")
    pickled = sorted(p.name for pattern in PICKLED_WEIGHTS for p in model_dir.glob(pattern))
    if pickled:
        raise StageError(f"{model_dir / pickled[0]} is a pickle where weights are expected: only safetensors weights "
                         f"are accepted (convert it, or download the model's *.safetensors)")


def check_weights(model_dir):
    """A model folder must hold weights, not just a config."""
    check_model_folder(model_dir)
    if not any(Path(model_dir).glob("*.safetensors")):
        raise StageError(f"{model_dir} has a config.json but no model weights (*.safetensors): download the model "
                         f"again (notebook.ipynb, section 1) or rerun the step that writes it")


def every_weight_loaded(model_dir, info):
    """Refuse a model some of whose weights were not in the folder: transformers initialises the
    missing ones at random, and training that would silently train a different model."""
    missing = list(info.get("missing_keys") or []) + list(info.get("mismatched_keys") or [])
    if missing:
        raise StageError(f"{model_dir}: {len(missing)} weights are missing or of another shape (e.g. {missing[0]}): "
                         f"they would start random; the config does not match the weights: download the model again")


def tokenizer_fingerprint(tokenizer):
    """Identity of a tokenizer: its vocabulary and special ids. Data prepared with one tokenizer is
    garbage to a model trained with another, so the train steps compare this with the manifest."""
    vocab = sorted(tokenizer.get_vocab().items())
    specials = [tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id]
    return hashlib.sha256(json.dumps([vocab, specials], ensure_ascii=False).encode()).hexdigest()[:16]


def document_ids(tokenizer, ids):
    """A document as a base model saw it in pretraining: BOS, the text's ids, EOS (each only
    where the tokenizer has one: not every Llama-architecture tokenizer defines a BOS)."""
    return ([tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []) + list(ids) + \
        ([tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else [])


def device_map():
    """Each DDP rank keeps its whole (4-bit) model on its own GPU."""
    return {"": int(os.environ.get("LOCAL_RANK", 0))} if use_cuda() else {"": "cpu"}


def parameter_count(model_dir):
    """The parameters in a model folder's safetensors files, read from their headers (no weights loaded)."""
    from safetensors import safe_open
    count = 0
    for path in sorted(Path(model_dir).glob("*.safetensors")):
        with safe_open(str(path), "pt") as weights:
            count += sum(math.prod(weights.get_slice(key).get_shape()) for key in weights.keys())
    return count


MERGE_MARGIN_GIB = 1.5  # what a merge holds besides the bf16 weights: the adapter, peft's copies of one layer, the allocator


def merge_need_gib(parameters):
    """GPU memory a merge needs: the base's bf16 weights and MERGE_MARGIN_GIB. It runs on the GPU
    when that fits the memory free (merge_device at run time, memory_plan on paper)."""
    return parameters * 2 / 2**30 + MERGE_MARGIN_GIB


def merge_device(model_dir):
    """Where a merge into `model_dir`'s weights runs: on the GPU when its bf16 weights and a margin
    fit the memory free now, else on the CPU in bf16 (a 7B model's 14.5 GB never fit a 12 GB card;
    the CPU needs as much RAM), said in one line. Without a GPU: the CPU, as every step."""
    if not use_cuda():
        return "cpu"
    import torch
    need = merge_need_gib(parameter_count(model_dir))
    torch.cuda.empty_cache()  # what PyTorch's pool keeps but no tensor uses is free for the merge
    free = torch.cuda.mem_get_info()[0] / 2**30
    if need <= free:
        return "cuda"
    say(f"the merge runs on the CPU: {model_dir}'s bf16 weights and the merge need ~{need:.1f} GiB, the GPU has "
        f"{free:.1f} GiB free (it needs as much RAM; a few minutes for a 7B model)")
    return "cpu"


def load_model(model_dir, dtype=None, attn_implementation="sdpa", fix=DOWNLOAD_HINT, device=None):
    """A full-precision model at `dtype` (default: compute_dtype()), whatever dtype it was saved in;
    on `device` ("cpu" or "cuda"; default: this process's GPU, else the CPU)."""
    from transformers import AutoModelForCausalLM
    require(Path(model_dir) / "config.json", "model", fix)
    check_weights(model_dir)
    try:
        model, info = AutoModelForCausalLM.from_pretrained(
            model_dir, dtype=dtype or compute_dtype(), device_map=device_map() if device in (None, "cuda") else {"": device},
            attn_implementation=attn_implementation,
            trust_remote_code=False, output_loading_info=True)
    except Exception as error:  # truncated or corrupt weights: safetensors, OSError, ValueError...
        if "out of memory" in str(error).lower():
            raise
        if "flash_attn" in str(error) or "FlashAttention" in str(error):
            raise StageError(f"--attn-implementation {attn_implementation}: {str(error).splitlines()[0][:160]} "
                             f"(use --attn-implementation sdpa)") from None
        raise StageError(f"the model in {model_dir} cannot be loaded ({str(error).splitlines()[0][:160]}): "
                         f"download it again or rerun the step that writes it") from None
    every_weight_loaded(model_dir, info)
    return model


def load_model_4bit(model_dir, attn_implementation="sdpa"):
    """QLoRA's base: NF4 weights with double quantization, computing in bf16 on GPU."""
    import bitsandbytes as bnb
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    require(Path(model_dir) / "config.json", "model", "run the previous training step first")
    check_weights(model_dir)
    quantization = BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute_dtype(),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            model, info = AutoModelForCausalLM.from_pretrained(
                model_dir, quantization_config=quantization, dtype=compute_dtype(), device_map=device_map(),
                attn_implementation=attn_implementation, trust_remote_code=False, output_loading_info=True)
        except Exception as error:  # noqa: BLE001 - corrupt weights: one line
            if "out of memory" in str(error).lower():
                raise
            raise StageError(f"the model in {model_dir} cannot be loaded ({str(error).splitlines()[0][:160]}): "
                             f"rerun the step that writes it") from None
    every_weight_loaded(model_dir, info)
    if not use_cuda():
        # bitsandbytes 0.50 on CPUs with avx512_bf16 repacks the 4-bit weights during an eval-mode
        # forward, after which the gradients of a training step are silently wrong.
        for module in model.modules():
            if isinstance(module, bnb.nn.Linear4bit):
                module.support_avx512bf16_for_cpu = False
    return model


def load_adapter(model, adapter_dir, trainable=False):
    """A LoRA adapter (peft's folder) applied on `model`: safetensors only, checked before peft
    reads it (peft would unpickle an adapter_model.bin; a pickle can run code when loaded).
    `trainable`: peft's default loads an adapter frozen, and a continued adapter would learn nothing."""
    from peft import PeftModel
    adapter_dir = Path(adapter_dir)
    pickled = sorted(p.name for pattern in ("adapter_model.bin", *PICKLED_WEIGHTS) for p in adapter_dir.glob(pattern))
    if pickled:
        raise StageError(f"{adapter_dir / pickled[0]} is a pickle where an adapter is expected: only safetensors "
                         f"adapters are accepted (convert it to adapter_model.safetensors, or retrain that stage)")
    if not (adapter_dir / "adapter_model.safetensors").exists() or not (adapter_dir / "adapter_config.json").exists():
        raise StageError(f"{adapter_dir} holds no adapter (adapter_config.json + adapter_model.safetensors): "
                         f"rerun the step that writes it")
    return PeftModel.from_pretrained(model, adapter_dir, is_trainable=trainable)


def tensor_digest(state_dict):
    """A short hash of tensors by name (fp32 bytes), to prove two adapters equal or different."""
    import torch
    h = hashlib.sha256()
    for name in sorted(state_dict):
        h.update(name.encode())
        h.update(state_dict[name].detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def versions():
    """The versions of the stack, recorded in every manifest."""
    import importlib.metadata as md
    names = ["torch", "transformers", "datasets", "tokenizers", "peft", "bitsandbytes", "accelerate", "pymupdf", "pyarrow"]
    out = {}
    for name in names:
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    return out
