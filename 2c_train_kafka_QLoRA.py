"""Step 2c: imprint the novel: continue 2b's LoRA (loaded trainable) on Le Château's windows,
then merge it into the 2a model at full precision.

    docker exec -it kafka python 2c_train_kafka_QLoRA.py
    python 2c_train_kafka_QLoRA.py --project-dir /tmp/kafka-demo --batch-size 2 --grad-accum 1 \\
        --lr 1e-2 --warmup-steps 2 --eval-steps 10 --save-steps 10 --sample-steps 0   # tiny, CPU

Same recipe as 2b (see 2b_train_gallica_QLoRA.py) with other settings: data 1c, adapter from 2b,
validation on the novel's held-out slice and on French (1b) to show forgetting. Writes the
adapter to models/2c_kafka_qlora/ and, with --merge (default), models/2c_kafka_qlora/merged/:
the 2a model (bf16 on GPU, never the 4-bit weights) with the adapter merged in, + tokenizer,
loadable by AutoModelForCausalLM.from_pretrained.
"""
import importlib
import shutil
from dataclasses import dataclass

import common
import training

qlora = importlib.import_module("2b_train_gallica_QLoRA")


@dataclass
class Settings(qlora.Settings):
    # The book is ~200k tokens: stride 512 gives ~390 windows of 2048 = one pass of 4 pseudo-epochs.
    # 2 x 2 x 2048 = 8,192 tokens per step -> ~100 steps: enough steps for warm-up and decay.
    batch_size: int = common.setting(2, "windows per GPU per micro-step")
    grad_accum: int = common.setting(2, "micro-steps per optimizer step (8k tokens per step)")
    # The same LoRA rate as 2b: the adapter already speaks French; 2e-4 over ~100 steps moves it
    # to the novel's names and style (validation perplexity on the held-out slice shows it)
    # while French validation loss shows what it costs.
    lr: float = common.setting(2e-4, "peak learning rate (LoRA)")
    warmup_steps: int = common.setting(5, "linear warm-up steps (5% of the run)")
    eval_steps: int = common.setting(10, "validate every N steps")
    save_steps: int = common.setting(20, "checkpoint every N steps")
    sample_steps: int = common.setting(25, "generate a sample every N steps (0 = never)")
    data: str = common.setting("1c", "prepare step whose data is trained on")
    eval_also: str = common.setting("1b", "prepare steps whose validation loss is also reported (French, for forgetting)")
    adapter_from: str = common.setting("2b", "train step whose adapter is continued")
    output: str = common.setting("2c", "train step this run writes")
    merge: bool = common.setting(True, "merge the adapter into the 2a model at full precision, into merged/")


def merge(project):
    """2a's weights (bf16 on GPU, fp32 on CPU; never the 4-bit ones) + the 2c adapter -> merged/."""
    from peft import PeftModel
    base_dir, adapter_dir = project / common.MODELS["2a"], project / common.MODELS["2c"]
    model = PeftModel.from_pretrained(common.load_model(base_dir), adapter_dir).merge_and_unload()
    staging, merged = adapter_dir / ".merged.partial", adapter_dir / "merged"
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging)
    common.load_tokenizer(base_dir).save_pretrained(staging)
    shutil.rmtree(merged, ignore_errors=True)
    staging.rename(merged)
    return merged


def main():
    settings = common.parse_settings(Settings, description=__doc__)
    project = common.project_dir(settings.project_dir)
    qlora.train(settings)
    if settings.merge and common.is_main_process():
        merged = merge(project)
        common.say(f"2c done: adapter in {project / common.MODELS['2c']}, merged model in {merged}. "
              f"Next: python {common.SCRIPTS['3']} (writes the continuation), or notebook.ipynb's scoreboard")


if __name__ == "__main__":
    common.run(main)
