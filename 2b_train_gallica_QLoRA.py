"""Step 2b: QLoRA on 250k x 2048 tokens of French: the 2a model in 4-bit NF4, a new LoRA on every
linear projection (q, k, v, o, gate, up, down).

    docker exec -it kafka python 2b_train_gallica_QLoRA.py
    python 2b_train_gallica_QLoRA.py --project-dir /tmp/kafka-demo --config profiles/tiny/2b.json   # tiny, CPU
    torchrun --nproc_per_node 2 2b_train_gallica_QLoRA.py   # several GPUs (DDP, one 4-bit copy per GPU)

Reads models/2a_gallica_fullweight and data/1b_gallica_qlora (its row of the stage table); writes
the adapter (peft format, safetensors) to models/2b_gallica_qlora/, TensorBoard logs to
runs/2b_gallica_qlora/, and metrics.json with the validation loss on 1b's books and, to show
forgetting, on 1a's.

The recipe is chateau/qlora.py's, shared with step 2c, which only changes the settings (other
data, the adapter to continue, other rates): QLoRA is configuration, not code.
"""
from dataclasses import dataclass

from chateau import qlora, stages
from chateau.cli import parse_settings, run, say, setting


@dataclass
class Settings(qlora.QLoRASettings):
    # 2 x 16 x 2048 = 65,536 tokens per optimizer step; 250k samples -> 7,813 steps.
    tokens_per_step: int = setting(65536, "tokens per optimizer step, over all processes (64k: 32 samples of 2048)")
    batch_size: int = setting(2, "samples per GPU per micro-step (2 x 2048 tokens fits 12 GB with a 4-bit base)", identity=False)
    # LoRA's B starts at zero and its updates are scaled by alpha/r: it needs rates ~10x a
    # full-weight run (QLoRA paper: 2e-4 for 7B-13B models); 1e-5 barely moves it.
    lr: float = setting(2e-4, "peak learning rate (LoRA)")
    warmup_steps: int = setting(100, "linear warm-up steps (~1% of the run)")
    weight_decay: float = setting(0.0, "weight decay (none on LoRA factors, as in QLoRA)")
    # a new LoRA r 32 / alpha 64 on every projection: the recipe's defaults.


def main(argv=None):
    settings = parse_settings(Settings, argv, description=__doc__)
    if qlora.train(settings, "2b") is not None:
        say(f"2b done: adapter in {stages.folder(stages.workspace_of(settings), '2b')}. "
            f"Next: {stages.command('1c', settings.base_model)} (if not done), then {stages.command('2c', settings.base_model)}")


if __name__ == "__main__":
    run(main)
