"""The QLoRA recipe of steps 2b, 2c, 2e and 2f (they differ only in settings and in their row of the
stage table: QLoRA is configuration, not code): the row's base model in 4-bit NF4, a LoRA on every
linear projection (new, or continued from the row's `adapter_from`, loaded trainable), trained with
the curriculum's Trainer; then, for a "merged model" row (2c, 2f), the adapter merged into the base's
full-precision weights before the stage is marked finished."""
import shutil
from dataclasses import dataclass

from chateau import models, stages, training
from chateau.cli import StageError, positive, setting

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
# The merged model's validation loss may exceed the validated one's (4-bit base + adapter) by at
# most 5%. The adapter was trained against the NF4-rounded base; merged into the unrounded weights
# it no longer sees that rounding. Usually that helps (SmolLM2-135M's merged model scores 5.3%
# *lower* than its 4-bit validation: small models lose much to NF4), and a lower loss is recorded,
# not refused. Worse by more than 5% means the adapter had learned to lean on the rounding: the
# merged model is not the model that was validated.
MERGE_TOLERANCE = 0.05
CPU_MERGE_CHECK_ROWS = 16  # rows of that check when the merge runs on the CPU (models.merge_device)


@dataclass
class QLoRASettings(training.TrainSettings):
    """Fields of a QLoRA step; 2b, 2c, 2e and 2f set the curriculum's values."""
    lora_r: int = setting(32, "LoRA rank: 32 gives ~25M trainable parameters (2.3% of 1.1B), room for a new domain")
    lora_alpha: int = setting(64, "LoRA scale numerator (updates scaled by alpha/r = 2)")
    lora_dropout: float = setting(0.05, "dropout on LoRA inputs, in [0, 1)")
    upcast_norms: bool = setting(True, "norms, embedding and LM head in fp32 (peft's prepare_model_for_kbit_training), "
                                       "so the residual stream and checkpointed activations are fp32; false: in the "
                                       "compute dtype (bf16 on GPU: less memory, other numerics; on CPU the same fp32)")
    merge: bool = setting(True, "merged-model steps (2c, 2f): merge the adapter into the base's full-precision weights, "
                                "into merged/ (false: no merged/, and an older one is removed)")

    def problems(self):
        out = super().problems() + positive(self, "lora_r", "lora_alpha")
        if not 0 <= self.lora_dropout < 1:
            out.append(f"--lora-dropout must be in [0, 1) (got {self.lora_dropout})")
        return out


def qlora_model(settings, project, step, base_dir):
    """The 4-bit base with a trainable LoRA: new, or continued from the row's adapter_from."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    model = models.load_model_4bit(base_dir, attn_implementation=settings.attn_implementation)
    model.config.use_cache = False
    loaded = {name: param.dtype for name, param in model.named_parameters()}
    # Freezes the base, makes the embedding's output require grad, turns on checkpointing, and
    # casts every parameter that is not 4-bit (norms, embedding, LM head) to fp32. bitsandbytes'
    # 4-bit layers return their input's dtype, so from the fp32 embedding on the residual stream,
    # the MLP's activations and every checkpointed layer input are fp32, even under bf16 autocast.
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=settings.gradient_checkpointing,
                                            gradient_checkpointing_kwargs={"use_reentrant": False})
    if not settings.upcast_norms:  # back to the dtype they were loaded in (compute_dtype(): bf16 on GPU)
        for name, param in model.named_parameters():
            if param.dtype != loaded[name]:
                param.data = param.data.to(loaded[name])
    if step.adapter_from:
        adapter_dir = training.require_trained(project, step.adapter_from)
        return models.load_adapter(model, adapter_dir, trainable=True)
    config = LoraConfig(r=settings.lora_r, lora_alpha=settings.lora_alpha, lora_dropout=settings.lora_dropout,
                        target_modules=LORA_TARGETS, bias="none", task_type="CAUSAL_LM")
    return get_peft_model(model, config)


def train(settings, name):
    """The QLoRA recipe for stage `name`. Returns the metrics, or None when the stage was already
    trained from the same inputs and settings."""
    from peft import get_peft_model_state_dict
    step = stages.stage(name)
    opening = training.begin(settings, name)
    project, base_dir = opening.project, opening.start
    with training.stage_run(settings, name, opening.inputs) as run:
        if run.already_done:
            return None

        # 1. Model: the base's weights in 4-bit, LoRA on top.
        tokenizer = models.load_tokenizer(base_dir)
        model = qlora_model(settings, project, step, base_dir)
        adapter_start = models.tensor_digest(get_peft_model_state_dict(model))

        # 2. Data: this step's samples; validation on them and on the earlier steps' data. Cut to
        #    --sample-tokens where the step has it (2f); the novel in passes (2c, 2f): its training
        #    text once per pass, each pass measured, the dial's pick published.
        train_data, validation = training.load_data(project, step.data, list(step.eval_also), tokenizer,
                                                    model.config.max_position_embeddings, settings.max_eval_samples)
        train_data, validation, measure, publish = training.shaped_data(settings, project, name, train_data, tokenizer,
                                                                        validation)

        # 3. Train; a merged-model row is finished only once its merge (of the published pass) is written.
        def then(trainer, metrics):
            out = publish(trainer, metrics) if publish else {}
            if step.produces == stages.MERGED:
                out.update(merge(project, name, settings.merge, trainer, metrics))
            return out
        return training.fit(settings, run, model, tokenizer, train_data, validation, before_finish=then, callbacks=measure,
                            extra_metrics={"adapter_digest_start": adapter_start, "adapter_from": step.adapter_from})


def merge(project, name, wanted=True, trainer=None, metrics=None):
    """The base's weights (bf16 on GPU, fp32 on CPU; never the 4-bit ones) + stage `name`'s adapter
    -> its merged/, with the tokenizer: a plain model folder that AutoModelForCausalLM loads. Written
    into a staging folder and renamed when complete (a killed merge is redone by the rerun).
    `wanted` False: no merged model, and an older merged/ is removed (it is not this adapter's).
    With the `trainer` and its `metrics`: the merged model's validation loss on the stage's own
    validation set is measured beside the 4-bit + adapter's, and a gap beyond MERGE_TOLERANCE
    fails the merge (nothing published, the stage not finished)."""
    step = stages.stage(name)
    adapter_dir, merged = step.folder(project), stages.model_dir(project, name)
    staging = adapter_dir / ".merged.partial"
    shutil.rmtree(staging, ignore_errors=True)
    if not wanted:
        shutil.rmtree(merged, ignore_errors=True)
        return {"merged": False}
    base_dir = stages.model_dir(project, step.base)
    device = models.merge_device(base_dir)
    model = models.load_adapter(models.load_model(base_dir, device=device), adapter_dir).merge_and_unload()
    measured = {}
    if trainer is not None:
        primary = next(iter(trainer.eval_dataset))
        rows = trainer.eval_dataset[primary]
        validated = metrics["validation_loss_end"][f"eval_{primary}_loss"]
        if device == "cpu" and models.use_cuda():
            # Merged on the CPU (it did not fit the card): both models on the same few rows, not
            # hundreds of 7B forward passes on the CPU.
            rows = rows.select(range(min(CPU_MERGE_CHECK_ROWS, len(rows))))
            validated = training.validation_loss(trainer.model, rows)
        loss = training.validation_loss(model, rows)
        gap = (loss - validated) / validated  # > 0: the merged model is worse than the validated one
        measured = {"merged_validation_loss": round(loss, 5), "adapter_validation_loss": round(validated, 5),
                    "merge_gap": round(gap, 5), "merge_tolerance": MERGE_TOLERANCE, "merged_on": device,
                    "merge_check_rows": len(rows)}
        if not gap <= MERGE_TOLERANCE:
            raise StageError(f"{name}: the merged model's validation loss {loss:.4f} is worse than the validated 4-bit + "
                             f"adapter's {validated:.4f} by {100 * gap:.1f}% (> {100 * MERGE_TOLERANCE:.0f}%): the merge is "
                             f"not published and {name} is not finished; retrain it with a lower --lr (--overwrite)")
    model.save_pretrained(staging)
    models.load_tokenizer(base_dir).save_pretrained(staging)
    shutil.rmtree(merged, ignore_errors=True)
    staging.rename(merged)
    return {"merged": True, **measured}
