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
import sys
import time
from dataclasses import dataclass

import torch

from chateau import models, stages, training
from chateau.cli import say, setting

OPTIMIZERS = ("adamw8bit_sr", "paged_adamw_8bit", "adamw_torch")


@dataclass
class FullWeightSettings(training.SampleLengthSettings):
    """Fields of a full-weight step; 2a and 2d set the curriculum's values."""
    base_model: str = setting(stages.BASE_MODEL, stages.BASE_MODEL_HELP)
    optimizer: str = setting("adamw8bit_sr", "adamw8bit_sr (torchao, bf16 weights + stochastic rounding) | paged_adamw_8bit (bitsandbytes, fp32 weights) | adamw_torch (fp32 reference)")

    def problems(self):
        out = super().problems()
        if self.optimizer not in OPTIMIZERS:
            out.append(f"--optimizer must be {', '.join(OPTIMIZERS[:-1])} or {OPTIMIZERS[-1]} (got {self.optimizer})")
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


# torchao compiles AdamW8bit's per-parameter step (torch.compile, fullgraph) the first time it meets
# each parameter shape: TinyLlama has 7, about 1-3 minutes of silence on a first run.
COMPILE_EXPECTED = "about 1-3 minutes on a first run"


def compile_probe(optimizer):
    """Compile the optimizer's step for every parameter shape and dtype, on scratch tensors (the
    model's weights and the optimizer's state are not touched): a compile that fails, fails here,
    before any weight has moved. torch.compile's cache then serves the real steps."""
    from torchao.optim.adam import single_param_adam
    compiled = torch.compile(single_param_adam, fullgraph=True, dynamic=False)
    seen = set()
    for group in optimizer.param_groups:
        for p in group["params"]:
            if (p.shape, p.dtype, p.device) in seen:
                continue
            seen.add((p.shape, p.dtype, p.device))
            scratch = torch.zeros_like(p)
            compiled(scratch, torch.zeros_like(p), torch.tensor(1.0), optimizer._new_buffer(scratch, True),
                     optimizer._new_buffer(scratch, False), None, group["lr"], group["betas"][0], group["betas"][1],
                     group["weight_decay"], group["eps"], optimizer.is_adamw,
                     optimizer.bf16_stochastic_round and p.dtype is torch.bfloat16)


def prepare_optimizer_step(optimizer, compile=True, probe=compile_probe):
    """The 8-bit optimizer's step, compiled where it can be (announced, timed), else eager: a
    compile that fails (an Inductor or Triton error, a card Triton does not support) is one
    warning line and the eager step, which computes the same updates, never the end of the run.
    Returns what metrics.json records ("compiled in N s", "eager: ...")."""
    if not compile:
        return "eager (CPU: torch.compile is off)"
    say(f"compiling the 8-bit optimizer's step (torch.compile, once per parameter shape: {COMPILE_EXPECTED}, "
        f"nothing is printed meanwhile)")
    began = time.time()
    try:
        probe(optimizer)
    except Exception as error:  # noqa: BLE001 - any compile failure: the eager step instead
        torch.compiler.set_stance("force_eager")  # torch.compile'd functions run as plain Python from now on
        reason = f"{type(error).__name__}: {(str(error).splitlines() or [''])[0][:160]}"
        print(f"warning: the optimizer step could not be compiled ({reason}): it runs eagerly instead (the same "
              f"updates, a slower optimizer step); recorded in metrics.json", file=sys.stderr)
        return f"eager (compile failed: {reason})"
    say(f"optimizer step compiled in {time.time() - began:.0f} s")
    return f"compiled in {time.time() - began:.0f} s"


def train(settings, name):
    """The full-weight recipe for stage `name` (its table row says what it starts from and trains
    on). Returns the metrics, or None when the stage was already trained from the same inputs and
    settings."""
    opening = training.begin(settings, name)
    project, base = opening.project, opening.start
    with training.stage_run(settings, name, opening.inputs) as run:
        if run.already_done:
            return None

        # 1. Model: bf16 weights on GPU for the stochastic-rounding optimizer, fp32 otherwise.
        tokenizer = models.load_tokenizer(base)
        dtype = models.compute_dtype() if settings.optimizer == "adamw8bit_sr" else torch.float32
        model = models.load_model(base, dtype=dtype, attn_implementation=settings.attn_implementation)
        model.config.use_cache = False  # no KV cache while training (checkpointing recomputes)

        # 2. Data: the row's samples, checked against this tokenizer and context, cut to --sample-tokens
        #    (2d: one pass of the novel, each pass measured, the dial's pick published).
        train_data, validation = training.load_data(project, stages.stage(name).data, list(stages.stage(name).eval_also), tokenizer,
                                                    model.config.max_position_embeddings, settings.max_eval_samples)
        train_data, validation, measure, then = training.shaped_data(settings, project, name, train_data, tokenizer, validation)

        # 3. Train.
        optimizers, extra = (None, None), {}
        if settings.optimizer == "adamw8bit_sr":
            optimizers = (make_optimizer(model, settings), None)
            extra["optimizer_step"] = prepare_optimizer_step(optimizers[0], compile=models.use_cuda())
        optim = "adamw_torch" if settings.optimizer == "adamw8bit_sr" else settings.optimizer
        return training.fit(settings, run, model, tokenizer, train_data, validation, optimizers=optimizers, optim=optim,
                            extra_metrics=extra, callbacks=measure, before_finish=then)
