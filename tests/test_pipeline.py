"""End to end: the six scripts, run as a user would on tiny inputs of the real formats, learn."""
import json

import pytest
import torch
from safetensors.torch import load_file

from chateau import models, stages
from conftest import PIPELINE_STAGES, one_error_line, run_script, tiny_flags


def metrics(project, stage):
    return json.loads((stages.folder(project, stage) / "metrics.json").read_text())


def test_prepared_data_has_the_contracted_shape(pipeline):
    from datasets import load_from_disk
    project, _, _ = pipeline
    for stage in ("1a", "1b", "1c"):
        out = stages.folder(project, stage)
        data = load_from_disk(str(out))
        manifest = json.loads((out / "manifest.json").read_text())
        seq_len = manifest["settings"]["seq_len"]
        assert set(data) == {"train", "validation"}
        assert data["train"].column_names == ["input_ids"]
        for split in ("train", "validation"):
            assert len(data[split]) > 0
            assert {len(row) for row in data[split]["input_ids"]} == {seq_len}
        inputs = manifest["identity"]["inputs"]
        assert inputs["tokenizer"] and inputs["sources"] and manifest["identity"]["settings"]["seq_len"] == seq_len
        assert manifest["versions"]["torch"]
        assert (out / "settings.json").exists()
    assert (stages.folder(project, "1c") / "clean_text.txt").read_text().strip()


def test_gallica_steps_share_no_book(pipeline):
    project, _, _ = pipeline
    books = {s: json.loads((stages.folder(project, s) / "manifest.json").read_text())["books"] for s in ("1a", "1b")}
    groups = [set(books[s][split]) for s in books for split in ("train", "validation")]
    assert all(groups)
    for i, a in enumerate(groups):
        for b in groups[i + 1:]:
            assert not a & b


@pytest.mark.parametrize("stage", [s for s in stages.TRAIN_STAGES if s in PIPELINE_STAGES])
def test_each_training_stage_learns(pipeline, stage):
    project, _, _ = pipeline
    m = metrics(project, stage)
    own = next(iter(m["validation_loss_start"]))
    assert m["validation_loss_end"][own] < m["validation_loss_start"][own] - 0.02, m
    assert m["steps"] > 0 and m["trainable_parameters"] > 0 and m["tokens_seen"] > 0
    assert list((project / "runs" / stages.stage(stage).run_name).glob("events.out.tfevents.*"))
    assert (stages.folder(project, stage) / "samples.jsonl").read_text().strip()


def test_2c_continues_2b_adapter_and_changes_it(pipeline):
    project, _, _ = pipeline
    adapter_2b = load_file(stages.folder(project, "2b") / "adapter_model.safetensors")
    adapter_2c = load_file(stages.folder(project, "2c") / "adapter_model.safetensors")
    m = metrics(project, "2c")
    assert m["adapter_from"] == "2b" and m["trainable_parameters"] > 0
    assert m["adapter_digest_start"] == models.tensor_digest(adapter_2b)  # step 0 of 2c is 2b's adapter
    assert adapter_2b.keys() == adapter_2c.keys()
    changed = [k for k in adapter_2b if not torch.equal(adapter_2b[k], adapter_2c[k])]
    assert len(changed) == len(adapter_2b)  # every LoRA factor trained


def test_models_load_and_merged_equals_base_plus_adapter(pipeline):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer
    project, _, _ = pipeline
    base_dir, adapter_dir = stages.folder(project, "2a"), stages.folder(project, "2c")
    tokenizer = AutoTokenizer.from_pretrained(adapter_dir / "merged")
    ids = tokenizer("K. ouvrit la porte. Frieda le regardait.", return_tensors="pt").input_ids
    merged = AutoModelForCausalLM.from_pretrained(adapter_dir / "merged", dtype=torch.float32)
    unmerged = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32), adapter_dir)
    base_only = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    adapter_2b = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), stages.folder(project, "2b"))
    assert sum("lora_" in name for name, _ in adapter_2b.named_parameters()) > 0
    with torch.no_grad():
        a, b, c = merged(ids).logits, unmerged(ids).logits, base_only(ids).logits
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    assert (a - c).abs().max() > 1e-2  # and the adapter really changes the model
    assert any(p.name.startswith("checkpoint-") for p in base_dir.iterdir())


def test_step_outputs_name_the_next_step(pipeline):
    _, _, outputs = pipeline
    for script, out in outputs.items():
        assert "Next:" in out.stdout.strip().splitlines()[-1], (script, out.stdout[-500:])


@pytest.mark.parametrize("remove, script, expected", [
    ("models/TinyLlama_v1.1", "1a_prepare_gallica_fullweight.py", "notebook.ipynb"),
    ("datasets/French-PD-Books", "1b_prepare_gallica_QLoRA.py", "no parquet files"),
    ("Kafka-Le-Chateau.pdf", "1c_prepare_kafka.py", "the novel's PDF not found"),
])
def test_missing_inputs_fail_with_one_clear_line(fresh_project, remove, script, expected):
    import shutil
    project, _ = fresh_project
    target = project / remove
    shutil.rmtree(target) if target.is_dir() else target.unlink()
    out = run_script(project, script, *tiny_flags(script), check=False)
    one_error_line(out, expected)
    assert not (project / "data").exists() or not any((project / "data").glob("*/manifest.json"))


@pytest.mark.parametrize("script, expected", [
    ("2a_train_gallica_fullweight.py", "1a_prepare_gallica_fullweight.py"),
    ("2b_train_gallica_QLoRA.py", "2a_train_gallica_fullweight.py"),
    ("2c_train_kafka_QLoRA.py", "2a_train_gallica_fullweight.py"),
])
def test_missing_previous_stage_names_the_step_to_run(fresh_project, script, expected):
    project, _ = fresh_project
    out = run_script(project, script, *tiny_flags(script), check=False)
    one_error_line(out, expected)
