"""Step 4: GGUF export, each file checked in llama.cpp itself (and read back by transformers)
before it is published; q4_k_m from llama.cpp's own quantizer."""
import hashlib
import json
import shutil

import pytest
import torch

from chateau import stages
from chateau.generation import prompt_ids
from conftest import one_error_line, run_script

EXPORT = "4_export_gguf.py"


@pytest.fixture(scope="module")
def exported(pipeline):
    """Step 4 with its defaults (f16, q8_0, q4_k_m) on the shared finished project, once: what the
    notebook's export cell then finds already exported. Tests that change files work on a copy."""
    project = pipeline[0]
    out = run_script(project, EXPORT)
    return project, out


def test_both_types_round_trip_through_transformers(exported):
    from datasets import load_from_disk
    from transformers import AutoModelForCausalLM, AutoTokenizer
    project, out = exported
    gguf_dir = stages.folder(project, "2c") / "gguf"
    merged = stages.folder(project, "2c") / "merged"
    record = json.loads((gguf_dir / "export.json").read_text())
    assert "Next:" in out.stdout.strip().splitlines()[-1]
    source = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32)
    rows = torch.tensor(load_from_disk(str(stages.folder(project, "1c")))["validation"]["input_ids"][:4])
    page = (stages.folder(project, "1c") / "clean_text.txt").read_text()[:3000]
    with torch.no_grad():
        reference = source(rows).logits
        for kind in ("f16", "q8_0"):
            path = gguf_dir / f"kafka-chateau-{kind}.gguf"
            model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=path.name, dtype=torch.float32)
            logits = model(rows).logits
            tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=path.name)
            # The file says "add BOS", as every training document began: its reader adds it.
            assert tokenizer(page).input_ids == prompt_ids(AutoTokenizer.from_pretrained(merged), page)
            agreement = (logits.argmax(-1) == reference.argmax(-1)).float().mean().item()
            if kind == "f16":
                # float16 keeps 11 significant bits (relative error <= 2^-11 per weight): through this
                # 2-layer model the logits (spread ~3) move by a few thousandths at most.
                torch.testing.assert_close(logits, reference, atol=1e-2, rtol=0)
            assert agreement >= 0.99, (kind, agreement)
            trip = record[path.name]["round_trip"]
            assert trip["top1_agreement"] >= 0.99 and trip["tokenizer_same_ids"]
            assert abs(trip["perplexity_gguf"] / trip["perplexity_source"] - 1) < 0.01
            engine = record[path.name]["llama_cpp"]  # the same file read by llama.cpp itself
            assert engine["tokenizer_same_ids"] and engine["add_bos"] and not engine["warnings"]
            assert engine["top1_agreement"] >= {"f16": 0.99, "q8_0": 0.93}[kind]
            assert engine["unencodable_left_out"]  # the fixture vocabulary has no byte tokens: said, not a crash
    modelfile = (gguf_dir / "Modelfile").read_text()
    assert "FROM ./kafka-chateau-q8_0.gguf" in modelfile and "PARAMETER temperature 0.8" in modelfile
    assert "TEMPLATE" in modelfile and "<|" not in modelfile  # a completion model: no chat template


def test_rerun_says_already_exported_and_a_half_written_file_is_never_taken_for_finished(exported, tmp_path):
    project = tmp_path / "p"
    shutil.copytree(exported[0], project, ignore=shutil.ignore_patterns("checkpoint-*"))
    gguf_dir = stages.folder(project, "2c") / "gguf"
    digest = lambda: {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in gguf_dir.glob("*.gguf")}
    before = digest()
    again = run_script(project, EXPORT, "--verify", "false")
    assert again.stdout.count("already exported") == 3 and digest() == before
    q8 = gguf_dir / "kafka-chateau-q8_0.gguf"
    q8.write_bytes(q8.read_bytes()[: q8.stat().st_size // 2])  # as if the disk filled up mid-write
    (gguf_dir / ".kafka-chateau-f16.gguf.partial").write_bytes(b"GGUF")  # an interrupted export's leftover
    out = run_script(project, EXPORT, "--verify", "false", "--types", "f16,q8_0")
    assert "already exported" in out.stdout and "writing" in out.stdout and digest() == before
    assert not (gguf_dir / ".kafka-chateau-f16.gguf.partial").exists() and "removing .kafka-chateau-f16.gguf.partial" in out.stdout


@pytest.mark.parametrize("flags, expected", [
    (["--stage", "2b"], "--stage"), (["--types", "q4"], "--types"), (["--name", "a/b"], "--name")])
def test_bad_settings_are_refused(flags, expected, pipeline):
    out = run_script(pipeline[0], EXPORT, *flags, check=False)
    assert out.returncode == 2 and expected in out.stderr.split("invalid settings:")[1]


def test_an_unfinished_stage_is_not_exported(fresh_project):
    project, _ = fresh_project
    one_error_line(run_script(project, EXPORT, check=False), "2c_train_kafka_QLoRA.py")


def test_2d_is_exported_and_continued_like_2c(pipeline, tmp_path):
    """2d, one row of the stage table: step 4 --stage 2d and step 3 --stage 2d take it as they are."""
    project = tmp_path / "p"
    shutil.copytree(pipeline[0], project, ignore=shutil.ignore_patterns("checkpoint-*"))
    out = run_script(project, EXPORT, "--stage", "2d", "--types", "f16")
    record = json.loads((stages.export_dir(project, "2d") / "export.json").read_text())
    trip = record["kafka-chateau-f16.gguf"]["round_trip"]
    assert record["kafka-chateau-f16.gguf"]["stage"] == "2d" and trip["top1_agreement"] >= 0.99, out.stdout
    run_script(project, "3_continue_kafka.py", "--stage", "2d", "--new-tokens", "20", "--context-tokens", "64",
               "--chunk-tokens", "10")
    text = (project / "output" / "continuation_2d.md").read_text()
    assert str(stages.folder(project, "2d")) in text and text.split("\n---\n", 1)[1].strip()


# -- What the llama.cpp check catches: a file that fails it is not published.

@pytest.fixture
def two_a_copy(pipeline, tmp_path):
    project = tmp_path / "p"
    shutil.copytree(pipeline[0], project, ignore=shutil.ignore_patterns("checkpoint-*", "gguf"))
    return project


def test_a_wrong_bos_id_is_caught_and_not_published(two_a_copy, monkeypatch):
    import gguf
    original = gguf.GGUFWriter.add_bos_token_id
    monkeypatch.setattr(gguf.GGUFWriter, "add_bos_token_id", lambda self, i: original(self, i + 5))
    out = run_script(two_a_copy, EXPORT, "--stage", "2a", "--types", "f16", check=False)
    one_error_line(out, "bos: llama.cpp has 6, the tokenizer 1")
    assert not list(stages.export_dir(two_a_copy, "2a").glob("*.gguf"))


def test_a_character_llama_cpp_cannot_encode_is_reported_not_a_crash(exported):
    """The fixtures' vocabulary has no <0x..> byte tokens: llama.cpp aborts the process on a
    character it cannot encode. The check runs it in a subprocess and names the text."""
    from chateau import gguf_files, llama_cpp_check, models
    project, _ = exported
    source = stages.model_dir(project, "2c")
    tokenizer = models.load_tokenizer(source)
    text = llama_cpp_check.TYPOGRAPHY
    assert llama_cpp_check.unencodable(tokenizer, text)  # e.g. "Ç": <unk> for transformers
    figures, problems = llama_cpp_check.check(stages.export_dir(project, "2c") / "kafka-chateau-f16.gguf", tokenizer,
                                              gguf_files.float_model(source), [], [text], "f16", leave_out_unencodable=False)
    assert figures == {"llama_cpp": "aborted"} and "aborted tokenizing" in problems[0] and "byte tokens" in problems[0]


def test_q4_k_m_is_made_by_llama_cpps_quantizer_and_checked(exported):
    project, out = exported
    assert "kafka-chateau-q4_k_m.gguf: llama.cpp's quantizer wrote its matrices as" in out.stdout
    record = json.loads((stages.export_dir(project, "2c") / "export.json").read_text())["kafka-chateau-q4_k_m.gguf"]
    assert sum(record["tensor_types"].values()) == 16  # every matrix, in the types llama.cpp chose (64-wide: fallbacks)
    engine = record["llama_cpp"]
    assert abs(engine["perplexity_gguf"] / engine["perplexity_source"] - 1) <= 0.10 and engine["tokenizer_same_ids"]
