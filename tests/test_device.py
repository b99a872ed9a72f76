"""The first GPU run works, or says in one line why not, before it touches anything: what a CPU
machine cannot show (no GPU, a card without bf16, several GPUs without torchrun, a compile that
fails) is simulated by monkeypatching the device queries, and each case is run as a user would."""

import pytest
import torch

from chateau import fullweight, models, stages
from conftest import hashes, one_error_line, run_script, tiny_flags

TWO_A, TWO_B = stages.script_of("2a"), stages.script_of("2b")


@pytest.fixture
def gpu_machine(monkeypatch):
    """This process believes it sees `count` CUDA GPUs of compute capability `capability`; the device
    this process chose is put back afterwards."""
    monkeypatch.delenv("KAFKA_DEVICE")
    monkeypatch.setitem(models._chosen, "device", None)

    def pretend(count=1, capability=(8, 6), name="NVIDIA GeForce RTX 3060"):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
        monkeypatch.setattr(models, "nvidia_driver_version", lambda: "580.65.06" if count else None)
    return pretend


def test_no_gpu_is_one_line_and_never_a_silent_cpu_run(project, gpu_machine):
    gpu_machine(count=0)
    finished = hashes(stages.folder(project, "2a"))
    # The tiny profile asks for the CPU; a user's run does not: --device cuda is the default.
    line = one_error_line(run_script(project, TWO_A, *tiny_flags(TWO_A), "--device", "cuda", "--overwrite", check=False),
                          "no CUDA GPU is visible")
    assert "--gpus all" in line and "python -m chateau.doctor" in line and "--device cpu" in line and "KAFKA_DEVICE=cpu" in line
    assert hashes(stages.folder(project, "2a")) == finished
    # Asked for, the CPU is used, and said so.
    assert models.set_up_device("cpu") == "cpu" and not models.use_cuda()


def test_a_card_without_bf16_is_refused_before_anything_loads(project, gpu_machine):
    gpu_machine(capability=(7, 5), name="Tesla T4")
    finished = hashes(stages.folder(project, "2b"))
    line = one_error_line(run_script(project, TWO_B, *tiny_flags(TWO_B), "--device", "cuda", "--overwrite", check=False),
                          "Tesla T4 (compute capability 7.5) has no bfloat16")
    assert "Ampere" in line
    assert hashes(stages.folder(project, "2b")) == finished


def test_several_gpus_without_torchrun_train_on_one(gpu_machine, monkeypatch, capsys, tmp_path):
    from transformers import TrainingArguments
    gpu_machine(count=2, capability=(9, 0), name="NVIDIA H100 80GB HBM3")
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert models.set_up_device() == "cuda"
    said = capsys.readouterr().err
    assert "2 GPUs visible: this run uses one, GPU 0 (NVIDIA H100 80GB HBM3)" in said
    assert "torchrun --nproc_per_node 2" in said
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none")
    args._n_gpu = 2  # what TrainingArguments finds on a machine with two visible GPUs
    assert models.one_gpu_per_process(args).n_gpu == 1  # no DataParallel: the batch stays per GPU
    # Under torchrun (WORLD_SIZE set) nothing is said: DDP gives each process its own GPU.
    monkeypatch.setenv("WORLD_SIZE", "2")
    models.set_up_device()
    assert "GPUs visible" not in capsys.readouterr().err


def test_a_device_that_is_neither_cuda_nor_cpu_is_a_settings_problem(monkeypatch):
    assert models.device_problems("gpu") == ["--device gpu must be cuda or cpu"]
    monkeypatch.setenv("KAFKA_DEVICE", "gpu")
    assert models.device_problems("") == ["KAFKA_DEVICE=gpu must be cuda or cpu"]
    assert models.device_problems("cpu") == []


def eight_bit_optimizer():
    torch.manual_seed(0)
    layer = torch.nn.Linear(64, 64, bias=False).to(torch.bfloat16)
    return layer, fullweight.make_optimizer(layer, fullweight.FullWeightSettings(lr=1e-2))


def test_an_optimizer_step_that_cannot_compile_runs_eagerly_and_says_so(monkeypatch, capsys):
    stances = []
    monkeypatch.setattr(torch.compiler, "set_stance", lambda stance, **kw: stances.append(stance))

    def inductor_fails(optimizer):
        raise RuntimeError("Found Tesla T4 which is too old to be supported by the triton GPU compiler\nmore")
    layer, optimizer = eight_bit_optimizer()
    record = fullweight.prepare_optimizer_step(optimizer, compile=True, probe=inductor_fails)
    said = capsys.readouterr()
    assert "compiling the 8-bit optimizer's step" in said.out and fullweight.COMPILE_EXPECTED in said.out
    warnings = [line for line in said.err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "could not be compiled (RuntimeError: Found Tesla T4" in warnings[0]
    assert record == "eager (compile failed: RuntimeError: Found Tesla T4 which is too old to be supported by the triton GPU compiler)"
    assert stances == ["force_eager"]
    # The eager step then trains as a step of an optimizer that never tried to compile.
    reference_layer, reference = eight_bit_optimizer()
    for model, opt in ((layer, optimizer), (reference_layer, reference)):
        model(torch.ones(2, 64, dtype=torch.bfloat16)).float().pow(2).mean().backward()
        torch.manual_seed(1)  # the same stochastic rounding draws
        opt.step()
    torch.testing.assert_close(layer.weight, reference_layer.weight, atol=0, rtol=0)


def test_the_compile_probe_touches_neither_weights_nor_optimizer_state(capsys):
    layer, optimizer = eight_bit_optimizer()
    before = layer.weight.detach().clone()
    record = fullweight.prepare_optimizer_step(optimizer, compile=True)  # eager here: torch.compile is off on CPU
    assert record.startswith("compiled in ") and "optimizer step compiled in" in capsys.readouterr().out
    assert torch.equal(layer.weight, before) and len(optimizer.state) == 0
    assert fullweight.prepare_optimizer_step(optimizer, compile=False) == "eager (CPU: torch.compile is off)"


def test_the_cpu_run_records_its_eager_optimizer_step(pipeline):
    import json
    metrics = json.loads((stages.folder(pipeline[0], "2a") / "metrics.json").read_text())
    assert metrics["optimizer_step"] == "eager (CPU: torch.compile is off)" and metrics["device"] == "cpu"
