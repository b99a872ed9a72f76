"""Step 2c: imprint the novel: continue 2b's LoRA (loaded trainable) on Le Château's windows,
then merge it into the 2a model at full precision.

    docker exec -it kafka python 2c_train_kafka_QLoRA.py
    python 2c_train_kafka_QLoRA.py --project-dir /tmp/kafka-demo --config profiles/tiny/2c.json   # tiny, CPU

Same recipe as 2b (chateau/qlora.py) with other settings; its row of the stage table says the
rest: data 1c, adapter from 2b, validation on the novel's held-out slice and on French (1b) to show
forgetting, a merged model. Writes the adapter to models/2c_kafka_qlora/ and, with --merge
(default), models/2c_kafka_qlora/merged/: the 2a model (bf16 on GPU, never the 4-bit weights) with
the adapter merged in, + tokenizer, loadable by AutoModelForCausalLM.from_pretrained. The stage is
finished (metrics.json) only once the merge is written.
"""
from dataclasses import dataclass

from chateau import qlora, stages, training
from chateau.cli import parse_settings, run, say, setting


@dataclass
class Settings(training.ImprintSettings, qlora.QLoRASettings):
    # 10 passes of the novel (every training token once per pass: the recipe rebuilds the text from
    # 1c's overlapping windows), each measured and kept (an adapter: megabytes); the dial publishes
    # the pass at the edge of overfitting (chateau/dial.py). 2 x 2 x 2048 = 8,192 tokens per step:
    # ~24 steps per pass of Le Chateau.
    tokens_per_step: int = setting(8192, "tokens per optimizer step, over all processes (8k: 4 windows of 2048)")
    batch_size: int = setting(2, "windows per GPU per micro-step", identity=False)
    # The same LoRA rate as 2b: a LoRA's rates are ~10x a full-weight run's (its updates are
    # low-rank and start from zero); over 10 passes the dial, not the rate, decides how far the
    # imprint goes: a pass that recites is not published.
    lr: float = setting(2e-4, "peak learning rate (LoRA)")


def main(argv=None):
    settings = parse_settings(Settings, argv, description=__doc__)
    project = stages.workspace_of(settings)
    if qlora.train(settings, "2c") is not None:
        say(f"2c done: adapter in {stages.folder(project, '2c')}"
            f"{', merged model in ' + str(stages.model_dir(project, '2c')) if settings.merge else ''}. "
            f"Next: {stages.command('3', settings.base_model)} (writes the continuation), or notebook.ipynb's scoreboard")


if __name__ == "__main__":
    run(main)
