"""Step 2d (the alternative imprint): full-weight training of the 2a model on the novel, in
512-token samples, instead of 2c's LoRA. The curriculum's default path stays 1a -> 2c; use 2d when
2c's adapter does not move the model far enough toward the novel (its validation loss on the
held-out slice stays high): every weight learns, at the price of 2a's memory and of more French
forgotten (the validation loss on 1a's books shows how much).

    docker exec -it kafka python 2d_train_kafka_fullweight.py
    python 2d_train_kafka_fullweight.py --project-dir /tmp/kafka-demo --config profiles/tiny/2d.json   # tiny, CPU
    python 3_continue_kafka.py --stage 2d; python 4_export_gguf.py --stage 2d   # then as with 2c

Reads models/2a_gallica_fullweight and data/1c_kafka (its row of the stage table), cuts each
2048-token window into four 512-token samples (a full-weight step at 2048 does not fit 12 GB),
and writes models/2d_kafka_fullweight/ (model + tokenizer, safetensors). Same recipe as 2a
(chateau/fullweight.py) and the same memory on a 12 GB card: 6.6 GB of bf16 weights, gradients and
8-bit AdamW states for 1.1B parameters, plus activations at 8 x 512 tokens with checkpointing.
"""
from dataclasses import dataclass

from chateau import fullweight, stages
from chateau.cli import parse_settings, project_dir, run, say, setting


@dataclass
class Settings(fullweight.FullWeightSettings):
    # 1c's ~390 windows of 2048 (stride 512) -> ~1,560 samples of 512 (each token ~4 times, as in 2c);
    # 8 x 2 x 512 = 8,192 tokens per step -> ~100 steps, 2c's count.
    tokens_per_step: int = setting(8192, "tokens per optimizer step, over all processes (8k: 16 samples of 512)")
    batch_size: int = setting(8, "samples per GPU per micro-step (8 x 512 tokens fits 12 GB, as in 2a)", identity=False)
    sample_tokens: int = setting(512, "cut the novel's windows into samples of this many tokens (512: fits 12 GB)")
    # Half 2a's peak: the model already speaks French; a small book at 1e-4 on every weight
    # forgets more French than it gains of the novel (the 1a validation loss shows it).
    lr: float = setting(5e-5, "peak learning rate (full weights)")
    warmup_steps: int = setting(5, "linear warm-up steps (5% of the run)")
    weight_decay: float = setting(0.1, "decoupled weight decay on matrices (TinyLlama's value)")
    eval_steps: int = setting(10, "validate every N steps", identity=False)
    save_steps: int = setting(20, "checkpoint every N steps", identity=False)
    sample_steps: int = setting(25, "generate a sample every N steps (0 = never)", identity=False)


def main(argv=None):
    settings = parse_settings(Settings, argv, description=__doc__)
    if fullweight.train(settings, "2d") is not None:
        say(f"2d done: model in {stages.folder(project_dir(settings.project_dir), '2d')}. "
            f"Next: python {stages.script_of('3')} --stage 2d, or python {stages.script_of('4')} --stage 2d")


if __name__ == "__main__":
    run(main)
