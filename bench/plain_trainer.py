"""The train benchmark's baseline: what a user would write with the HF defaults. A plain Trainer
(+ peft LoRA r 32 on a default 4-bit base for 2b/2c) on the same prepared data: bf16 mixed
precision on GPU (fp32 weights, bf16 compute), fp32 on CPU (as the steps), no gradient
checkpointing. Timed with the steps' own clock (chateau.training.StepClock) after warm-up.
Prints `RESULT [tokens/s, peak reserved GiB]` as its last line; a CUDA out-of-memory error
prints `RESULT OOM`.

    python -m bench.plain_trainer PROJECT STAGE BATCH_SIZE STEPS [MEMORY_CAP_GIB]
"""
import json
import sys
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, BitsAndBytesConfig, Trainer, TrainingArguments

from bench.capped import cap_memory
from chateau import stages, training


def main(project, stage, batch_size, steps, cap_gib=None):
    from datasets import load_from_disk
    cap_memory(cap_gib)
    data = load_from_disk(str(stages.folder(project, stages.stage(stage).data)))["train"]
    path = stages.folder(project, "2a")  # the bench's starting point keeps its real-shape model there
    if stages.stage(stage).recipe == "fullweight":
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, trust_remote_code=False)  # the weights were saved in bf16
    else:
        from peft import LoraConfig, get_peft_model
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, trust_remote_code=False,
                                                     quantization_config=BitsAndBytesConfig(load_in_4bit=True))
        model = get_peft_model(model, LoraConfig(r=32, lora_alpha=64, target_modules="all-linear", task_type="CAUSAL_LM"))
    clock = training.StepClock()
    cuda = torch.cuda.is_available()
    args = TrainingArguments(output_dir=str(project / "baseline"), per_device_train_batch_size=batch_size, max_steps=steps,
                             bf16=cuda, use_cpu=not cuda, report_to=[], save_strategy="no", logging_steps=1)
    try:
        Trainer(model=model, args=args, train_dataset=data, data_collator=training.collate, callbacks=[clock]).train()
    except torch.OutOfMemoryError:
        print("RESULT OOM")
        return
    tps = training.tokens_per_second(clock.times, batch_size * len(data[0]["input_ids"]), warmup=max(2, steps // 4))
    peak = torch.cuda.max_memory_reserved() / 2**30 if cuda else None
    print("RESULT", json.dumps([tps, peak]))


if __name__ == "__main__":
    project, stage, batch_size, steps, *cap = sys.argv[1:]
    main(Path(project), stage, int(batch_size), int(steps), float(cap[0]) if cap else None)
