"""Step 4's check in the engine users run the files with: llama.cpp itself (through
llama-cpp-python; llama.cpp, Ollama and LM Studio all load GGUF files with its code), and its own
quantizer for the types transformers' side does not write (q4_k_m and other K-quants).

llama.cpp aborts the whole process (uncatchable) on a character a vocabulary without byte tokens
cannot encode, so everything here runs in a subprocess: an abort is a clear failure of that file,
never a crash of step 4.

    python -m chateau.llama_cpp_check check FILE.gguf REQUEST.json ANSWER.json
    python -m chateau.llama_cpp_check quantize IN.gguf OUT.gguf TYPE
"""
import importlib.util
import json
import math
import re
import subprocess
import sys
from pathlib import Path

PIN = "llama-cpp-python==0.3.36"
INSTALL_HINT = f"pip install {PIN} (it builds llama.cpp from source: 10-20 minutes; the Docker image has it)"

# What each published file must reach against the model it was exported from, on the novel's
# held-out windows, in llama.cpp. f16 rounds each weight to 11 significant bits: next tokens agree
# almost always. llama.cpp's q8_0 also quantizes the activations to 8 bits in its matrix products
# (transformers' reader dequantizes the weights and computes in float32), so it drifts more than
# transformers' figures for the same file. q4_k_m keeps ~4.8 bits per weight: only perplexity is
# asked of it.
THRESHOLDS = {  # type: (min top-1 agreement or None, max relative perplexity change)
    "f16": (0.99, 0.005),
    "q8_0": (0.93, 0.03),
    "q4_k_m": (None, 0.10),
}
# Lines llama.cpp logs when it reads a file in a way that differs from the model it came from.
WARNINGS = re.compile(r"GENERATION QUALITY WILL BE DEGRADED|missing pre-tokenizer|unknown pre-tokenizer|"
                      r"special_eos_id is not in special_eog_ids|CONSIDER REGENERATING", re.I)
# The llama.cpp types step 4 makes with llama.cpp's quantizer, from the f16 file.
LLAMA_TYPES = {"q4_k_m": "LLAMA_FTYPE_MOSTLY_Q4_K_M", "q5_k_m": "LLAMA_FTYPE_MOSTLY_Q5_K_M",
               "q6_k": "LLAMA_FTYPE_MOSTLY_Q6_K", "q4_0": "LLAMA_FTYPE_MOSTLY_Q4_0"}
# French typography the tokenizers must agree on: guillemets, dashes, apostrophes, accents, digits,
# a double space and a newline.
TYPOGRAPHY = "« Déjà ? » — répondit-il, l’œil fixé sur la page 1926.  Puis :\nÇa ira."


def available():
    return importlib.util.find_spec("llama_cpp") is not None


def _run(args, timeout=900):
    return subprocess.run([sys.executable, "-m", "chateau.llama_cpp_check", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout)


def _abort_line(result):
    lines = [l for l in (result.stderr or "").splitlines() if l.strip()]
    return (lines[-1] if lines else f"exit code {result.returncode}")[:200]


def quantize(f16_path, out_path, kind):
    """llama.cpp's own quantizer: `f16_path` -> `out_path` of type `kind` (q4_k_m, ...). Returns
    {tensor type name: count} of the result (a tensor whose width does not suit a K-quant falls
    back to another type, as llama.cpp decides). Raises RuntimeError with llama.cpp's last line."""
    result = _run(["quantize", f16_path, out_path, kind])
    if result.returncode != 0 or not Path(out_path).exists():
        raise RuntimeError(f"llama.cpp's quantizer failed on {Path(f16_path).name} -> {kind}: {_abort_line(result)}")
    import gguf
    counts = {}
    for tensor in gguf.GGUFReader(str(out_path)).tensors:
        if sum(int(d) > 1 for d in tensor.shape) > 1:  # matrices only: norms stay float32
            counts[tensor.tensor_type.name] = counts.get(tensor.tensor_type.name, 0) + 1
    return counts


def unencodable(tokenizer, text):
    """The characters of `text` the tokenizer can only encode as <unk> (a vocabulary without byte
    tokens, like the test fixtures'): llama.cpp aborts on them instead."""
    if tokenizer.unk_token_id is None:
        return []
    return sorted({c for c in set(text) if not c.isspace()
                   and tokenizer.unk_token_id in tokenizer(c, add_special_tokens=False).input_ids})


def check(gguf_path, tokenizer, reference, windows, texts, kind, leave_out_unencodable=True):
    """The file read by llama.cpp against the model it came from. `reference`: the float32 source
    model; `windows`: lists of token ids (the novel's held-out windows); `texts`: texts whose ids
    must equal the transformers tokenizer's (BOS where the tokenizer has one, as every training
    document began). Characters the vocabulary cannot encode at all are left out of the texts
    (and named in the figures) unless `leave_out_unencodable` is False. Returns (figures,
    problems): problems empty means the file may be published."""
    import torch
    bos = tokenizer.bos_token_id
    left_out = sorted({c for t in texts for c in unencodable(tokenizer, t)}) if leave_out_unencodable else []
    texts = ["".join(c for c in t if c not in left_out) for t in texts]
    request = {"texts": texts, "windows": windows}
    folder = Path(gguf_path).parent
    request_path, answer_path = folder / f".{Path(gguf_path).name}.request.json", folder / f".{Path(gguf_path).name}.answer.json"
    request_path.write_text(json.dumps(request, ensure_ascii=False))
    try:
        result = _run(["check", gguf_path, request_path, answer_path])
        lines = [json.loads(l) for l in answer_path.read_text().splitlines()] if answer_path.exists() else []
        if result.returncode != 0:
            if not lines:
                return {"llama_cpp": "aborted"}, [f"llama.cpp aborted reading or running it ({_abort_line(result)})"]
            text = texts[len(lines) - 1]
            return {"llama_cpp": "aborted"}, [f"llama.cpp aborted tokenizing {text[:60]!r} ({_abort_line(result)}): "
                                              f"a character its vocabulary cannot encode (no <0x..> byte tokens)"]
        answer = {**lines[0], "tokens": [l["tokens"] for l in lines[1:]]}
    finally:
        request_path.unlink(missing_ok=True)
        answer_path.unlink(missing_ok=True)

    problems = []
    warnings = sorted({line.strip() for line in result.stderr.splitlines() if WARNINGS.search(line)})
    problems += [f"llama.cpp warns: {w[:160]}" for w in warnings]
    expected = [([bos] if bos is not None else []) + tokenizer(t, add_special_tokens=False).input_ids for t in texts]
    same = [a == b for a, b in zip(answer["tokens"], expected)]
    for text, ok, got, want in zip(texts, same, answer["tokens"], expected):
        if not ok:
            at = next((i for i, (x, y) in enumerate(zip(got, want)) if x != y), min(len(got), len(want)))
            problems.append(f"llama.cpp tokenizes {text[:40]!r} differently from transformers "
                            f"(from id {at}: {got[at:at + 4]} vs {want[at:at + 4]})")
    specials = {"bos": (answer["bos"], bos), "eos": (answer["eos"], tokenizer.eos_token_id),
                "add_bos": (answer["add_bos"], bos is not None)}
    problems += [f"{name}: llama.cpp has {got}, the tokenizer {want}" for name, (got, want) in specials.items()
                 if want is not None and got != want]

    # Next-token agreement and perplexity against the source model, on the same windows.
    agree = total = 0
    nll_source = nll_gguf = 0.0
    with torch.no_grad():
        for ids, got in zip(windows, answer["windows"]):
            out = reference(torch.tensor([ids]), labels=torch.tensor([ids]))
            top1 = out.logits[0].argmax(-1).tolist()
            agree += sum(a == b for a, b in zip(top1, got["top1"]))
            total += len(top1)
            nll_source += out.loss.item() * (len(ids) - 1)
            nll_gguf += got["nll"]
    tokens = sum(len(ids) - 1 for ids in windows)
    figures = {
        "top1_agreement": round(agree / max(1, total), 4),
        "perplexity_source": round(math.exp(nll_source / tokens), 4),
        "perplexity_gguf": round(math.exp(nll_gguf / tokens), 4),
        "tokenizer_same_ids": all(same), "bos": answer["bos"], "eos": answer["eos"], "add_bos": answer["add_bos"],
        "warnings": warnings, "windows": len(windows), "tokens": tokens, "unencodable_left_out": "".join(left_out),
    }
    min_top1, max_ppl = THRESHOLDS.get(kind, (None, THRESHOLDS["q4_k_m"][1]))
    if min_top1 is not None and figures["top1_agreement"] < min_top1:
        problems.append(f"next-token top-1 agreement {figures['top1_agreement']:.4f} < {min_top1}")
    drift = abs(figures["perplexity_gguf"] / figures["perplexity_source"] - 1)
    if drift > max_ppl:
        problems.append(f"perplexity {figures['perplexity_gguf']:.3f} vs the model's {figures['perplexity_source']:.3f} "
                        f"({100 * drift:.2f}% > {100 * max_ppl:.1f}%)")
    return figures, problems


# ---------------------------------------------------------------------------------------------
# The subprocess side: the only code that imports llama_cpp.

def _child_check(gguf_path, request_path, answer_path):
    import numpy as np
    from llama_cpp import Llama
    request = json.loads(Path(request_path).read_text())
    longest = max([len(w) for w in request["windows"]] + [64])
    llm = Llama(model_path=str(gguf_path), n_ctx=longest + 8, logits_all=True, verbose=True, n_threads=None, seed=0)
    add_bos = str(llm.metadata.get("tokenizer.ggml.add_bos_token", "false")).lower() == "true"
    windows = []
    for ids in request["windows"]:
        llm.reset()
        llm.eval(ids)
        logits = np.asarray(llm.scores[:len(ids)], dtype=np.float64)
        shifted = logits - logits.max(-1, keepdims=True)
        log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
        nll = -float(sum(log_probs[i, ids[i + 1]] for i in range(len(ids) - 1)))
        windows.append({"top1": logits.argmax(-1).tolist(), "nll": nll})
    # One line per result, written as it comes: if llama.cpp aborts on a text, the parent knows which.
    with open(answer_path, "w") as answer:
        answer.write(json.dumps({"bos": llm.token_bos(), "eos": llm.token_eos(), "add_bos": add_bos, "windows": windows}) + "\n")
        for text in request["texts"]:
            answer.flush()
            tokens = llm.tokenize(text.encode("utf-8"), add_bos=add_bos, special=False)
            answer.write(json.dumps({"tokens": tokens}) + "\n")


def _child_quantize(in_path, out_path, kind):
    import llama_cpp
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, LLAMA_TYPES[kind])
    code = llama_cpp.llama_model_quantize(str(in_path).encode(), str(out_path).encode(), params)
    if code != 0:
        sys.exit(f"llama_model_quantize returned {code}")


if __name__ == "__main__":
    verb, *arguments = sys.argv[1:]
    {"check": _child_check, "quantize": _child_quantize}[verb](*arguments)
