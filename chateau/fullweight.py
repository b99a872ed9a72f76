"""The full-weight recipe of steps 2a and 2d (they differ only in settings and in their row of the
stage table: which model they start from, which data they train on): every weight trained, bf16
weights with torchao's 8-bit AdamW and stochastic rounding on GPU (fp32 on CPU).

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

import numpy as np
import torch

from chateau import lineage, models, stages, training
from chateau.cli import setting

OPTIMIZERS = ("adamw8bit_sr", "paged_adamw_8bit", "adamw_torch")


@dataclass
class FullWeightSettings(training.TrainSettings):
    """Fields of a full-weight step; 2a and 2d set the curriculum's values."""
    base_model: str = setting(stages.BASE_MODEL, stages.BASE_MODEL_HELP)
    optimizer: str = setting("adamw8bit_sr", "adamw8bit_sr (torchao, bf16 weights + stochastic rounding) | paged_adamw_8bit (bitsandbytes, fp32 weights) | adamw_torch (fp32 reference)")
    sample_tokens: int = setting(0, "cut every prepared sample into pieces of this many tokens (0 = as prepared)")

    def problems(self):
        out = super().problems()
        if self.optimizer not in OPTIMIZERS:
            out.append(f"--optimizer must be {', '.join(OPTIMIZERS[:-1])} or {OPTIMIZERS[-1]} (got {self.optimizer})")
        if self.sample_tokens < 0 or self.sample_tokens == 1:
            out.append(f"--sample-tokens must be 0 (as prepared) or >= 2 (got {self.sample_tokens})")
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


def cut_samples(dataset, tokens):
    """Every sample cut into consecutive pieces of `tokens` ids (a tail shorter than that is
    dropped): 2d reads the novel's 2048-token windows as 512-token samples, which a full-weight
    step fits on a 12 GB card."""
    from datasets import Dataset
    from chateau import prepared
    ids = np.asarray(dataset[prepared.INPUT_IDS], dtype=np.int32)
    pieces = ids.shape[1] // tokens
    if pieces == 0:
        return dataset
    cut = ids[:, :pieces * tokens].reshape(-1, tokens)
    return Dataset(prepared.windows_table(cut))


def train(settings, name):
    """The full-weight recipe for stage `name` (its table row says what it starts from and trains
    on). Returns the metrics, or None when the stage was already trained from the same inputs and
    settings."""
    step = stages.stage(name)
    project = training.begin(settings)
    if step.base == "base":
        base = stages.base_model_dir(project, settings.base_model)
        models.require(base / "config.json", "the base model", models.DOWNLOAD_HINT)
    else:
        training.require_trained(project, step.base)
        base = stages.model_dir(project, step.base)
    reads = [s for s in step.inputs if s != "base"]
    inputs = lineage.train_inputs(project, reads, base if step.base == "base" else None)
    with training.stage_run(settings, name, inputs) as run:
        if run.already_done:
            return None

        # 1. Model: bf16 weights on GPU for the stochastic-rounding optimizer, fp32 otherwise.
        tokenizer = models.load_tokenizer(base)
        dtype = models.compute_dtype() if settings.optimizer == "adamw8bit_sr" else torch.float32
        model = models.load_model(base, dtype=dtype, attn_implementation=settings.attn_implementation)
        model.config.use_cache = False  # no KV cache while training (checkpointing recomputes)

        # 2. Data: the row's samples (cut to --sample-tokens), checked against this tokenizer and context.
        train_data, validation = training.load_data(project, step.data, list(step.eval_also), tokenizer,
                                                    model.config.max_position_embeddings, settings.max_eval_samples)
        if settings.sample_tokens:
            train_data = cut_samples(train_data, settings.sample_tokens)
            validation = {k: cut_samples(v, settings.sample_tokens) for k, v in validation.items()}

        # 3. Train.
        optimizers = (make_optimizer(model, settings), None) if settings.optimizer == "adamw8bit_sr" else (None, None)
        optim = "adamw_torch" if settings.optimizer == "adamw8bit_sr" else settings.optimizer
        return training.fit(settings, run, model, tokenizer, train_data, validation, optimizers=optimizers, optim=optim)
