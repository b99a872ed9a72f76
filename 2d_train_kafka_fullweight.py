"""Step 2d (the alternative imprint): full-weight training of the 2a model on the novel, in
512-token samples, instead of 2c's LoRA. The curriculum's default path stays 1a -> 2c; use 2d when
2c's adapter does not move the model far enough toward the novel (its validation loss on the
held-out slice stays high): every weight learns, at the price of 2a's memory and of more French
forgotten (the validation loss on 1a's books shows how much).

    docker exec -it kafka python 2d_train_kafka_fullweight.py
    python 2d_train_kafka_fullweight.py --project-dir /tmp/kafka-demo --config profiles/tiny/2d.json   # tiny, CPU
    python 3_continue_kafka.py --stage 2d; python 4_export_gguf.py --stage 2d   # then as with 2c

Reads models/2a_gallica_fullweight and data/1c_kafka (its row of the stage table), rebuilds the
novel's training text from 1c's overlapping windows and cuts it into 512-token samples (a
full-weight step at 2048 does not fit 12 GB), trains --epochs passes over it, measures each pass
(held-out losses, memorization, style: chateau/dial.py) and keeps it in passes/pass-N/ (2.2 GB each
for TinyLlama in bf16), then publishes the pass the dial picks in models/2d_kafka_fullweight/
(model + tokenizer, safetensors; `python -m chateau.dial --stage 2d` shows the passes and moves it). Same recipe as 2a
(chateau/fullweight.py) and the same memory on a 12 GB card: 6.6 GB of bf16 weights, gradients and
8-bit AdamW states for 1.1B parameters, plus activations at 8 x 512 tokens with checkpointing.
"""
from dataclasses import dataclass

from chateau import fullweight, stages, training
from chateau.cli import parse_settings, run, say, setting


@dataclass
class Settings(training.ImprintSettings, fullweight.FullWeightSettings):
    # The run the project's first public attempt found "clearly more convincing": 512-token samples,
    # 10 passes of the novel, batch 8, peak lr 3e-5, cosine, 20% warm-up. Each pass is measured and
    # kept; the dial publishes the pass at the edge of overfitting (chateau/dial.py).
    tokens_per_step: int = setting(4096, "tokens per optimizer step, over all processes (8 samples of 512)")
    batch_size: int = setting(8, "samples per GPU per micro-step (8 x 512 tokens fits 12 GB, as in 2a)", identity=False)
    sample_tokens: int = setting(512, "samples of this many tokens (512: fits 12 GB)")
    lr: float = setting(3e-5, "peak learning rate (full weights)")
    weight_decay: float = setting(0.1, "decoupled weight decay on matrices (TinyLlama's value)")


def main(argv=None):
    settings = parse_settings(Settings, argv, description=__doc__)
    if fullweight.train(settings, "2d") is not None:
        say(f"2d done: model in {stages.folder(stages.workspace_of(settings), '2d')}. "
            f"Next: {stages.command('3', settings.base_model, '--stage', '2d')}, or {stages.command('4', settings.base_model, '--stage', '2d')}")


if __name__ == "__main__":
    run(main)
