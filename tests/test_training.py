"""Training that learns, resumes exactly, scales out, and fails clearly."""
import importlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from chateau import models, stages, training
from chateau.cli import StageError
from conftest import fixtures, one_error_line, run_script, script_env, tiny_flags
from dev.runner import start_script

# Slow enough to be interrupted: a sample is generated after every step (off the training RNG).
RESUMABLE = ["--save-steps", "4", "--eval-steps", "8", "--sample-steps", "1", "--sample-new-tokens", "50",
             "--record-batches"]


def project_without(pipeline, tmp_path, name, *removed):
    project = tmp_path / name
    shutil.copytree(pipeline[0], project, ignore=shutil.ignore_patterns("checkpoint-*"))
    for stage in removed:
        shutil.rmtree(stages.folder(project, stage))
    return project


def interrupt_after_first_checkpoint(project, script, flags):
    out_dir = stages.folder(project, stages.stage_of_script(script))
    proc = start_script(project, script, *flags, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 240
    while proc.poll() is None and time.time() < deadline and not training.latest_checkpoint(out_dir):
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)  # what `docker stop` sends
    output = proc.communicate(timeout=240)[0]
    assert proc.returncode == 143, output[-3000:]
    assert "Rerun the same command without --overwrite to resume" in output
    return int(training.latest_checkpoint(out_dir).rsplit("-", 1)[1])


@pytest.mark.parametrize("script, weights, extra", [
    ("2a_train_gallica_fullweight.py", "model.safetensors", ["--max-steps", "16"]),
    ("2c_train_kafka_QLoRA.py", "adapter_model.safetensors", ["--max-steps", "12", "--merge", "false"]),
])
def test_interrupted_and_resumed_run_equals_uninterrupted(pipeline, tmp_path, script, weights, extra):
    stage = script[:2]
    flags = [*tiny_flags(script), *RESUMABLE, *extra]
    reference = project_without(pipeline, tmp_path, "reference", stage)
    # The reference draws no samples: the interrupted run's samples (on their own RNG) must not
    # change what it trains, so the two runs must still end with the same weights.
    run_script(reference, script, *flags, "--sample-steps", "0")
    resumed = project_without(pipeline, tmp_path, "resumed", stage)
    stopped_at = interrupt_after_first_checkpoint(resumed, script, flags)
    final = json.loads((stages.folder(reference, stage) / "metrics.json").read_text())["steps"]
    assert 4 <= stopped_at < final
    run_script(resumed, script, *flags)
    a, b = stages.folder(reference, stage), stages.folder(resumed, stage)
    assert json.loads((b / "metrics.json").read_text())["steps"] == final
    assert (a / "batches-rank0.txt").read_text() == (b / "batches-rank0.txt").read_text()  # same data order
    wa, wb = load_file(a / weights), load_file(b / weights)
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], atol=1e-6, rtol=1e-5)
    start_a, start_b = (json.loads((d / "metrics.json").read_text())["validation_loss_start"] for d in (a, b))
    assert start_a == start_b  # the "before" loss is the first run's, not the resumed one's


def test_signal_handlers_are_put_back_after_training():
    def mine(signum, frame):
        pass
    previous = signal.signal(signal.SIGTERM, mine)
    try:
        with training.StopOnSignal() as stopper:
            assert signal.getsignal(signal.SIGTERM) == stopper._handle
        assert signal.getsignal(signal.SIGTERM) is mine and signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_accumulation_is_derived_and_a_combination_that_does_not_divide_is_refused():
    settings = training.TrainSettings(tokens_per_step=65536, batch_size=8)
    assert training.accumulation(settings, 512, 1) == 16 and training.accumulation(settings, 512, 2) == 8
    assert training.accumulation(settings, 512, 16) == 1
    with pytest.raises(StageError) as error:
        training.accumulation(training.TrainSettings(tokens_per_step=65536, batch_size=3), 512, 1)
    assert "--batch-size 2" in error.value.message  # the nearest batch that divides
    with pytest.raises(StageError):
        training.accumulation(settings, 512, 32)  # 8 x 512 x 32 > 64k: more than one step's tokens
    with pytest.raises(StageError) as error:  # what two processes of the tiny 2b profile would be told
        training.accumulation(training.TrainSettings(tokens_per_step=512, batch_size=3), 128, 2)
    assert "--tokens-per-step 512 is not a multiple of --batch-size 3 x 128-token samples x 2 process(es)" in error.value.message


def test_half_written_checkpoint_is_never_resumed(tmp_path):
    good, bad = tmp_path / "checkpoint-4", tmp_path / "checkpoint-8"
    good.mkdir(), bad.mkdir()
    (good / "trainer_state.json").write_text(json.dumps({"global_step": 4}))
    (bad / "trainer_state.json").write_text('{"global_st')  # killed while writing
    assert training.latest_checkpoint(tmp_path) == str(good)


def check_ddp_run(out_dir, steps, tokens_per_step):
    batches = [(out_dir / f"batches-rank{r}.txt").read_text().split("\n")[:-1] for r in (0, 1)]
    assert len(batches[0]) == len(batches[1]) == steps  # each rank ran every step on its own half
    assert not {l.split()[1] for l in batches[0]} & {l.split()[1] for l in batches[1]}
    weights = [(out_dir / f"weights-rank{r}.txt").read_text() for r in (0, 1)]
    assert weights[0] == weights[1]  # gradients were all-reduced: identical weights
    metrics = json.loads((out_dir / "metrics.json").read_text())
    # The curriculum's tokens per step, whatever the number of processes: no arithmetic by the user.
    assert metrics["world_size"] == 2 and metrics["tokens_per_step"] == tokens_per_step
    assert metrics["tokens_seen"] == steps * tokens_per_step


DDP_FLAGS = ["--max-steps", "6", "--save-steps", "100", "--sample-steps", "0", "--record-batches"]


def test_two_processes_over_gloo_keep_the_tokens_per_step(pipeline, tmp_path):
    """torchrun with 2 processes, the profile's own --tokens-per-step (512): each process takes
    2 samples of 128 per micro-step and accumulation is derived (1)."""
    script = "2b_train_gallica_QLoRA.py"
    project = project_without(pipeline, tmp_path, "ddp", "2b")
    env = dict(script_env(project), ACCELERATE_USE_CPU="true")  # torchrun, not `accelerate launch --cpu` (one process)
    run_script(project, script, *tiny_flags(script), *DDP_FLAGS, "--batch-size", "2", env=env,
               python=(sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"))
    check_ddp_run(stages.folder(project, "2b"), 6, 512)


def test_two_nodes_on_localhost_keep_the_tokens_per_step(pipeline, tmp_path):
    """The README's two-node command, both "nodes" on 127.0.0.1 (gloo): 2a's 512 tokens per step
    from 2 x 4 samples of 64, nothing to compute by hand."""
    import socket
    script = "2a_train_gallica_fullweight.py"
    project = project_without(pipeline, tmp_path, "nodes", "2a")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(script_env(project), ACCELERATE_USE_CPU="true")
    nodes = [start_script(project, script, *tiny_flags(script), *DDP_FLAGS, "--batch-size", "4", env=env, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          python=(sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node_rank", str(rank),
                                  "--nproc_per_node", "1", "--master_addr", "127.0.0.1", "--master_port", str(port)))
             for rank in (0, 1)]
    outputs = [node.communicate(timeout=300)[0] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], outputs[0][-2000:] + outputs[1][-2000:]
    check_ddp_run(stages.folder(project, "2a"), 6, 512)


def test_stochastic_rounding_keeps_small_updates():
    """At lr 1e-5 each update is ~1/1000 of a weight ~1: bf16 rounding to nearest drops it; the
    optimizer 2a uses keeps it in expectation, as an fp32 reference does."""
    two_a = importlib.import_module("2a_train_gallica_fullweight")
    os.environ["TORCHDYNAMO_DISABLE"] = "1"
    settings = two_a.Settings(lr=1e-5, weight_decay=0.0)
    from chateau.fullweight import make_optimizer
    torch.manual_seed(0)
    w0 = 1 + torch.rand(64, 64)
    ref = torch.nn.Linear(64, 64, bias=False)
    ref.weight.data = w0.clone()
    low = torch.nn.Linear(64, 64, bias=False).to(torch.bfloat16)
    low.weight.data = w0.to(torch.bfloat16)
    ref_opt = torch.optim.AdamW(ref.parameters(), lr=1e-5, weight_decay=0.0)
    sr_opt = make_optimizer(low, settings)
    nearest = w0.to(torch.bfloat16)
    for _ in range(50):
        g = torch.ones(64, 64)  # Adam's step is then exactly -lr per element
        ref.weight.grad, low.weight.grad = g, g.to(torch.bfloat16)
        ref_opt.step(), sr_opt.step()
        nearest = (nearest.float() - 1e-5).to(torch.bfloat16)
    start = w0.to(torch.bfloat16).float()
    expected = (ref.weight.data - w0).mean()
    assert torch.isclose(expected, torch.tensor(-50e-5), rtol=1e-2)
    assert torch.isclose((low.weight.data.float() - start).mean(), expected, rtol=0.1)
    assert (nearest.float() - start).abs().max() == 0  # what plain bf16 would have done


def test_4bit_gradients_are_right_after_an_evaluation(pipeline):
    """bitsandbytes on avx512_bf16 CPUs repacks 4-bit weights on an eval forward; the workaround
    in models.load_model_4bit keeps later gradients equal to those before."""
    from peft import LoraConfig, get_peft_model
    project = pipeline[0]
    torch.manual_seed(0)
    model = get_peft_model(models.load_model_4bit(stages.folder(project, "2a")),
                           LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False))
    ids = torch.randint(3, 400, (2, 32))

    def grads():
        model.train()
        model.zero_grad()
        model(input_ids=ids, labels=ids).loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}

    before = grads()
    model.eval()
    with torch.no_grad():
        model(input_ids=ids)
    after = grads()
    for name in before:
        torch.testing.assert_close(before[name], after[name], atol=1e-6, rtol=1e-5)


def test_data_from_another_tokenizer_is_refused(pipeline, tmp_path):
    project = project_without(pipeline, tmp_path, "other_tokenizer", "2a")
    fixtures.build_tokenizer(project / stages.BASE_MODEL, vocab_size=480)
    out = run_script(project, "2a_train_gallica_fullweight.py", *tiny_flags("2a_train_gallica_fullweight.py"), check=False)
    one_error_line(out, "another tokenizer")


def test_samples_longer_than_the_context_are_refused(pipeline, tmp_path):
    project = project_without(pipeline, tmp_path, "short_context", "2a")
    config_path = project / stages.BASE_MODEL / "config.json"
    config = json.loads(config_path.read_text())
    config["max_position_embeddings"] = 32
    config_path.write_text(json.dumps(config))
    out = run_script(project, "2a_train_gallica_fullweight.py", *tiny_flags("2a_train_gallica_fullweight.py"), check=False)
    one_error_line(out, "--seq-len 32")


def test_incomplete_previous_stage_is_refused(pipeline, tmp_path):
    project = project_without(pipeline, tmp_path, "incomplete")
    (stages.folder(project, "2b") / "metrics.json").unlink()  # as if 2b were killed before its end
    out = run_script(project, "2c_train_kafka_QLoRA.py", *tiny_flags("2c_train_kafka_QLoRA.py"), check=False)
    one_error_line(out, "2b_train_gallica_QLoRA.py")


def test_cuda_out_of_memory_names_the_settings_to_lower(pipeline, tmp_path, monkeypatch):
    from datasets import load_from_disk
    from transformers import AutoModelForCausalLM, AutoTokenizer
    project = pipeline[0]
    two_a = importlib.import_module("2a_train_gallica_fullweight")
    data = load_from_disk(str(stages.folder(project, "1a")))

    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.2 GiB")

    monkeypatch.setattr(training.CurriculumTrainer, "train", out_of_memory)
    settings = two_a.Settings(project_dir=str(tmp_path), max_steps=2, batch_size=8, sample_steps=0)
    model = AutoModelForCausalLM.from_pretrained(project / stages.BASE_MODEL)
    run = training.plan_run(settings, "2a", {})
    with pytest.raises(StageError) as error:
        training.fit(settings, run, model, AutoTokenizer.from_pretrained(project / stages.BASE_MODEL),
                     data["train"], {"1a": data["validation"]})
    assert "out of memory at --batch-size 8" in error.value.message and "(training)" in error.value.message
    assert "rerun the same command with --batch-size 4" in error.value.message and "resumes" in error.value.message
    # The final validation (after the last step) runs out of memory: the same advice, saying where.
    start = tmp_path / stages.stage("2a").output / "eval_start.json"
    monkeypatch.setattr(training.CurriculumTrainer, "train", lambda *args, **kwargs: start.write_text("{}"))
    monkeypatch.setattr(training, "finish", out_of_memory)
    with pytest.raises(StageError) as error:
        training.fit(settings, run, model, AutoTokenizer.from_pretrained(project / stages.BASE_MODEL),
                     data["train"], {"1a": data["validation"]})
    assert "(the final validation)" in error.value.message and "--batch-size 4" in error.value.message


def test_the_out_of_memory_advice_resumes_from_the_checkpoint(pipeline, tmp_path):
    """What the OOM line tells the user to do, done: the same command with half the batch per
    device continues from the last checkpoint (same tokens per step: accumulation doubles)."""
    project = tmp_path / "oom"
    shutil.copytree(pipeline[0], project)
    out_dir = stages.folder(project, "2a")
    for later in ("metrics.json", "checkpoint-40"):  # killed (out of memory) after checkpoint-20
        path = out_dir / later
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    script = "2a_train_gallica_fullweight.py"
    out = run_script(project, script, *tiny_flags(script), "--batch-size", "4")
    metrics = json.loads((out_dir / "metrics.json").read_text())
    assert metrics["steps"] == 40 and metrics["grad_accum"] == 2 and metrics["tokens_per_step"] == 512
    assert "already trained" not in out.stdout
    state = json.loads((out_dir / "checkpoint-40" / "trainer_state.json").read_text())
    assert [h["step"] for h in state["log_history"] if "loss" in h][0] == 10  # the log goes on from the first run's

