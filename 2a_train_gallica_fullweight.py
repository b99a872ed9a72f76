"""Step 2a: full-weight continued pretraining of TinyLlama 1.1B on 1M x 512 tokens of French.

    docker exec -it kafka python 2a_train_gallica_fullweight.py
    python 2a_train_gallica_fullweight.py --project-dir /tmp/kafka-demo --max-steps 30 --batch-size 4 \\
        --grad-accum 1 --lr 3e-3 --warmup-steps 3 --eval-steps 10 --save-steps 10 --sample-steps 0   # tiny, CPU
    torchrun --nproc_per_node 2 2a_train_gallica_fullweight.py ...   # several GPUs (DDP)

Reads data/1a_gallica_fullweight, writes models/2a_gallica_fullweight/ (model + tokenizer,
safetensors; checkpoints below), runs/2a_gallica_fullweight/ (TensorBoard), metrics.json.

Precision, and why: on a 12 GB card the weights are bf16 (2 bytes/param) and AdamW's two moments
are 8-bit (2 bytes/param together): 1.1B x (2 weights + 2 grads + 2 state) = 6.6 GB, leaving room
for activations. But a bf16 weight has 8 bits of mantissa: an update below ~1/256 of the weight
rounds away, and at lr 1e-4 most do (the earlier public attempt's silent failure). torchao's
AdamW8bit computes the update in fp32 and writes it back with stochastic rounding, so every
update counts in expectation (tests/test_training.py checks it against an fp32 reference).
fp32 master weights with bitsandbytes' paged 8-bit AdamW (`--optimizer paged_adamw_8bit`) are
exact too but need 1.1B x (4 + 4 + 2) = 11 GB before activations: too much for 12 GB.
"""
from dataclasses import dataclass

import torch

from chateau import lineage, models, stages, training
from chateau.cli import parse_settings, run, say, setting


@dataclass
class Settings(training.TrainSettings):
    base_model: str = setting(stages.BASE_MODEL, stages.BASE_MODEL_HELP)
    # 8 x 16 x 512 = 65,536 tokens per optimizer step; 1M samples -> 7,813 steps (about 2 days on a 12 GB card).
    batch_size: int = setting(8, "samples per GPU per micro-step (8 x 512 tokens fits 12 GB with checkpointing)")
    grad_accum: int = setting(16, "micro-steps per optimizer step (64k tokens per step)")
    # TinyLlama's pretraining decayed to 4e-5; re-warming to a moderate 1e-4 adapts it to French
    # without erasing it (continual-pretraining practice: re-warm, then cosine to 10%).
    lr: float = setting(1e-4, "peak learning rate (full weights)")
    warmup_steps: int = setting(100, "linear warm-up steps (~1% of the run)")
    weight_decay: float = setting(0.1, "decoupled weight decay on matrices (TinyLlama's value)")
    optimizer: str = setting("adamw8bit_sr", "adamw8bit_sr (torchao, bf16 weights + stochastic rounding) | paged_adamw_8bit (bitsandbytes, fp32 weights) | adamw_torch (fp32 reference)")

    def problems(self):
        out = super().problems()
        if self.optimizer not in ("adamw8bit_sr", "paged_adamw_8bit", "adamw_torch"):
            out.append(f"--optimizer must be adamw8bit_sr, paged_adamw_8bit or adamw_torch (got {self.optimizer})")
        return out


def make_optimizer(model, settings):
    """AdamW with 8-bit moments; stochastic rounding when the weights are bf16. No weight decay on
    norms (1-D parameters), as usual for transformers."""
    from torchao.optim import AdamW8bit
    from torchao.optim.subclass_8bit import OptimState8bit
    torch.serialization.add_safe_globals([OptimState8bit])  # checkpoints load with weights_only=True
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": settings.weight_decay},
              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
    bf16 = next(model.parameters()).dtype == torch.bfloat16
    return AdamW8bit(groups, lr=settings.lr, bf16_stochastic_round=bf16)


def main():
    settings = parse_settings(Settings, description=__doc__)
    project = training.begin(settings)
    base = stages.base_model_dir(project, settings.base_model)
    inputs = lineage.train_inputs(project, ["1a"], base) if (base / "config.json").exists() else {}
    with training.stage_run(settings, "2a", inputs) as this_run:
        if this_run.already_done:
            return

        # 1. Model: bf16 weights on GPU for the stochastic-rounding optimizer, fp32 otherwise.
        tokenizer = models.load_tokenizer(base)
        dtype = models.compute_dtype() if settings.optimizer == "adamw8bit_sr" else torch.float32
        model = models.load_model(base, dtype=dtype, attn_implementation=settings.attn_implementation)
        model.config.use_cache = False  # no KV cache while training (checkpointing recomputes)

        # 2. Data: 1a's samples, checked against this tokenizer and context.
        train_data, validation = training.load_data(project, "1a", [], tokenizer, model.config.max_position_embeddings,
                                                    settings.max_eval_samples)

        # 3. Train.
        optimizers = (make_optimizer(model, settings), None) if settings.optimizer == "adamw8bit_sr" else (None, None)
        optim = "adamw_torch" if settings.optimizer == "adamw8bit_sr" else settings.optimizer
        training.fit(settings, this_run, model, tokenizer, train_data, validation, optimizers=optimizers, optim=optim)
    say(f"2a done: model in {stages.folder(project, '2a')}. Next: python {stages.script_of('1b')} (if not done), "
        f"then python {stages.script_of('2b')}")


if __name__ == "__main__":
    run(main)
