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
    assert "2a, 2b, 2c, 2d, 2e, 2f cannot run" in lines["bf16"] and "compute capability 8.0+" in lines["bf16"]
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

    # 3 GiB: 2a's full weights do not fit even at batch 1, so the base's path is QLoRA on its 4-bit
    # self (2e -> 2f), said in one line; 2e fits at a smaller batch, the full-weight chain is not checked.
    gpu_machine(monkeypatch, [("NVIDIA GeForce RTX 3050", (8, 6))], free_gib=3.0)
    code, lines = run(capsys, tmp_path, "--quick")
    assert code == 1
    assert lines["path"].startswith(f"info path: {stages.BASE_MODEL} (1.10B parameters") and \
        "do not fit the 3.0 GiB free on GPU 0" in lines["path"] and "1a, 1c → 2e → 2f" in lines["path"]
    assert lines["memory 2e"].startswith("FAIL") and "pass --batch-size 4" in lines["memory 2e"]
    assert lines["memory 2c"].startswith("info") and "not on this base's path" in lines["memory 2c"]

    gpu_machine(monkeypatch, [("NVIDIA GeForce RTX 3050", (8, 6))], free_gib=1.5)
    code, lines = run(capsys, tmp_path, "--quick")
    assert code == 1 and "does not fit even at --batch-size 1" in lines["memory 2e"]


def test_too_little_disk_for_the_unfinished_stages(monkeypatch, capsys, tmp_path):
    gpu_machine(monkeypatch, [("NVIDIA H200", (9, 0))], free_gib=139.0, disk_gib=12.0)
    code, lines = run(capsys, tmp_path, "--quick")
    assert code == 1
    assert lines["disk"].startswith(f"FAIL disk: 12.0 GiB free under {tmp_path}; the stages not finished yet "
                                    f"(1a, 1b, 1c, 2a, 2b, 2c, 4) will write ~")
    assert "2d, 2e, 2f (off the default path) would add" in lines["disk"] and "GiB more" in lines["disk"]

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


MISTRAL_7B = "models/Mistral-7B-v0.1"


def mistral_7b(project):
    """Mistral-7B-v0.1's config.json in `project` (the estimates need no weights): its shape."""
    folder = stages.base_model_dir(project, MISTRAL_7B)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({**memory_plan.MISTRAL_7B_V0_1, "model_type": "mistral"}))
    return memory_plan.model_shape(project, MISTRAL_7B)


def test_the_memory_plan_of_a_7b_base(tmp_path):
    """Mistral-7B-v0.1's shape from its config.json: 7.24B parameters, LoRA r 16 on every projection
    41.9M. 2e and 2f (QLoRA on the 4-bit base, 8 x 512) fit a 12 GB card at their defaults, 2f's
    merge on the CPU (~15.6 GiB of RAM, not the GPU's); 2a and 2d (full weights) fit at no batch."""
    shape = mistral_7b(tmp_path)
    targets = memory_plan.lora_targets()
    assert round(shape.params / 1e9, 2) == 7.24 and round(shape.lora_params(16, targets) / 1e6, 1) == 41.9
    e = memory_plan.train_memory("2e", shape, 512)
    assert e.setup == "4-bit base + LoRA r 16, batch 8 x 512 tokens" and 9.0 <= e.gib <= 10.5 < memory_plan.CARD_GIB
    assert e.parts["4-bit weights"] == pytest.approx(6.979e9 * memory_plan.NF4_BYTES / GIB, rel=1e-3)  # ~3.35 GiB
    assert e.parts["LoRA + its AdamW"] == pytest.approx(41.94e6 * 16 / GIB, rel=1e-3)                # ~0.62 GiB
    assert e.parts["checkpointed layer inputs"] == pytest.approx(32 * 8 * 512 * 4096 * 4 / GIB)       # 2.0 GiB, fp32
    f = memory_plan.train_memory("2f", shape, memory_plan.sample_tokens(tmp_path, "2f"))
    assert "LoRA r 16" in f.setup and f.parts == e.parts  # 2e's adapter continued: its rank, whatever 2f's --lora-r
    assert "its merge on the CPU" in f.setup and 15.0 <= f.merge.gib <= 16.5 and f.gib == pytest.approx(e.gib)
    assert f.merge.parts["the base's weights (bf16)"] == pytest.approx(shape.params * 2 / GIB)  # 13.5 GiB
    assert memory_plan.train_memory("2f", shape, 512, free_gib=80.0).merge is None  # a big card merges on the GPU
    for name in ("2a", "2d"):  # full weights: 6 B a parameter before any activation
        assert memory_plan.train_memory(name, shape, 512, batch_size=1).gib > 40 > memory_plan.CARD_GIB
        assert not memory_plan.fits(name, shape, 512, memory_plan.CARD_GIB)
    assert memory_plan.fits("2e", shape, 512, memory_plan.CARD_GIB)

    # How the figures scale: activations linearly with the batch, the weights and LoRA not at all;
    # the 4-bit weights with the matrices' parameters, the checkpointed inputs with layers x hidden.
    at = {b: memory_plan.train_memory("2e", shape, 512, batch_size=b) for b in (2, 4, 8)}
    assert at[8].gib - at[4].gib == pytest.approx(2 * (at[4].gib - at[2].gib))
    assert at[2].parts["4-bit weights"] == at[8].parts["4-bit weights"]
    tiny = memory_plan.train_memory("2e", TINYLLAMA_SHAPE, 512)
    assert e.parts["4-bit weights"] / tiny.parts["4-bit weights"] == pytest.approx(
        shape.matrix_params / TINYLLAMA_SHAPE.matrix_params)
    assert e.parts["checkpointed layer inputs"] / tiny.parts["checkpointed layer inputs"] == pytest.approx((32 * 4096) / (22 * 2048))
    bf16 = memory_plan.train_memory("2e", shape, 512, {**memory_plan.stage_defaults("2e"), "upcast_norms": False})
    assert e.gib - bf16.gib > 1.5  # the bf16 residual stream: half the checkpointed inputs and the embedding, head

    # 2e trained at another rank: 2f continues that adapter, and its estimate follows it.
    workspace = stages.workspace(tmp_path, MISTRAL_7B)
    stages.folder(workspace, "2e").mkdir(parents=True)
    (stages.folder(workspace, "2e") / "adapter_config.json").write_text(json.dumps({"r": 8}))
    assert "LoRA r 8" in memory_plan.train_memory("2f", shape, 512, project=workspace).setup

    # Before its download, a known base's shape is its own, not TinyLlama's.
    assert memory_plan.model_shape(tmp_path / "elsewhere", MISTRAL_7B).params == shape.params


def test_a_7b_base_takes_the_qlora_on_base_path(monkeypatch, capsys, tmp_path):
    """--base-model of a base whose full weights do not fit the card: the doctor says its path in
    one line (decided from the estimates) and checks that path's stages, in its workspace."""
    mistral_7b(tmp_path)
    gpu_machine(monkeypatch, [("NVIDIA GeForce RTX 3060", (8, 6))], free_gib=11.6, ram_gib=(128.0, 120.0))
    code = doctor.main(["--project-dir", str(tmp_path), "--quick", "--base-model", MISTRAL_7B])
    out = capsys.readouterr().out
    lines = {line.split(":", 1)[0].split(None, 1)[1]: line for line in out.splitlines()[1:-2]}
    assert code == 0, out
    assert f"base {MISTRAL_7B}: {tmp_path / 'bases' / 'Mistral-7B-v0.1'}" in out.splitlines()[0]
    assert lines["path"].startswith(f"info path: {MISTRAL_7B} (7.24B parameters") and \
        "do not fit the 11.6 GiB free on GPU 0" in lines["path"] and "1a, 1c → 2e → 2f" in lines["path"]
    assert lines["memory 2e"].startswith("ok   memory 2e: 4-bit base + LoRA r 16, batch 8 x 512 tokens: ~")
    assert lines["memory 2f"].startswith("ok") and "its merge on the CPU (~15.6 GiB of RAM)" in lines["memory 2f"]
    for name in ("2a", "2b", "2c", "2d"):
        assert lines[f"memory {name}"].startswith("info") and "not on this base's path" in lines[f"memory {name}"]
    assert "(1a, 1c, 2e, 2f, 4)" in lines["disk"] and "off the default path" not in lines["disk"]
    assert lines["RAM"].startswith("ok") and "2f's merge on the CPU needs ~15.6 GiB" in lines["RAM"]

    gpu_machine(monkeypatch, [("NVIDIA GeForce RTX 3060", (8, 6))], free_gib=11.6, ram_gib=(16.0, 12.0))
    code, lines = run(capsys, tmp_path, "--quick", "--base-model", MISTRAL_7B)
    assert code == 1 and lines["RAM"].startswith("FAIL") and "give 2f a machine with more RAM" in lines["RAM"]

    # The default base on the same card: its full weights fit, no path line, 2e and 2f are small.
    gpu_machine(monkeypatch, [("NVIDIA GeForce RTX 3060", (8, 6))], free_gib=11.6)
    code, lines = run(capsys, tmp_path, "--quick")
    assert code == 0 and "path" not in lines and lines["memory 2e"].startswith("ok")
