"""Step 4 on a Mistral-architecture model (Mistral-7B-v0.1's family, the tiny fixture of
dev/fixtures.py): exported under llama.cpp's `llama` architecture with its byte-fallback
tokenizer, each type checked in llama.cpp itself against the model, its sliding window capping
the file's context. export_gguf and the llama.cpp check are called directly (no stage trained)."""
import json
import shutil

import pytest

from chateau import gguf_files, llama_cpp_check
from dev import fixtures

KINDS = (*gguf_files.EXPORT_TYPES, *llama_cpp_check.LLAMA_TYPES)  # every type step 4 writes
# French the tokenizer can only write in bytes: characters left out of its training text, an
# emoji, letters no French text of the fixture has.
BYTE_TEXT = "Son cœur battait — l’étranger sourit 🙂 ; Ça ira, dit Klamm à Œdipe. Straße, 東京."


@pytest.fixture(scope="module")
def mistral(tmp_path_factory):
    """The fixture's Mistral model, its tokenizer, the float32 reference, windows of the novel's
    text (BOS first, as training documents are) and the texts whose ids llama.cpp must match."""
    from transformers import AutoTokenizer
    project = tmp_path_factory.mktemp("mistral")
    model_dir = fixtures.build_mistral(project)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    novel = "\n\n".join(text for _, text in fixtures.novel_source())
    ids = [tokenizer.bos_token_id] + tokenizer(novel, add_special_tokens=False).input_ids
    windows = [ids[i:i + 512] for i in range(0, 1024, 512)]  # as Checks: pieces of 512, 1,024 tokens
    texts = [novel[:3000], llama_cpp_check.TYPOGRAPHY, BYTE_TEXT]
    return {"dir": model_dir, "project": project, "tokenizer": tokenizer, "windows": windows, "texts": texts,
            "reference": gguf_files.float_model(model_dir), "out": project / "gguf"}


def fields(path):
    """{key: value} of a GGUF file's metadata (scalars, strings, and arrays as lists)."""
    import gguf
    out = {}
    for key, field in gguf.GGUFReader(str(path)).fields.items():
        values = [field.parts[i].tolist() for i in field.data]
        if field.types and field.types[-1] == gguf.GGUFValueType.STRING:
            values = [bytes(v).decode("utf-8") for v in values]
        else:
            values = [v[0] if len(v) == 1 else v for v in values]
        out[key] = values if field.types and field.types[0] == gguf.GGUFValueType.ARRAY else values[0]
    return out


def exported(mistral, kind):
    """The fixture exported as `kind` (once per module): f16 and q8_0 by export_gguf, the others
    by llama.cpp's quantizer from the f16 file, as step 4 makes them."""
    path = mistral["out"] / f"mistral-{kind}.gguf"
    if not path.exists():
        mistral["out"].mkdir(exist_ok=True)
        if kind in gguf_files.EXPORT_TYPES:
            gguf_files.export_gguf(mistral["dir"], path, kind, "mistral")
        else:
            llama_cpp_check.quantize(exported(mistral, "f16"), path, kind)
    return path


# -- The fixture is Mistral-7B-v0.1's kind of model and tokenizer.

def test_the_fixture_is_shaped_like_mistral_7b(mistral):
    from transformers import AutoConfig
    config = AutoConfig.from_pretrained(mistral["dir"])
    assert config.model_type == "mistral" and config.architectures == ["MistralForCausalLM"]
    assert config.sliding_window == 4096 < config.max_position_embeddings == 32768
    assert config.num_key_value_heads < config.num_attention_heads and not config.tie_word_embeddings
    assert (config.bos_token_id, config.eos_token_id) == (1, 2)
    head_dim = config.hidden_size // config.num_attention_heads
    for width in (config.hidden_size, config.num_key_value_heads * head_dim, config.intermediate_size, config.vocab_size):
        assert width % 32 == 0, width  # bitsandbytes' 4-bit layers, q8_0 blocks
    tokenizer = mistral["tokenizer"]
    vocab = tokenizer.get_vocab()
    assert [vocab[t] for t in ("<unk>", "<s>", "</s>")] == [0, 1, 2] and len(tokenizer) == config.vocab_size == 640
    assert [vocab[f"<0x{b:02X}>"] for b in range(256)] == list(range(3, 259))  # as Mistral's tokenizer.json
    spec = json.loads((mistral["dir"] / "tokenizer.json").read_text())
    assert spec["model"]["byte_fallback"] and spec["pre_tokenizer"]["prepend_scheme"] == "first"
    assert {t["content"] for t in spec["added_tokens"]} == {"<unk>", "<s>", "</s>"}  # byte tokens are pieces


def test_the_fixture_tokenizer_writes_in_bytes_what_its_pieces_lack_and_round_trips(mistral):
    tokenizer = mistral["tokenizer"]
    for text in (BYTE_TEXT, llama_cpp_check.TYPOGRAPHY, *fixtures.FRENCH_SENTENCES):
        ids = tokenizer(text, add_special_tokens=False).input_ids
        assert tokenizer.unk_token_id not in ids and tokenizer.decode(ids) == text
    ids = tokenizer(BYTE_TEXT, add_special_tokens=False).input_ids
    pieces = tokenizer.convert_ids_to_tokens(ids)
    for char in ("œ", "—", "’", "🙂", "東"):
        assert char not in "".join(pieces)  # in no piece: written as its UTF-8 bytes
    assert pieces.count("<0xC5>") == 2  # œ and Œ: C5 93, C5 92
    assert not llama_cpp_check.unencodable(tokenizer, BYTE_TEXT + llama_cpp_check.TYPOGRAPHY)
    # The novel's windows the checks run on hold byte tokens too ("—", "cœur").
    assert any(3 <= i <= 258 for w in mistral["windows"] for i in w)


# -- Exported and checked in llama.cpp.

@pytest.mark.parametrize("kind", KINDS)
def test_every_type_passes_the_llama_cpp_check(mistral, kind):
    path = exported(mistral, kind)
    figures, problems = llama_cpp_check.check(path, mistral["tokenizer"], mistral["reference"], mistral["windows"],
                                              mistral["texts"], kind)
    assert problems == [], (kind, problems, figures)
    # Same ids for every text, "œ", "—", "’", emoji included: nothing left out, no warning.
    assert figures["tokenizer_same_ids"] and figures["unencodable_left_out"] == "" and not figures["warnings"]
    assert (figures["bos"], figures["eos"], figures["add_bos"]) == (1, 2, True)
    min_top1, max_ppl = llama_cpp_check.THRESHOLDS.get(kind, (None, llama_cpp_check.THRESHOLDS["q4_k_m"][1]))
    assert min_top1 is None or figures["top1_agreement"] >= min_top1
    assert abs(figures["perplexity_gguf"] / figures["perplexity_source"] - 1) <= max_ppl
    meta = fields(path)
    assert meta["general.architecture"] == "llama" and meta["llama.context_length"] == 4096
    assert meta["tokenizer.ggml.model"] == "llama" and meta["tokenizer.ggml.add_space_prefix"] is True
    types = meta["tokenizer.ggml.token_type"]
    assert types[3:259] == [6] * 256 and 6 not in types[:3] + types[259:]  # BYTE exactly for <0x00>..<0xFF>
    assert types[:3] == [2, 3, 3]  # <unk> UNKNOWN, <s> </s> CONTROL
    assert meta["tokenizer.ggml.tokens"][3:259] == [f"<0x{b:02X}>" for b in range(256)]


def test_a_wrong_rotary_layout_fails_the_check(mistral, tmp_path, monkeypatch):
    """The fixture's attention is sharp enough that the check sees the Q/K layout: unpermuted,
    most next tokens change (a random model's near-uniform attention would hide it)."""
    monkeypatch.setattr(gguf_files, "_permute", lambda weights, n_head: weights)
    path = gguf_files.export_gguf(mistral["dir"], tmp_path / "unpermuted.gguf", "q8_0", "mistral")
    figures, problems = llama_cpp_check.check(path, mistral["tokenizer"], mistral["reference"], mistral["windows"],
                                              [], "q8_0")
    assert figures["top1_agreement"] < 0.8 and any("top-1 agreement" in p for p in problems), figures


# -- The sliding window: the file's context is capped at it, and step 4 says so.

def test_the_context_is_capped_at_the_sliding_window_and_said(mistral, tmp_path):
    path = gguf_files.export_gguf(mistral["dir"], tmp_path / "m.gguf", "f16", "mistral")
    line = gguf_files.sliding_window_line(gguf_files.gguf_context(mistral["dir"]))  # what step 4 says (test_bases.py runs it)
    assert line == ("4: the model's sliding window is 4096 tokens (of its 32768 positions); llama.cpp's llama "
                     "architecture attends fully, so the GGUF's context is 4096 tokens (beyond them, it would differ "
                     "from the model)")
    assert fields(path)["llama.context_length"] == 4096
    # What step 4 can record in export.json, for the folder (or its config) alone.
    assert gguf_files.gguf_context(mistral["dir"]) == {"context_length": 4096, "max_position_embeddings": 32768,
                                                       "sliding_window": 4096, "capped_at_sliding_window": True}


@pytest.mark.parametrize("window", [None, 32768, 65536])
def test_no_window_or_one_as_long_as_the_positions_is_no_cap_and_no_line(mistral, tmp_path, window):
    model_dir = tmp_path / "model"
    shutil.copytree(mistral["dir"], model_dir)
    config = json.loads((model_dir / "config.json").read_text())
    (model_dir / "config.json").write_text(json.dumps({**config, "sliding_window": window}))
    path = gguf_files.export_gguf(model_dir, tmp_path / "m.gguf", "f16", "mistral")
    assert gguf_files.sliding_window_line(gguf_files.gguf_context(model_dir)) is None
    assert fields(path)["llama.context_length"] == 32768
    assert gguf_files.gguf_context(model_dir) == {"context_length": 32768, "max_position_embeddings": 32768,
                                                  "sliding_window": window, "capped_at_sliding_window": False}


def test_the_tinyllama_fixture_exports_as_before(tmp_path):
    """Llama: its positions are its context, no line; no byte tokens in its vocabulary."""
    model_dir = tmp_path / "tinyllama"
    tokenizer = fixtures.build_tokenizer(model_dir)
    fixtures.build_model(model_dir, vocab_size=len(tokenizer))
    path = gguf_files.export_gguf(model_dir, tmp_path / "t.gguf", "f16", "t")
    meta = fields(path)
    assert meta["general.architecture"] == "llama" and meta["llama.context_length"] == 2048
    assert 6 not in meta["tokenizer.ggml.token_type"]
    assert gguf_files.gguf_context(model_dir)["capped_at_sliding_window"] is False


def test_another_architecture_is_still_refused(mistral, tmp_path):
    from chateau.cli import StageError
    model_dir = tmp_path / "model"
    shutil.copytree(mistral["dir"], model_dir)
    config = json.loads((model_dir / "config.json").read_text())
    (model_dir / "config.json").write_text(json.dumps({**config, "model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"]}))
    with pytest.raises(StageError, match="qwen2 model: only the Llama and Mistral architectures export here"):
        gguf_files.export_gguf(model_dir, tmp_path / "m.gguf", "f16", "m")
