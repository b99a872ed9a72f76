"""GGUF files in and out, with the `gguf` package (the format's own library, from llama.cpp).

In: a GGUF model (as llama.cpp, Ollama and many downloads ship them) -> an ordinary safetensors
folder that every step can start from (transformers reads GGUF and dequantizes it to float).

Out (step 4): a trained Llama- or Mistral-architecture model folder -> one GGUF file per type,
f16 or q8_0, under llama.cpp's `llama` architecture (Mistral's layers are Llama's), with what
llama.cpp needs to run it alone: the tensors under llama.cpp's names (Q and K rows permuted as
llama.cpp's rotary embedding expects), the hyperparameters (context, rope, norm), and the
tokenizer: Llama's SentencePiece-style BPE ("llama", its <0x..> byte tokens typed BYTE) or a
byte-level BPE ("gpt2"), with merges, token types and special tokens. A sliding window (Mistral's)
that llama.cpp's `llama` architecture does not have caps the file's context at the window."""
import contextlib
import json
import re
import shutil
from pathlib import Path

from chateau import models
from chateau.cli import StageError, say


def read_gguf(gguf_path, dtype="float32"):
    """(model, tokenizer) of a Llama-architecture GGUF file, as transformers reads it (any
    quantization it reads, dequantized to `dtype`)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_path = Path(gguf_path)
    if not gguf_path.is_file():
        raise StageError(f"GGUF file not found at {gguf_path}")
    if _magic(gguf_path) != b"GGUF":
        raise StageError(f"{gguf_path} is not a GGUF file (no GGUF header): download it again")
    try:
        model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=getattr(torch, dtype),
                                                     trust_remote_code=False)
        tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, trust_remote_code=False)
    except (ValueError, KeyError, OSError) as error:
        raise StageError(f"{gguf_path} could not be read as a model ({error}): a Llama-architecture GGUF is needed") from None
    return model, tokenizer


def convert_gguf(gguf_path, out_dir, dtype="float32", read=None):
    """`gguf_path` (a Llama-architecture GGUF, any quantization transformers reads) -> `out_dir`:
    config.json, model.safetensors at `dtype` and the tokenizer (tokenizer.json), written into a
    staging folder and renamed when complete. float32 keeps the dequantized weights exactly (a
    4-bit block's scale x code + minimum is not always a bf16 number). `read`: the (model,
    tokenizer) read_gguf already gave, not read again. Returns `out_dir`."""
    out_dir = Path(out_dir)
    model, tokenizer = read or read_gguf(gguf_path, dtype)
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


# llama.cpp's pre-tokenizer names for the byte-level BPE pre-tokenizers transformers' tokenizers
# spell in tokenizer.json (llama.cpp splits text with the regexes these names stand for; a wrong
# name splits digits or punctuation differently from the model's tokenizer).
LLAMA3_SPLIT = ("(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|"
                "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+")


def _byte_level_pre(pre_tokenizer):
    """llama.cpp's name for a byte-level BPE tokenizer's pre-tokenizer, matched to what it does:
    GPT-2's split ("gpt-2"); each digit apart, then GPT-2's split ("smollm", SmolLM's own); Llama
    3's split ("llama-bpe"). Any other is refused: llama.cpp would split text another way."""
    steps = pre_tokenizer.get("pretokenizers", [pre_tokenizer]) if pre_tokenizer else []
    kinds = [(step["type"], step.get("use_regex"), step.get("individual_digits"),
              (step.get("pattern") or {}).get("Regex")) for step in steps]
    if kinds == [("ByteLevel", True, None, None)]:
        return "gpt-2"
    if kinds == [("Digits", None, True, None), ("ByteLevel", True, None, None)]:
        return "smollm"
    if kinds == [("Split", None, None, LLAMA3_SPLIT), ("ByteLevel", False, None, None)]:
        return "llama-bpe"
    raise StageError(f"this byte-level tokenizer's pre-tokenizer ({json.dumps(pre_tokenizer)[:160]}) has no "
                     f"llama.cpp name here: llama.cpp would split text differently from the model's tokenizer")


def _space_prefix(spec):
    """Whether a SentencePiece-style tokenizer puts "▁" before the first word (llama.cpp's
    add_space_prefix): Metaspace's prepend_scheme, or Llama 2's Prepend("▁") normalizer."""
    text = json.dumps(spec.get("pre_tokenizer")) + json.dumps(spec.get("normalizer"))
    if '"Prepend"' in text:
        return True
    metaspace = re.search(r'"prepend_scheme": "(\w+)"', text)
    return metaspace.group(1) != "never" if metaspace else '"add_prefix_space": true' in text


def _token_type(i, token, tokenizer, by_id, special):
    """llama.cpp's type of token `i`: a byte-fallback token <0xNN> is BYTE (llama.cpp writes a
    character its pieces lack with them, and decodes them to that byte) before anything else, as
    llama.cpp's converter decides; then unknown, control (special), normal."""
    if i not in by_id:
        return _TOKEN_UNUSED
    if re.fullmatch(r"<0x[0-9A-Fa-f]{2}>", token):
        return _TOKEN_BYTE
    return _TOKEN_UNKNOWN if i == tokenizer.unk_token_id else _TOKEN_CONTROL if i in special else _TOKEN_NORMAL


def _tokenizer_fields(tokenizer, vocab_size):
    """(model, pre, tokens, scores, types, merges, space_prefix) as llama.cpp's GGUF spells a tokenizer."""
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    if spec["model"]["type"] != "BPE":
        raise StageError(f"only BPE tokenizers export to GGUF here (this one is {spec['model']['type']})")
    byte_level = "ByteLevel" in json.dumps(spec.get("pre_tokenizer")) + json.dumps(spec.get("decoder"))
    by_id = {i: t for t, i in tokenizer.get_vocab().items()}
    # Every special added token is a control token (SmolLM2: its 17; a tokenizer's all_special_ids
    # lists only the few with a role, bos/eos/unk/pad): llama.cpp never splits them from text.
    special = set(tokenizer.all_special_ids) | {i for i, t in tokenizer.added_tokens_decoder.items() if t.special}
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"].get("merges", [])]
    # llama.cpp's SentencePiece-style tokenizer merges, at each step, the adjacent pair whose
    # concatenation has the highest score; BPE merges the pair of lowest rank. A piece's score is
    # therefore minus the rank of the merge that makes it (pieces no merge makes come after all):
    # scores by id would merge Llama 2's "▁▁" (id 259, the last merge) before "▁P" (rank 102).
    rank = {}
    for r, merge in enumerate(merges):
        rank.setdefault(merge.replace(" ", ""), r)
    tokens, scores, types = [], [], []
    for i in range(vocab_size):
        token = by_id.get(i, f"[PAD{i}]")
        tokens.append(token)
        scores.append(0.0 if i in special else -float(rank.get(token, len(merges) + i)))
        types.append(_token_type(i, token, tokenizer, by_id, special))
    if byte_level:
        return ("gpt2", _byte_level_pre(spec.get("pre_tokenizer"))), tokens, scores, types, merges, False
    return ("llama", None), tokens, scores, types, merges, _space_prefix(spec)


def gguf_context(config):
    """What the GGUF's context is and why, for a model's `config` (a transformers config, a
    config.json's dict, or the model folder): {"context_length": written in the file,
    "max_position_embeddings", "sliding_window" (None without one), "capped_at_sliding_window"}.
    A sliding window shorter than the positions (Mistral-7B-v0.1: 4096 of 32768) caps the context at
    the window: llama.cpp's `llama` architecture attends fully, which over at most `sliding_window`
    tokens is exactly the model's own attention, and beyond them would differ from it."""
    if isinstance(config, (str, Path)):
        config = json.loads((Path(config) / "config.json").read_text())
    get = config.get if isinstance(config, dict) else lambda key, default=None: getattr(config, key, default)
    positions, window = get("max_position_embeddings"), get("sliding_window")
    capped = window is not None and positions is not None and window < positions
    return {"context_length": window if capped else positions, "max_position_embeddings": positions,
            "sliding_window": window, "capped_at_sliding_window": capped}


def sliding_window_line(context):
    """The line step 4 says when gguf_context capped the context (None when it did not)."""
    if not context["capped_at_sliding_window"]:
        return None
    window = context["sliding_window"]
    return (f"4: the model's sliding window is {window} tokens (of its {context['max_position_embeddings']} positions); "
            f"llama.cpp's llama architecture attends fully, so the GGUF's context is {window} tokens "
            f"(beyond them, it would differ from the model)")


def export_gguf(model_dir, out_path, kind, name):
    """`model_dir` (a Llama- or Mistral-architecture model + tokenizer) -> `out_path`, a GGUF of
    `kind` (f16: every matrix in float16; q8_0: every matrix in 8-bit blocks of 32, norms in
    float32), under llama.cpp's `llama` architecture, its context as gguf_context says (step 4
    says it when a sliding window caps it: sliding_window_line). The caller gives a staging path and publishes it once the
    file has passed its checks."""
    import gguf
    import numpy as np
    from gguf.quants import quantize
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    config = AutoConfig.from_pretrained(model_dir, trust_remote_code=False)
    if config.model_type not in models.ARCHITECTURES:  # Mistral: converted as Llama by llama.cpp's own converter
        raise StageError(f"{model_dir} is a {config.model_type} model: only the Llama and Mistral architectures export here")
    tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=False)
    # In the dtype it was saved in (a merged 7B model: bf16, 14.5 GB, not 29 in fp32); each tensor is
    # made float32 as it is written, which is exact from bf16, so the file is the same either way.
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype="auto", trust_remote_code=False)
    n_head, n_kv = config.num_attention_heads, config.num_key_value_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // n_head
    rope = (getattr(config, "rope_parameters", None) or {}).get("rope_theta") or getattr(config, "rope_theta", 10000.0)
    (model_type, pre), tokens, scores, types, merges, space_prefix = _tokenizer_fields(tokenizer, config.vocab_size)
    context = gguf_context(config)

    writer = gguf.GGUFWriter(out_path, "llama")
    writer.add_name(name)
    writer.add_context_length(context["context_length"])
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
    # Every training document began with BOS (models.document_ids): so does every prompt in
    # llama.cpp, exactly when the tokenizer has one; none ends with EOS.
    writer.add_add_bos_token(tokenizer.bos_token_id is not None)
    writer.add_add_eos_token(False)
    writer.add_add_space_prefix(space_prefix)
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
    return Path(out_path)


@contextlib.contextmanager
def f16_for_quantizing(model_dir, published, temporary, name):
    """The f16 file llama.cpp's quantizer starts from: `published`, when step 4's record says it is
    this model's (step 4 writes f16 first); else a `temporary` one, removed afterwards."""
    if published is not None:
        yield published
        return
    try:
        yield export_gguf(model_dir, temporary, "f16", name)
    finally:
        Path(temporary).unlink(missing_ok=True)


class Checks:
    """Step 4's checks of one exported file against the model it came from, the references
    (source model in float32, the novel's held-out windows and text) loaded once for all files."""

    # The novel's held-out windows, cut into pieces of at most 512 tokens, up to 1,024 tokens in
    # all: top-1 agreement over ~1,000 next tokens is known to about +-1.5% (binomial, at 0.95).
    PIECE_TOKENS, TOTAL_TOKENS = 512, 1024

    def __init__(self, model_dir, project):
        from datasets import load_from_disk
        from chateau import generation, models, stages
        self.model_dir, self.project = model_dir, project
        self.reference = float_model(model_dir)
        self.tokenizer = models.load_tokenizer(model_dir)
        rows = load_from_disk(str(stages.folder(project, stages.NOVEL_DATA)))["validation"]["input_ids"]
        pieces = [list(row[i:i + self.PIECE_TOKENS]) for row in rows for i in range(0, len(row), self.PIECE_TOKENS)]
        self.windows = []
        while pieces and sum(map(len, self.windows)) + len(pieces[0]) <= self.TOTAL_TOKENS:
            self.windows.append(pieces.pop(0))
        self.texts = [generation.decode_rows(self.tokenizer, rows[:8])[:3000]]

    def run(self, path, kind):
        """{"llama_cpp": figures, "round_trip": transformers' figures}; raises StageError naming
        what failed in llama.cpp (the file is then not published)."""
        from chateau import llama_cpp_check
        out = {}
        if llama_cpp_check.available():  # first: the engine users run it with, and the faster check
            figures, problems = llama_cpp_check.check(path, self.tokenizer, self.reference, self.windows,
                                                      [*self.texts, llama_cpp_check.TYPOGRAPHY], kind)
            out["llama_cpp"] = figures
            if problems:
                raise StageError(f"it failed its check in llama.cpp: {'; '.join(problems)}")
        else:
            out["llama_cpp"] = f"not checked: llama-cpp-python is not installed ({llama_cpp_check.INSTALL_HINT})"
            print(f"4: {kind} not checked in llama.cpp: {llama_cpp_check.INSTALL_HINT}")
        if kind in EXPORT_TYPES:
            out["round_trip"] = round_trip(self.model_dir, path, self.project, source=self.reference)
        engine = out["llama_cpp"]
        read = out.get("round_trip")
        print(f"4: {kind}: " + (f"llama.cpp top-1 {engine['top1_agreement']:.1%}, perplexity {engine['perplexity_source']:.2f} -> "
                               f"{engine['perplexity_gguf']:.2f}, tokenizer ids equal; " if isinstance(engine, dict) else "")
              + (f"transformers top-1 {read['top1_agreement']:.1%}, perplexity {read['perplexity_source']:.2f} -> "
                 f"{read['perplexity_gguf']:.2f}" if isinstance(read, dict) else "transformers cannot read this type"))
        return out


def float_model(model_dir):
    """A model folder loaded in float32 for comparisons, whatever dtype it was saved in."""
    import torch
    from transformers import AutoModelForCausalLM
    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, trust_remote_code=False).eval()


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
    exported = AutoModelForCausalLM.from_pretrained(Path(gguf_path).parent, gguf_file=Path(gguf_path).name, trust_remote_code=False,
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
    # As the model saw text in training (BOS where the tokenizer has one), and as the file's own
    # add_bos_token makes every reader of it tokenize a prompt.
    from chateau.generation import prompt_ids
    same_ids = prompt_ids(AutoTokenizer.from_pretrained(model_dir, trust_remote_code=False), page) == \
        AutoTokenizer.from_pretrained(Path(gguf_path).parent, gguf_file=Path(gguf_path).name, trust_remote_code=False)(page).input_ids
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
