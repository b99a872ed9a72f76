"""Step 2a: full-weight continued pretraining of TinyLlama 1.1B on 1M x 512 tokens of French.

    docker exec -it kafka python 2a_train_gallica_fullweight.py
    python 2a_train_gallica_fullweight.py --project-dir /tmp/kafka-demo --config profiles/tiny/2a.json   # tiny, CPU
    torchrun --nproc_per_node 2 2a_train_gallica_fullweight.py   # several GPUs (DDP): same tokens per step

Reads data/1a_gallica_fullweight (the stage table's row: base model -> 1a), writes
models/2a_gallica_fullweight/ (model + tokenizer, safetensors; checkpoints below),
runs/2a_gallica_fullweight/ (TensorBoard), settings.json and metrics.json.

The recipe is chateau/fullweight.py's (bf16 weights + 8-bit AdamW with stochastic rounding on a
12 GB card: why, in its docstring), shared with step 2d: this script holds settings only.
"""
from dataclasses import dataclass

from chateau import fullweight, stages
from chateau.cli import parse_settings, run, say, setting


@dataclass
class Settings(fullweight.FullWeightSettings):
    # 8 x 16 x 512 = 65,536 tokens per optimizer step; 1M samples -> 7,813 steps (about 2 days on a 12 GB card).
    tokens_per_step: int = setting(65536, "tokens per optimizer step, over all processes (64k: 128 samples of 512)")
    batch_size: int = setting(8, "samples per GPU per micro-step (8 x 512 tokens fits 12 GB with checkpointing)", identity=False)
    # TinyLlama's pretraining decayed to 4e-5; re-warming to a moderate 1e-4 adapts it to French
    # without erasing it (continual-pretraining practice: re-warm, then cosine to 10%).
    lr: float = setting(1e-4, "peak learning rate (full weights)")
    warmup_steps: int = setting(100, "linear warm-up steps (~1% of the run)")
    weight_decay: float = setting(0.1, "decoupled weight decay on matrices (TinyLlama's value)")


def main(argv=None):
    settings = parse_settings(Settings, argv, description=__doc__)
    if fullweight.train(settings, "2a") is not None:
        say(f"2a done: model in {stages.folder(stages.workspace_of(settings), '2a')}. "
            f"Next: {stages.command('1b', settings.base_model)} (if not done), then {stages.command('2b', settings.base_model)}")


if __name__ == "__main__":
    run(main)
