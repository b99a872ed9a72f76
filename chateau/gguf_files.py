"""GGUF files in and out, with the `gguf` package (the format's own library, from llama.cpp).

In: a GGUF model (as llama.cpp, Ollama and many downloads ship them) -> an ordinary safetensors
folder that every step can start from (transformers reads GGUF and dequantizes it to float).

Out (step 4): a trained Llama-architecture model folder -> one GGUF file per type, f16 or q8_0,
with what llama.cpp needs to run it alone: the tensors under llama.cpp's names (Q and K rows
permuted as llama.cpp's rotary embedding expects), the hyperparameters (context, rope, norm),
and the tokenizer: Llama's SentencePiece-style BPE ("llama") or a byte-level BPE ("gpt2"), with
merges, token types and special tokens."""
import json
import re
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


EXPORT_TYPES = ("f16", "q8_0")
# In q8_0 files the embedding matrix and the output layer stay float16 (llama-quantize's
# --token-embedding-type / --output-tensor-type f16): with tied embeddings the same matrix
# scores every token of the vocabulary, and its 8-bit error reaches the logits directly.
KEEP_F16 = ("token_embd.weight", "output.weight")
_TOKEN_NORMAL, _TOKEN_UNKNOWN, _TOKEN_CONTROL, _TOKEN_UNUSED, _TOKEN_BYTE = 1, 2, 3, 5, 6


def _permute(weights, n_head):
    """HF's rotary layout (halves) -> llama.cpp's (interleaved pairs), per head, on Q and K rows."""
    return (weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
            .swapaxes(1, 2).reshape(weights.shape))


def _tokenizer_fields(tokenizer, vocab_size):
    """(model, pre, tokens, scores, types, merges) as llama.cpp's GGUF spells a tokenizer."""
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    if spec["model"]["type"] != "BPE":
        raise StageError(f"only BPE tokenizers export to GGUF here (this one is {spec['model']['type']})")
    byte_level = "ByteLevel" in json.dumps(spec.get("pre_tokenizer")) + json.dumps(spec.get("decoder"))
    by_id = {i: t for t, i in tokenizer.get_vocab().items()}
    special = set(tokenizer.all_special_ids)
    tokens, scores, types = [], [], []
    for i in range(vocab_size):
        token = by_id.get(i, f"[PAD{i}]")
        tokens.append(token)
        scores.append(0.0 if i in special else -float(i))  # SentencePiece-BPE order: earlier pieces merge first
        types.append(_TOKEN_UNUSED if i not in by_id else _TOKEN_UNKNOWN if i == tokenizer.unk_token_id
                     else _TOKEN_CONTROL if i in special else _TOKEN_BYTE if re.fullmatch(r"<0x[0-9A-F]{2}>", token)
                     else _TOKEN_NORMAL)
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"].get("merges", [])]
    # gpt2 / gpt-2: byte-level BPE with GPT-2's split, which is what transformers' tokenizer does too.
    return ("gpt2", "gpt-2") if byte_level else ("llama", None), tokens, scores, types, merges


def export_gguf(model_dir, out_path, kind, name):
    """`model_dir` (a Llama-architecture model + tokenizer) -> `out_path`, a GGUF of `kind` (f16:
    every matrix in float16; q8_0: every matrix in 8-bit blocks of 32, norms in float32). Written
    to a staging file and renamed when complete."""
    import gguf
    import numpy as np
    import torch
    from gguf.quants import quantize
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    config = AutoConfig.from_pretrained(model_dir)
    if config.model_type != "llama":
        raise StageError(f"{model_dir} is a {config.model_type} model: only the Llama architecture exports here")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    n_head, n_kv = config.num_attention_heads, config.num_key_value_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // n_head
    rope = (getattr(config, "rope_parameters", None) or {}).get("rope_theta") or getattr(config, "rope_theta", 10000.0)
    (model_type, pre), tokens, scores, types, merges = _tokenizer_fields(tokenizer, config.vocab_size)

    staging = Path(out_path).with_name(Path(out_path).name + ".partial")
    writer = gguf.GGUFWriter(staging, "llama")
    writer.add_name(name)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_kv)
    writer.add_rope_freq_base(float(rope))
    writer.add_rope_dimension_count(head_dim)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if kind == "f16" else gguf.LlamaFileType.MOSTLY_Q8_0)
    writer.add_tokenizer_model(model_type)
    if pre:
        writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    if merges:
        writer.add_token_merges(merges)
    for key, value in (("bos", tokenizer.bos_token_id), ("eos", tokenizer.eos_token_id),
                       ("unk", tokenizer.unk_token_id), ("pad", tokenizer.pad_token_id)):
        if value is not None:
            getattr(writer, f"add_{key}_token_id")(value)
    writer.add_add_bos_token(bool(getattr(tokenizer, "add_bos_token", model_type == "llama")))
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    for hf_name, tensor in model.state_dict().items():
        if hf_name == "lm_head.weight" and config.tie_word_embeddings:
            continue  # llama.cpp uses the embeddings as the output layer when there is none
        data = tensor.detach().float()
        if hf_name.endswith("q_proj.weight"):
            data = _permute(data, n_head)
        elif hf_name.endswith("k_proj.weight"):
            data = _permute(data, n_kv)
        data = data.numpy()
        gguf_name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            raise StageError(f"{model_dir}: no GGUF name for tensor {hf_name}")
        if data.ndim == 1:  # norms stay float32, as llama.cpp keeps them
            writer.add_tensor(gguf_name, data.astype(np.float32))
        elif kind == "q8_0" and data.shape[-1] % 32 == 0 and gguf_name not in KEEP_F16:
            writer.add_tensor(gguf_name, quantize(data, gguf.GGMLQuantizationType.Q8_0), raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        else:  # f16, or a row that is no whole number of q8_0 blocks
            writer.add_tensor(gguf_name, data.astype(np.float16))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    staging.rename(out_path)
    return Path(out_path)


def float_model(model_dir):
    """A model folder loaded in float32 for comparisons, whatever dtype it was saved in."""
    import torch
    from transformers import AutoModelForCausalLM
    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()


def round_trip(model_dir, gguf_path, project, max_windows=8, source=None):
    """Read `gguf_path` back with transformers and compare it with `model_dir` (or the already
    loaded float32 `source`) on the novel's held-out windows: top-1 next-token agreement,
    perplexities, the largest logit difference, and whether the GGUF's tokenizer encodes a page of
    the novel to the same ids."""
    import math
    import torch
    from datasets import load_from_disk
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from chateau import stages

    source = source or float_model(model_dir)
    exported = AutoModelForCausalLM.from_pretrained(Path(gguf_path).parent, gguf_file=Path(gguf_path).name,
                                                    dtype=torch.float32).eval()
    rows = load_from_disk(str(stages.folder(project, stages.NOVEL_DATA)))["validation"]["input_ids"][:max_windows]
    agree = total = 0
    losses, max_diff = [0.0, 0.0], 0.0
    with torch.no_grad():
        for row in rows:
            ids = torch.tensor([row])
            a, b = source(ids, labels=ids), exported(ids, labels=ids)
            agree += (a.logits.argmax(-1) == b.logits.argmax(-1)).sum().item()
            total += ids.numel()
            losses[0] += a.loss.item() / len(rows)
            losses[1] += b.loss.item() / len(rows)
            max_diff = max(max_diff, (a.logits - b.logits).abs().max().item())
    page = (stages.folder(project, stages.NOVEL_DATA) / "clean_text.txt").read_text()[:3000]
    same_ids = AutoTokenizer.from_pretrained(model_dir)(page).input_ids == \
        AutoTokenizer.from_pretrained(Path(gguf_path).parent, gguf_file=Path(gguf_path).name)(page).input_ids
    return {"top1_agreement": round(agree / total, 4), "perplexity_source": round(math.exp(losses[0]), 4),
            "perplexity_gguf": round(math.exp(losses[1]), 4), "max_logit_difference": round(max_diff, 5),
            "tokenizer_same_ids": same_ids}


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
