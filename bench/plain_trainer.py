"""The train benchmark's baseline: what a competent user writes for a 12 GB card with the HF
stack, and what this project's earlier public attempt wrote. A plain Trainer with `bf16=True`
(autocast), `optim="paged_adamw_8bit"` (bitsandbytes' 8-bit AdamW, paged) and
`gradient_checkpointing=True`, on the same prepared data at the same shapes:

- 2a: every weight trained, loaded in bf16 (bf16 weights + bf16 gradients + 8-bit moments: 6
  bytes a parameter, 6.6 GB for 1.1B; fp32 weights would need 11 GB before any activation). Its
  updates below a bf16 weight's resolution round away (the earlier attempt's silent failure):
  a matter of quality, which this benchmark of memory and speed does not measure.
- 2b/2c: peft's default 4-bit LoRA: BitsAndBytesConfig(load_in_4bit=True) with its defaults (FP4,
  fp32 compute, no double quantization), the rest of the model in fp32, LoRA r 32 on all-linear.

On CPU (the bench's --tiny): no bf16 (use_cpu, fp32 throughout, as the steps on CPU), and
bitsandbytes 0.50 runs the paged 8-bit AdamW unpaged there (paging needs CUDA's managed memory;
the note of the row says so). Timed with the steps' own clock (chateau.training.StepClock) after
warm-up. Prints `RESULT {"tokens_per_second", "peak_gib", "loss", "note"}` as its last line (loss:
the training loss of the last step); a CUDA out-of-memory error prints `RESULT OOM`.

    python -m bench.plain_trainer PROJECT STAGE BATCH_SIZE STEPS [MEMORY_CAP_GIB]
"""
import json
import sys
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, BitsAndBytesConfig, Trainer, TrainingArguments

from bench.capped import cap_memory
from chateau import stages, training

OPTIMIZER = "paged_adamw_8bit"


def plain_model(path, recipe, cuda):
    """The model as the plain recipe loads it (the bench's 2a folder holds bf16 weights)."""
    if recipe == "fullweight":
        return AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16 if cuda else torch.float32,
                                                    trust_remote_code=False)
    from peft import LoraConfig, get_peft_model
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, trust_remote_code=False,
                                                 quantization_config=BitsAndBytesConfig(load_in_4bit=True))
    return get_peft_model(model, LoraConfig(r=32, lora_alpha=64, target_modules="all-linear", task_type="CAUSAL_LM"))


def main(project, stage, batch_size, steps, cap_gib=None):
    from datasets import load_from_disk
    cap_memory(cap_gib)
    cuda = torch.cuda.is_available()
    data = load_from_disk(str(stages.folder(project, stages.stage(stage).data)))["train"]
    model = plain_model(stages.folder(project, "2a"), stages.stage(stage).recipe, cuda)
    clock = training.StepClock()
    args = TrainingArguments(output_dir=str(project / "baseline"), per_device_train_batch_size=batch_size, max_steps=steps,
                             bf16=cuda, use_cpu=not cuda, optim=OPTIMIZER, gradient_checkpointing=True,
                             report_to=[], save_strategy="no", logging_steps=1)
    trainer = Trainer(model=model, args=args, train_dataset=data, data_collator=training.collate, callbacks=[clock])
    try:
        trainer.train()
    except torch.OutOfMemoryError:
        print("RESULT OOM")
        return
    tps = training.tokens_per_second(clock.times, batch_size * len(data[0]["input_ids"]), warmup=max(2, steps // 4))
    loss = next((entry["loss"] for entry in reversed(trainer.state.log_history) if "loss" in entry), None)
    print("RESULT", json.dumps({"tokens_per_second": tps, "peak_gib": torch.cuda.max_memory_reserved() / 2**30 if cuda else None,
                                "loss": loss, "note": "" if cuda else f"CPU: fp32, {OPTIMIZER} unpaged (bitsandbytes on CPU)"}))


if __name__ == "__main__":
    project, stage, batch_size, steps, *cap = sys.argv[1:]
    main(Path(project), stage, int(batch_size), int(steps), float(cap[0]) if cap else None)
