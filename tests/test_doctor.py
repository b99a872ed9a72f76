"""python -m chateau.doctor: one line per check, ok or the problem and its fix, and an exit code
that says whether a default stage can run. What a CPU machine cannot show (GPUs, their memory,
an old card, a full disk) is simulated through the device queries the doctor makes."""
import json
import os
import subprocess
import sys
from collections import namedtuple

import pytest
import torch

from chateau import doctor, memory_plan, models, stages
from chateau.memory_plan import GIB, TINYLLAMA_SHAPE
from dev.runner import ROOT

Usage = namedtuple("Usage", "total used free")


@pytest.fixture(autouse=True, scope="module")
def scripts_imported():
    """The stages' settings (their scripts import transformers' Trainer, which imports bitsandbytes)
    imported once with the real device queries, before any test pretends a GPU is there."""
    for step in stages.TABLE:
        stages.settings_class(step.name)


def gpu_machine(monkeypatch, cards, free_gib, driver="580.65.06", cuda="13.0", disk_gib=500.0, ram_gib=(64.0, 60.0)):
    """This process sees `cards` ([(name, (major, minor))]) with `free_gib` free on GPU 0, the
    driver `driver`, a PyTorch built for CUDA `cuda`, `disk_gib` free on disk and `ram_gib` of RAM
    (total, available); the GPU is not declined (no KAFKA_DEVICE)."""
    monkeypatch.delenv("KAFKA_DEVICE", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: bool(cards))
    monkeypatch.setattr(torch.cuda, "device_count", lambda: len(cards))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=0: cards[i][0])
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda i=0: cards[i][1])
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda i=0: (int(free_gib * GIB), int(80 * GIB)))
    monkeypatch.setattr(torch.version, "cuda", cuda)
    monkeypatch.setattr(models, "nvidia_driver_version", lambda: driver)
    monkeypatch.setattr(doctor.shutil, "disk_usage", lambda path: Usage(int(1000 * GIB), 0, int(disk_gib * GIB)))
    monkeypatch.setattr(doctor, "ram", lambda: ram_gib)


def run(capsys, project, *flags):
    """main() as the command line runs it: (exit code, {check name: its line})."""
    code = doctor.main(["--project-dir", str(project), *flags])
    out = capsys.readouterr().out
    lines = {line.split(":", 1)[0].split(None, 1)[1]: line for line in out.splitlines()[1:-2]}
    return code, lines


def finish(project, *names):
    """Mark stages finished as their steps do: a prepared folder's manifest, a train stage's metrics.json."""
    for name in names:
        folder = stages.folder(project, name)
        folder.mkdir(parents=True, exist_ok=True)
        marker = "manifest.json" if stages.stage(name).kind == "prepare" else "metrics.json"
        (folder / marker).write_text(json.dumps({"stage": name, "settings": memory_plan.stage_defaults(name)}))


def test_two_gpus_of_the_ampere_kind_run_every_stage(monkeypatch, capsys, tmp_path):
    gpu_machine(monkeypatch, [("NVIDIA A100 80GB PCIe", (8, 0))] * 2, free_gib=79.0)
    code, lines = run(capsys, tmp_path, "--quick")
    assert code == 0
    assert lines["device"].startswith("ok   device: 2 x NVIDIA A100 80GB PCIe") and "torchrun --nproc_per_node 2" in lines["device"]
    assert lines["driver"].startswith("ok") and "580.65.06" in lines["driver"] and "needs 580 or newer" in lines["driver"]
    assert lines["bf16"].startswith("ok") and "compute capability 8.0" in lines["bf16"]
    assert all(lines[f"memory {n}"].startswith("ok") and "79.0 GiB free on GPU 0" in lines[f"memory {n}"]
               for n in stages.TRAIN_STAGES)
    assert "bitsandbytes" not in lines and "optimizer" not in lines  # --quick: no model probes


def test_no_gpu_refuses_unless_the_cpu_is_asked_for(monkeypatch, capsys, tmp_path):
    gpu_machine(monkeypatch, [], free_gib=0, driver=None)
    code, lines = run(capsys, tmp_path, "--quick")
    assert code == 1
    assert lines["device"].startswith("FAIL device: no CUDA GPU: training steps refuse unless --device cpu / "
                                      "KAFKA_DEVICE=cpu; the real model on CPU would take weeks")
    assert "docker run --gpus all" in lines["driver"]  # a CUDA build that sees no driver says where it went
    assert lines["memory 2a"].startswith("info") and "of GPU memory (no GPU here)" in lines["memory 2a"]

    monkeypatch.setenv("KAFKA_DEVICE", "cpu")
    code, lines = run(capsys, tmp_path, "--quick")
    assert code == 0 and lines["device"].startswith("ok   device: no CUDA GPU")
    assert "of RAM on the CPU" in lines["memory 2a"]  # the CPU's needs against the RAM


def test_a_driver_too_old_for_this_cuda_is_its_own_line(monkeypatch, capsys, tmp_path):
    gpu_machine(monkeypatch, [], free_gib=0, driver="535.104.05")  # torch sees no GPU: the driver is why
    code, lines = run(capsys, tmp_path, "--quick")
    assert code == 1
    assert lines["driver"].startswith("FAIL driver: the NVIDIA driver 535.104.05 is too old for this PyTorch (CUDA 13.0)")


def test_a_card_before_ampere_has_no_bf16_to_train_with(monkeypatch, capsys, tmp_path):
    gpu_machine(monkeypatch, [("Tesla T4", (7, 5))], free_gib=14.5)
    code, lines = run(capsys, tmp_path, "--quick")
    assert code == 1
    assert lines["bf16"].startswith("FAIL bf16: Tesla T4: compute capability 7.5, no native bf16")
    assert "2a, 2b, 2c, 2d cannot run" in lines["bf16"] and "compute capability 8.0+" in lines["bf16"]
    assert lines["memory 2a"].startswith("ok")  # its memory would do: the card is what stops it

    finish(tmp_path, *stages.TRAIN_STAGES)  # nothing left to train: the old card stops nothing
    code, lines = run(capsys, tmp_path, "--quick")
    assert code == 0 and lines["bf16"].startswith("warn bf16: Tesla T4") and "nothing left needs it" in lines["bf16"]


def test_too_little_gpu_memory_names_the_batch_that_fits(monkeypatch, capsys, tmp_path):
    need_2a = memory_plan.train_memory("2a", TINYLLAMA_SHAPE, 512).gib
    free = memory_plan.train_memory("2a", TINYLLAMA_SHAPE, 512, batch_size=4).gib + 0.1  # 2a's default does not fit
    gpu_machine(monkeypatch, [("NVIDIA GeForce RTX 3060", (8, 6))], free_gib=free)
    code, lines = run(capsys, tmp_path, "--quick")
    assert code == 1
    batch, need = memory_plan.largest_batch("2a", TINYLLAMA_SHAPE, 512, free)
    assert batch == 4 and need.gib <= free < need_2a
    assert lines["memory 2a"].startswith(f"FAIL memory 2a: full weights, batch 8 x 512 tokens: ~{need_2a:.1f} GiB; "
                                         f"{free:.1f} GiB free on GPU 0: pass --batch-size {batch} (~{need.gib:.1f} GiB")
    assert lines["memory 2b"].startswith("ok") and lines["memory 2c"].startswith("ok")

    finish(tmp_path, "2a", "2d")  # finished stages need nothing more
    assert run(capsys, tmp_path, "--quick")[0] == 0

    gpu_machine(monkeypatch, [("NVIDIA GeForce RTX 3050", (8, 6))], free_gib=3.0)
    code, lines = run(capsys, tmp_path, "--quick")
    assert code == 1 and "does not fit even at --batch-size 1" in lines["memory 2c"]


def test_too_little_disk_for_the_unfinished_stages(monkeypatch, capsys, tmp_path):
    gpu_machine(monkeypatch, [("NVIDIA H200", (9, 0))], free_gib=139.0, disk_gib=12.0)
    code, lines = run(capsys, tmp_path, "--quick")
    assert code == 1
    assert lines["disk"].startswith(f"FAIL disk: 12.0 GiB free under {tmp_path}; the stages not finished yet "
                                    f"(1a, 1b, 1c, 2a, 2b, 2c, 4) will write ~")
    assert "2d (off the default path) would add" in lines["disk"] and "GiB more" in lines["disk"]

    finish(tmp_path, "1a", "1b", "2a")  # what is finished is on disk already: the rest fits
    code, lines = run(capsys, tmp_path, "--quick")
    assert code == 0 and lines["disk"].startswith("ok   disk: 12.0 GiB free") and "(1c, 2b, 2c, 4)" in lines["disk"]


def test_the_real_run_on_this_machine(monkeypatch, capsys, tmp_path):
    """The full doctor, model probes included, on this CPU machine: the probes pass (bitsandbytes'
    4-bit matmul with a LoRA backward, torchao's step, SDPA), and without a GPU the exit code is 1
    unless the CPU is asked for."""
    if torch.cuda.is_available():
        pytest.skip("a GPU machine: the simulated cases above and the doctor itself cover it")
    monkeypatch.setenv("KAFKA_DEVICE", "cpu")
    code, lines = run(capsys, tmp_path)
    for probe in ("bitsandbytes", "optimizer", "attention"):
        assert lines[probe].startswith("ok"), lines[probe]
    assert "LoRA backward on the CPU matches the dequantized fp32 reference" in lines["bitsandbytes"]
    assert code == (1 if any(line.startswith("FAIL") for line in lines.values()) else 0)  # disk, RAM: this machine's

    monkeypatch.delenv("KAFKA_DEVICE")
    code, lines = run(capsys, tmp_path)
    assert code == 1 and lines["device"].startswith("FAIL device: no CUDA GPU")


def test_the_quick_form_in_its_own_process_says_no_gpu_and_exits_1(tmp_path):
    """As the container runs it at every start (its own process, no KAFKA_DEVICE): one line per
    check, no model probe, and exit 1 where no GPU is visible."""
    env = {k: v for k, v in os.environ.items() if k != "KAFKA_DEVICE"} | {"KAFKA_PROJECT_DIR": str(tmp_path)}
    done = subprocess.run([sys.executable, "-m", "chateau.doctor", "--quick"], cwd=ROOT, env=env, text=True,
                          capture_output=True, timeout=120)
    assert " bitsandbytes:" not in done.stdout and " optimizer:" not in done.stdout, done.stdout
    if not torch.cuda.is_available():  # no GPU, no KAFKA_DEVICE=cpu: a default stage cannot run
        assert done.returncode == 1 and "FAIL device: no CUDA GPU" in done.stdout, done.stdout


def test_the_memory_plan_against_the_hand_counts(tmp_path):
    """TinyLlama_v1.1: 1.100B parameters, LoRA r 32 on every projection 25.2M, and 2a's peak in
    docs/performance.md's hand count (8.5-9.5 GiB); a larger batch needs more, bf16 norms less."""
    targets = memory_plan.lora_targets()
    assert round(TINYLLAMA_SHAPE.params / 1e9, 3) == 1.100 and round(TINYLLAMA_SHAPE.lora_params(32, targets) / 1e6, 1) == 25.2
    assert 8.0 <= memory_plan.train_memory("2a", TINYLLAMA_SHAPE, 512).gib <= 9.5
    qlora = memory_plan.stage_defaults("2b")
    default = memory_plan.train_memory("2b", TINYLLAMA_SHAPE, 2048, qlora)
    assert memory_plan.train_memory("2b", TINYLLAMA_SHAPE, 2048, qlora, batch_size=4).gib > default.gib
    assert memory_plan.train_memory("2b", TINYLLAMA_SHAPE, 2048, {**qlora, "upcast_norms": False}).gib < default.gib
    # The base model's own config.json decides the shape once it is downloaded.
    base = stages.base_model_dir(tmp_path)
    base.mkdir(parents=True)
    (base / "config.json").write_text(json.dumps({**memory_plan.TINYLLAMA_V1_1, "num_hidden_layers": 11}))
    assert memory_plan.model_shape(tmp_path).layers == 11
    assert memory_plan.sample_tokens(tmp_path, "2d") == 512 and memory_plan.sample_tokens(tmp_path, "2b") == 2048
