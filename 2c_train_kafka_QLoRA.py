"""Step 2c: imprint the novel: continue 2b's LoRA (loaded trainable) on Le Château's windows,
then merge it into the 2a model at full precision.

    docker exec -it kafka python 2c_train_kafka_QLoRA.py
    python 2c_train_kafka_QLoRA.py --project-dir /tmp/kafka-demo --batch-size 2 --grad-accum 1 \\
        --lr 1e-2 --warmup-steps 2 --eval-steps 10 --save-steps 10 --sample-steps 0   # tiny, CPU

Same recipe as 2b (chateau/qlora.py) with other settings: data 1c, adapter from 2b,
validation on the novel's held-out slice and on French (1b) to show forgetting. Writes the
adapter to models/2c_kafka_qlora/ and, with --merge (default), models/2c_kafka_qlora/merged/:
the 2a model (bf16 on GPU, never the 4-bit weights) with the adapter merged in, + tokenizer,
loadable by AutoModelForCausalLM.from_pretrained.
"""
from dataclasses import dataclass

from chateau import qlora, stages
from chateau.cli import is_main_process, parse_settings, project_dir, run, say, setting


@dataclass
class Settings(qlora.QLoRASettings):
    # The book is ~200k tokens: stride 512 gives ~390 windows of 2048 = one pass of 4 pseudo-epochs.
    # 2 x 2 x 2048 = 8,192 tokens per step -> ~100 steps: enough steps for warm-up and decay.
    batch_size: int = setting(2, "windows per GPU per micro-step")
    grad_accum: int = setting(2, "micro-steps per optimizer step (8k tokens per step)")
    # The same LoRA rate as 2b: the adapter already speaks French; 2e-4 over ~100 steps moves it
    # to the novel's names and style (validation perplexity on the held-out slice shows it)
    # while French validation loss shows what it costs.
    lr: float = setting(2e-4, "peak learning rate (LoRA)")
    warmup_steps: int = setting(5, "linear warm-up steps (5% of the run)")
    eval_steps: int = setting(10, "validate every N steps")
    save_steps: int = setting(20, "checkpoint every N steps")
    sample_steps: int = setting(25, "generate a sample every N steps (0 = never)")
    data: str = setting("1c", "prepare step whose data is trained on")
    eval_also: str = setting("1b", "prepare steps whose validation loss is also reported (French, for forgetting)")
    adapter_from: str = setting("2b", "train step whose adapter is continued")
    output: str = setting("2c", "train step this run writes")
    merge: bool = setting(True, "merge the adapter into the 2a model at full precision, into merged/")


def main():
    settings = parse_settings(Settings, description=__doc__)
    project = project_dir(settings.project_dir)
    merge = (lambda p: qlora.merge(p, settings.output)) if settings.merge and is_main_process() else None
    if qlora.train(settings, then=merge) is not None:
        say(f"2c done: adapter in {stages.folder(project, settings.output)}"
            f"{', merged model in its merged/' if merge else ''}. "
            f"Next: python {stages.script_of('3')} (writes the continuation), or notebook.ipynb's scoreboard")


if __name__ == "__main__":
    run(main)
