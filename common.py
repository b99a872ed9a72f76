"""Shared plumbing for the numbered scripts: paths, settings, model/tokenizer loading, prepared
data I/O and manifests. No training logic lives here (see training.py); no text cleaning (cleaning.py)."""
import argparse
import dataclasses
import hashlib
import json
import logging
import os
import shutil
import sys
import typing
import warnings
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # we fork worker pools ourselves
# torchao announces, at import, CUDA kernels it cannot load on other GPUs or a CPU, and torch warns
# about its enum registrations: harmless lines that would bury each step's own output.
logging.getLogger("torchao").setLevel(logging.ERROR)
logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)

# The layout under the project folder (mounted at /project in the container).
BASE_MODEL = "models/TinyLlama_v1.1"
GALLICA_DIR = "datasets/French-PD-Books"
NOVEL_PDF = "Kafka-Le-Chateau.pdf"
DATA = {"1a": "data/1a_gallica_fullweight", "1b": "data/1b_gallica_qlora", "1c": "data/1c_kafka"}
MODELS = {"2a": "models/2a_gallica_fullweight", "2b": "models/2b_gallica_qlora", "2c": "models/2c_kafka_qlora"}
SCRIPTS = {
    "1a": "1a_prepare_gallica_fullweight.py", "1b": "1b_prepare_gallica_QLoRA.py", "1c": "1c_prepare_kafka.py",
    "2a": "2a_train_gallica_fullweight.py", "2b": "2b_train_gallica_QLoRA.py", "2c": "2c_train_kafka_QLoRA.py",
    "3": "3_continue_kafka.py",
}


class StageError(SystemExit):
    """A problem the user can fix: printed as one line, exit code 2."""

    def __init__(self, message):
        super().__init__(2)
        self.message = message


def run(main):
    """Entry point of every script: a StageError becomes one clear line and exit code 2."""
    try:
        main()
    except StageError as error:
        print(f"error: {error.message}", file=sys.stderr)
        raise SystemExit(2)


def project_dir(value=""):
    """--project-dir, else $KAFKA_PROJECT_DIR, else /project (the container's volume)."""
    return Path(value or os.environ.get("KAFKA_PROJECT_DIR") or "/project")


def rank():
    """This process's rank under torchrun / accelerate launch; 0 in a plain run."""
    return int(os.environ.get("RANK", 0))


def is_main_process():
    """Rank 0: the process that talks and writes."""
    return rank() == 0


def say(message):
    if is_main_process():
        print(message, flush=True)


def run_hint(stage):
    return f"run `python {SCRIPTS[stage]}` first"


# ---------------------------------------------------------------------------------------------
# Settings: one dataclass per script, every field a --flag.

def setting(default, help):
    return dataclasses.field(default=default, metadata={"help": help})


def _parse_bool(text):
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults shown; the script's docstring (its commands) kept as written."""


def parse_settings(cls, argv=None, description=None):
    """Build `cls` from the command line: `--field-name value` for each field, defaults shown by
    --help, unknown flags refused, then every problem from `cls.problems()` reported at once."""
    parser = argparse.ArgumentParser(description=description, formatter_class=HelpFormatter)
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        kind = hints[field.name]
        parser.add_argument(
            "--" + field.name.replace("_", "-"), dest=field.name, default=field.default,
            type=_parse_bool if kind is bool else kind, help=field.metadata.get("help", "").replace("%", "%%"),
            metavar=kind.__name__.upper(), **({"nargs": "?", "const": True} if kind is bool else {}),
        )
    settings = cls(**vars(parser.parse_args(argv)))
    problems = settings.problems() if hasattr(settings, "problems") else []
    if problems:
        parser.error("\n  ".join(["invalid settings:"] + problems))
    return settings


def positive(settings, *names, allow=()):
    """Problems for fields that must be > 0 (or one of `allow`, e.g. -1 for "all")."""
    return [f"--{n.replace('_', '-')} must be > 0 (got {getattr(settings, n)})"
            for n in names if getattr(settings, n) <= 0 and getattr(settings, n) not in allow]


def save_settings(settings, path):
    Path(path).write_text(json.dumps(dataclasses.asdict(settings), indent=2, ensure_ascii=False) + "\n")


# ---------------------------------------------------------------------------------------------
# Devices, tokenizer and models.

def use_cuda():
    import torch
    return torch.cuda.is_available()


def compute_dtype():
    """bf16 on GPU (TinyLlama's training precision); fp32 on CPU, where bf16 only costs accuracy."""
    import torch
    return torch.bfloat16 if use_cuda() else torch.float32


def check_device():
    """Warn once when there is no GPU. On CPU, torch.compile (used by torchao's optimizer step)
    is turned off: compiling costs ~20 s per tensor shape there, and eager mode computes the same."""
    if use_cuda() and os.environ.get("KAFKA_MEMORY_CAP_GIB"):  # bench/train_bench.py: act like a smaller card
        import torch
        total = torch.cuda.get_device_properties(0).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, float(os.environ["KAFKA_MEMORY_CAP_GIB"]) * 2**30 / total))
    if not use_cuda():
        os.environ["TORCHDYNAMO_DISABLE"] = "1"
        print("warning: no CUDA GPU found: running on CPU (slow; fine for the tiny demo and the tests)", file=sys.stderr)


def require(path, what, fix):
    if not Path(path).exists():
        raise StageError(f"{what} not found at {path}: {fix}")
    return Path(path)


def load_tokenizer(model_dir):
    from transformers import AutoTokenizer
    require(Path(model_dir) / "config.json", "model", "download it with notebook.ipynb (section 1)")
    return AutoTokenizer.from_pretrained(model_dir)  # trust_remote_code stays off


def tokenizer_fingerprint(tokenizer):
    """Identity of a tokenizer: its vocabulary and special ids. Data prepared with one tokenizer is
    garbage to a model trained with another, so the train steps compare this with the manifest."""
    vocab = sorted(tokenizer.get_vocab().items())
    specials = [tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id]
    return hashlib.sha256(json.dumps([vocab, specials], ensure_ascii=False).encode()).hexdigest()[:16]


def device_map():
    """Each DDP rank keeps its whole (4-bit) model on its own GPU."""
    return {"": int(os.environ.get("LOCAL_RANK", 0))} if use_cuda() else {"": "cpu"}


def load_model(model_dir, dtype=None, attn_implementation="sdpa"):
    from transformers import AutoModelForCausalLM
    require(Path(model_dir) / "config.json", "model", "download it with notebook.ipynb (section 1)")
    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype or compute_dtype(), device_map=device_map(),
                                                attn_implementation=attn_implementation)


def load_model_4bit(model_dir, attn_implementation="sdpa"):
    """QLoRA's base: NF4 weights with double quantization, computing in bf16 on GPU."""
    import bitsandbytes as bnb
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    require(Path(model_dir) / "config.json", "model", "run the previous training step first")
    quantization = BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute_dtype(),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = AutoModelForCausalLM.from_pretrained(
            model_dir, quantization_config=quantization, dtype=compute_dtype(), device_map=device_map(),
            attn_implementation=attn_implementation)
    if not use_cuda():
        # bitsandbytes 0.50 on CPUs with avx512_bf16 repacks the 4-bit weights during an eval-mode
        # forward, after which the gradients of a training step are silently wrong.
        for module in model.modules():
            if isinstance(module, bnb.nn.Linear4bit):
                module.support_avx512bf16_for_cpu = False
    return model


def tensor_digest(state_dict):
    """A short hash of tensors by name (fp32 bytes), to prove two adapters equal or different."""
    import torch
    h = hashlib.sha256()
    for name in sorted(state_dict):
        h.update(name.encode())
        h.update(state_dict[name].detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def versions():
    import importlib.metadata as md
    names = ["torch", "transformers", "datasets", "tokenizers", "peft", "bitsandbytes", "accelerate", "pymupdf", "pyarrow"]
    out = {}
    for name in names:
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    return out


# ---------------------------------------------------------------------------------------------
# Prepared data: a DatasetDict + manifest.json, written atomically.

def read_manifest(out_dir):
    path = Path(out_dir) / "manifest.json"
    return json.loads(path.read_text()) if path.exists() else None


def check_not_prepared(out_dir, identity, overwrite):
    """True if `out_dir` already holds data prepared from the same inputs with the same settings
    (`identity`), so the step can say "already prepared" and stop."""
    manifest = read_manifest(out_dir)
    if manifest is None:
        return False
    if manifest["identity"] == identity and not overwrite:
        return True
    if not overwrite:
        raise StageError(f"{out_dir} was prepared from other inputs or settings: pass --overwrite to replace it")
    return False


def staging_dir(out_dir):
    """A fresh sibling folder to write into; renamed onto `out_dir` only when complete, so an
    interrupted run never leaves a folder that looks finished."""
    staging = Path(out_dir).parent / f".{Path(out_dir).name}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    return staging


def publish(staging, out_dir, manifest):
    """manifest.json is written last, then the folder is swapped in with a rename."""
    (Path(staging) / "manifest.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
    out_dir = Path(out_dir)
    if out_dir.exists():
        old = out_dir.parent / f".{out_dir.name}.old"
        shutil.rmtree(old, ignore_errors=True)
        out_dir.rename(old)
        Path(staging).rename(out_dir)
        shutil.rmtree(old)
    else:
        Path(staging).rename(out_dir)


def load_prepared(project, stage, tokenizer=None, max_positions=None):
    """The DatasetDict prepared by step `stage` ("1a", "1b", "1c"), checked against the model."""
    from datasets import load_from_disk
    out_dir = project / DATA[stage]
    manifest = read_manifest(out_dir)
    if manifest is None:
        raise StageError(f"prepared data missing or incomplete at {out_dir}: {run_hint(stage)}")
    if tokenizer is not None and manifest["tokenizer_fingerprint"] != tokenizer_fingerprint(tokenizer):
        raise StageError(f"{out_dir} was tokenized with another tokenizer than the model's: "
                         f"rerun `python {SCRIPTS[stage]} --overwrite`")
    if max_positions is not None and manifest["settings"]["seq_len"] > max_positions:
        raise StageError(f"{out_dir} has {manifest['settings']['seq_len']}-token samples but the model's context is "
                         f"{max_positions}: rerun `python {SCRIPTS[stage]} --seq-len {max_positions} --overwrite`")
    return load_from_disk(str(out_dir)), manifest
