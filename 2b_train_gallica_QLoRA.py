"""Step 2b: QLoRA on 250k x 2048 tokens of French: the 2a model in 4-bit NF4, a new LoRA on every
linear projection (q, k, v, o, gate, up, down).

    docker exec -it kafka python 2b_train_gallica_QLoRA.py
    python 2b_train_gallica_QLoRA.py --project-dir /tmp/kafka-demo --max-steps 20 --batch-size 2 \\
        --grad-accum 1 --lr 1e-2 --warmup-steps 2 --eval-steps 10 --save-steps 10 --sample-steps 0   # tiny, CPU
    torchrun --nproc_per_node 2 2b_train_gallica_QLoRA.py ...   # several GPUs (DDP, one 4-bit copy per GPU)

Reads models/2a_gallica_fullweight and data/1b_gallica_qlora; writes the adapter (peft format,
safetensors) to models/2b_gallica_qlora/, TensorBoard logs to runs/2b_gallica_qlora/, and
metrics.json with the validation loss on 1b's books and, to show forgetting, on 1a's.

This file is also the QLoRA recipe of step 2c, which only changes its settings (other data, the
adapter to continue, other rates): QLoRA is configuration, not code.
"""
from dataclasses import dataclass

import torch

import common
import training


@dataclass
class Settings(training.TrainSettings):
    # 2 x 16 x 2048 = 65,536 tokens per optimizer step; 250k samples -> 7,813 steps.
    batch_size: int = common.setting(2, "samples per GPU per micro-step (2 x 2048 tokens fits 12 GB with a 4-bit base)")
    grad_accum: int = common.setting(16, "micro-steps per optimizer step (64k tokens per step)")
    # LoRA's B starts at zero and its updates are scaled by alpha/r: it needs rates ~10x a
    # full-weight run (QLoRA paper: 2e-4 for 7B-13B models); 1e-5 barely moves it.
    lr: float = common.setting(2e-4, "peak learning rate (LoRA)")
    warmup_steps: int = common.setting(100, "linear warm-up steps (~1% of the run)")
    weight_decay: float = common.setting(0.0, "weight decay (none on LoRA factors, as in QLoRA)")
    lora_r: int = common.setting(32, "LoRA rank: 32 gives ~25M trainable parameters (2.3% of 1.1B), room for a new domain")
    lora_alpha: int = common.setting(64, "LoRA scale numerator (updates scaled by alpha/r = 2)")
    lora_dropout: float = common.setting(0.05, "dropout on LoRA inputs")
    data: str = common.setting("1b", "prepare step whose data is trained on")
    eval_also: str = common.setting("1a", "prepare steps (comma-separated) whose validation loss is also reported, to show forgetting")
    adapter_from: str = common.setting("", "train step whose adapter is continued ('' = a new LoRA)")
    output: str = common.setting("2b", "train step this run writes")

    def problems(self):
        out = super().problems() + common.positive(self, "lora_r", "lora_alpha")
        stages = [self.data] + [s for s in self.eval_also.split(",") if s]
        out += [f"unknown prepare step {s!r} (expected 1a, 1b or 1c)" for s in stages if s not in common.DATA]
        out += [f"unknown train step {s!r}" for s in (self.adapter_from or "2b", self.output) if s not in common.MODELS]
        return out


LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def qlora_model(settings, project, base_dir):
    """The 4-bit base with a trainable LoRA: new, or continued from a previous step's adapter."""
    from peft import LoraConfig, PeftModel, get_peft_model, prepare_model_for_kbit_training

    model = common.load_model_4bit(base_dir, attn_implementation=settings.attn_implementation)
    model.config.use_cache = False
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=settings.gradient_checkpointing,
                                            gradient_checkpointing_kwargs={"use_reentrant": False})
    if settings.adapter_from:
        adapter_dir = training.require_trained(project, settings.adapter_from)
        # is_trainable=True: peft's default (False) loads the adapter frozen and trains nothing.
        return PeftModel.from_pretrained(model, adapter_dir, is_trainable=True)
    config = LoraConfig(r=settings.lora_r, lora_alpha=settings.lora_alpha, lora_dropout=settings.lora_dropout,
                        target_modules=LORA_TARGETS, bias="none", task_type="CAUSAL_LM")
    return get_peft_model(model, config)


def train(settings):
    """The QLoRA recipe: 2b runs it as it is, 2c with its own settings."""
    from peft import get_peft_model_state_dict

    common.check_device()
    project = common.project_dir(settings.project_dir)
    torch.manual_seed(settings.seed)

    # 1. Model: 2a's weights in 4-bit, LoRA on top.
    base_dir = training.require_trained(project, "2a")
    tokenizer = common.load_tokenizer(base_dir)
    model = qlora_model(settings, project, base_dir)
    adapter_start = common.tensor_digest(get_peft_model_state_dict(model))

    # 2. Data: this step's samples; validation on them and on the earlier steps' data.
    positions = model.config.max_position_embeddings
    data, _ = common.load_prepared(project, settings.data, tokenizer, positions)
    stages = [settings.data] + [s for s in settings.eval_also.split(",") if s]
    validation = training.validation_sets(project, stages, tokenizer, positions, settings.max_eval_samples)

    # 3. Train.
    return training.fit(settings, settings.output, model, tokenizer, data["train"], validation,
                        extra_metrics={"adapter_digest_start": adapter_start, "adapter_from": settings.adapter_from})


def main():
    settings = common.parse_settings(Settings, description=__doc__)
    train(settings)
    common.say(f"2b done: adapter in {common.project_dir(settings.project_dir) / common.MODELS['2b']}. "
          f"Next: python {common.SCRIPTS['1c']} (if not done), then python {common.SCRIPTS['2c']}")


if __name__ == "__main__":
    common.run(main)
