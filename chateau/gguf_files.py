"""GGUF files in and out. In: a GGUF model (as llama.cpp, Ollama and many downloads ship them) ->
an ordinary safetensors model folder that every step can start from (transformers reads GGUF
with the `gguf` package and dequantizes it to float)."""
import shutil
from pathlib import Path

from chateau.cli import StageError


def convert_gguf(gguf_path, out_dir, dtype="float32"):
    """`gguf_path` (a Llama-architecture GGUF, any quantization transformers reads) -> `out_dir`:
    config.json, model.safetensors at `dtype` and the tokenizer (tokenizer.json), written into a
    staging folder and renamed when complete. float32 keeps the dequantized weights exactly (a
    4-bit block's scale x code + minimum is not always a bf16 number). Returns `out_dir`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_path, out_dir = Path(gguf_path), Path(out_dir)
    if not gguf_path.is_file():
        raise StageError(f"GGUF file not found at {gguf_path}")
    if _magic(gguf_path) != b"GGUF":
        raise StageError(f"{gguf_path} is not a GGUF file (no GGUF header): download it again")
    try:
        model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=getattr(torch, dtype))
        tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    except (ValueError, KeyError, OSError) as error:
        raise StageError(f"{gguf_path} could not be read as a model ({error}): a Llama-architecture GGUF is needed") from None
    # The weights are plain floats now: a GGUF quantization_config left in config.json would make
    # every later load try to dequantize them again.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    staging = out_dir.parent / f".{out_dir.name}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    shutil.rmtree(out_dir, ignore_errors=True)
    staging.rename(out_dir)
    return out_dir


def _magic(path):
    with open(path, "rb") as f:
        return f.read(4)


def main():
    """python -m chateau.gguf_files FILE.gguf OUT_DIR: a GGUF base model -> a safetensors folder
    (then pass --base-model OUT_DIR to the steps that read the base model: 1a, 1b, 1c, 2a)."""
    import argparse
    from chateau.cli import run
    parser = argparse.ArgumentParser(description=main.__doc__, allow_abbrev=False)
    parser.add_argument("gguf_file", type=Path)
    parser.add_argument("out_dir", type=Path)
    args = parser.parse_args()
    run(lambda: print(f"converted: {convert_gguf(args.gguf_file, args.out_dir)}"))


if __name__ == "__main__":
    main()
