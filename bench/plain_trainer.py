"""The train benchmark's baseline: what a user would write with the HF defaults. A plain Trainer
(+ peft LoRA r 32 on a default 4-bit base for 2b/2c) on the same prepared data, timed per
optimizer step after warm-up. Prints `RESULT [tokens/s, peak GiB]` as its last line.

    python -m bench.plain_trainer PROJECT STAGE BATCH_SIZE STEPS [MEMORY_CAP_GIB]
"""
import json
import sys
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, BitsAndBytesConfig, Trainer, TrainerCallback, TrainingArguments

from bench.capped import cap_memory
from chateau import stages, training


class Clock(TrainerCallback):
    def __init__(self):
        self.times = []

    def on_step_end(self, *args, **kwargs):
        self.times.append(time.perf_counter())


def main(project, stage, batch_size, steps, cap_gib=None):
    from datasets import load_from_disk
    cap_memory(cap_gib)
    data_stage = next(s for s in stages.stage(stage).reads if s in stages.PREPARE_STAGES)
    data = load_from_disk(str(stages.folder(project, data_stage)))["train"]
    path = stages.folder(project, "2a")
    if stage == "2a":
        model = AutoModelForCausalLM.from_pretrained(path)
    else:
        from peft import LoraConfig, get_peft_model
        model = AutoModelForCausalLM.from_pretrained(path, quantization_config=BitsAndBytesConfig(load_in_4bit=True))
        model = get_peft_model(model, LoraConfig(r=32, lora_alpha=64, target_modules="all-linear", task_type="CAUSAL_LM"))
    clock = Clock()
    cuda = torch.cuda.is_available()
    args = TrainingArguments(output_dir=str(project / "baseline"), per_device_train_batch_size=batch_size, max_steps=steps,
                             bf16=cuda, use_cpu=not cuda, report_to=[], save_strategy="no", logging_steps=1)
    Trainer(model=model, args=args, train_dataset=data, data_collator=training.collate, callbacks=[clock]).train()
    warm = clock.times[max(2, steps // 4):]
    tps = (len(warm) - 1) * batch_size * len(data[0]["input_ids"]) / (warm[-1] - warm[0]) if len(warm) > 1 else None
    peak = torch.cuda.max_memory_reserved() / 2**30 if cuda else None
    print("RESULT", json.dumps([tps, peak]))


if __name__ == "__main__":
    project, stage, batch_size, steps, *cap = sys.argv[1:]
    main(Path(project), stage, int(batch_size), int(steps), float(cap[0]) if cap else None)
