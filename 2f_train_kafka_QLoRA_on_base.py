"""Step 2f (the path of a base too big to train whole): imprint the novel by continuing 2e's LoRA
(loaded trainable: the first public attempt loaded it frozen, and its 7B novel step learned
nothing) on Le Château in passes of 512-token samples, then merge it into the base's weights.

    docker exec -it kafka python 2f_train_kafka_QLoRA_on_base.py --base-model models/Mistral-7B-v0.1
    python 2f_train_kafka_QLoRA_on_base.py --project-dir /tmp/kafka-demo --config profiles/tiny/2f.json   # tiny, CPU
    python 3_continue_kafka.py --stage 2f --base-model models/Mistral-7B-v0.1   # then as with 2c

Reads the base, 2e's adapter and data/1c_kafka of the same --base-model's workspace (bases/<name>/);
rebuilds the novel's training text from 1c's 2048-token windows and cuts it into 512-token samples
(as the seed trained it), trains --epochs passes, measures each (held-out losses, memorization,
style: chateau/dial.py), keeps each pass's adapter (megabytes) and publishes the pass the dial
picks, merged into the base's bf16 weights in merged/. A 7B merge (14.5 GB) does not fit a 12 GB
card: it runs on the CPU and says so (as much RAM needed). The defaults are the seed's: 10 passes,
8 x 512 tokens per step, lr 3e-5, cosine, 20% warm-up. Same recipe as 2c (chateau/qlora.py).
"""
from dataclasses import dataclass

from chateau import qlora, stages, training
from chateau.cli import parse_settings, run, say, setting


@dataclass
class Settings(training.ImprintSettings, training.SampleLengthSettings, qlora.QLoRASettings):
    tokens_per_step: int = setting(4096, "tokens per optimizer step, over all processes (8 samples of 512)")
    batch_size: int = setting(8, "samples per GPU per micro-step (8 x 512 fits 12 GB with a 4-bit 7B base)", identity=False)
    sample_tokens: int = setting(512, "samples of this many tokens (512, as the seed trained its 7B run)")
    # The seed's rate: low for a LoRA (2c uses 2e-4). Whether 10 passes at 3e-5 move a 7B model
    # toward the book is what the dial's per-pass figures show; --lr is the knob if they do not.
    lr: float = setting(3e-5, "peak learning rate (LoRA)")
    # 2e's adapter is continued: its rank and scale are 2e's, and these say so (they shape no new LoRA).
    lora_r: int = setting(16, "LoRA rank (2e's: its adapter is continued)")
    lora_alpha: int = setting(16, "LoRA scale numerator (2e's)")
    # 128 of each validation set (the French one is 512-token samples of 1a): at 7B a validation
    # of 512 costs about what a pass of the novel does, and the dial also measures every pass.
    max_eval_samples: int = setting(128, "validation samples per evaluation, per validation set")


def main(argv=None):
    settings = parse_settings(Settings, argv, description=__doc__)
    if qlora.train(settings, "2f") is not None:
        project = stages.workspace_of(settings)
        say(f"2f done: adapter in {stages.folder(project, '2f')}"
            f"{', merged model in ' + str(stages.model_dir(project, '2f')) if settings.merge else ''}. "
            f"Next: {stages.command('3', settings.base_model, '--stage', '2f')}")


if __name__ == "__main__":
    run(main)
