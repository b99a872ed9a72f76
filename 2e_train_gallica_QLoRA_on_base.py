"""Step 2e (the path of a base too big to train whole, e.g. Mistral-7B): QLoRA on French directly
on the base model in 4-bit NF4 (there is no 2a: a 7B model's full weights do not fit 12 GB), a new
LoRA of rank 16 on every projection, trained on 1a's 512-token samples.

    docker exec -it kafka python 2e_train_gallica_QLoRA_on_base.py --base-model models/Mistral-7B-v0.1
    python 2e_train_gallica_QLoRA_on_base.py --project-dir /tmp/kafka-demo --config profiles/tiny/2e.json   # tiny, CPU

Every step of this path takes the same --base-model: its stages live in bases/<the base's folder
name>/ (data/, models/, runs/, output/), so the TinyLlama stages of the same project are never
touched. Reads the base and data/1a_gallica_fullweight (prepared with this base's tokenizer:
`python 1a_prepare_gallica_fullweight.py --base-model ...` first); writes the adapter to
models/2e_gallica_qlora_on_base/. The defaults are the first public attempt's 7B run (its
Experiment 3), which gave the best French of all its models: rank 16, alpha 16, dropout 0.05, 8
samples of 512 tokens per step, lr 1e-5, ~205M tokens (its 100k samples of 2048 tokens cut to
512), not a whole pass over 1a's ~512M. Same recipe as 2b (chateau/qlora.py).
"""
from dataclasses import dataclass

from chateau import qlora, stages
from chateau.cli import parse_settings, run, say, setting


@dataclass
class Settings(qlora.QLoRASettings):
    # 8 x 512 = 4,096 tokens per step; 50,000 steps = 204.8M tokens, the seed's 100k x 2048.
    tokens_per_step: int = setting(4096, "tokens per optimizer step, over all processes (8 samples of 512)")
    batch_size: int = setting(8, "samples per GPU per micro-step (8 x 512 with a 4-bit 7B base fits 12 GB: docs/performance.md)",
                              identity=False)
    max_steps: int = setting(50000, "optimizer steps (50,000 x 4,096 tokens = ~205M: the seed's step, not a whole pass of 1a)")
    # The seed's rate. Low for a LoRA (2b uses 2e-4), but a 7B base already writes good French:
    # this step moves its register toward the books', it does not teach the language.
    lr: float = setting(1e-5, "peak learning rate (LoRA)")
    warmup_steps: int = setting(500, "linear warm-up steps (1% of the run)")
    lora_r: int = setting(16, "LoRA rank (the seed's 16: ~42M trainable parameters on a 7B model)")
    lora_alpha: int = setting(16, "LoRA scale numerator (updates scaled by alpha/r = 1)")


def main(argv=None):
    settings = parse_settings(Settings, argv, description=__doc__)
    if qlora.train(settings, "2e") is not None:
        say(f"2e done: adapter in {stages.folder(stages.workspace_of(settings), '2e')}. "
            f"Next: {stages.command('1c', settings.base_model)} (if not done), then {stages.command('2f', settings.base_model)}")


if __name__ == "__main__":
    run(main)
