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

from chateau import qlora, stages
from chateau.cli import parse_settings, project_dir, run, say, setting


@dataclass
class Settings(qlora.QLoRASettings):
    # The book is ~200k tokens: stride 512 gives ~390 windows of 2048 = one pass of 4 pseudo-epochs.
    # 2 x 2 x 2048 = 8,192 tokens per step -> ~100 steps: enough steps for warm-up and decay.
    tokens_per_step: int = setting(8192, "tokens per optimizer step, over all processes (8k: 4 windows of 2048)")
    batch_size: int = setting(2, "windows per GPU per micro-step", identity=False)
    # The same LoRA rate as 2b: the adapter already speaks French; 2e-4 over ~100 steps moves it
    # to the novel's names and style (validation perplexity on the held-out slice shows it)
    # while French validation loss shows what it costs.
    lr: float = setting(2e-4, "peak learning rate (LoRA)")
    warmup_steps: int = setting(5, "linear warm-up steps (5% of the run)")
    eval_steps: int = setting(10, "validate every N steps", identity=False)
    save_steps: int = setting(20, "checkpoint every N steps", identity=False)
    sample_steps: int = setting(25, "generate a sample every N steps (0 = never)", identity=False)


def main(argv=None):
    settings = parse_settings(Settings, argv, description=__doc__)
    project = project_dir(settings.project_dir)
    if qlora.train(settings, "2c") is not None:
        say(f"2c done: adapter in {stages.folder(project, '2c')}"
            f"{', merged model in ' + str(stages.model_dir(project, '2c')) if settings.merge else ''}. "
            f"Next: python {stages.script_of('3')} (writes the continuation), or notebook.ipynb's scoreboard")


if __name__ == "__main__":
    run(main)
