"""The QLoRA recipe of steps 2b and 2c (they differ only in settings: QLoRA is configuration, not
code): 2a's model in 4-bit NF4, a LoRA on every linear projection (new, or continued from an
earlier step's adapter, loaded trainable), trained with the curriculum's Trainer; then, for 2c,
the adapter merged into 2a's full-precision weights."""
import shutil
from dataclasses import dataclass

from chateau import lineage, models, stages, training
from chateau.cli import positive, setting

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass
class QLoRASettings(training.TrainSettings):
    """Fields of a QLoRA step; 2b and 2c set the curriculum's values."""
    lora_r: int = setting(32, "LoRA rank: 32 gives ~25M trainable parameters (2.3% of 1.1B), room for a new domain")
    lora_alpha: int = setting(64, "LoRA scale numerator (updates scaled by alpha/r = 2)")
    lora_dropout: float = setting(0.05, "dropout on LoRA inputs")
    data: str = setting("1b", "prepare step whose data is trained on")
    eval_also: str = setting("1a", "prepare steps (comma-separated) whose validation loss is also reported, to show forgetting")
    adapter_from: str = setting("", "train step whose adapter is continued ('' = a new LoRA)")
    output: str = setting("2b", "train step this run writes")

    def problems(self):
        out = super().problems() + positive(self, "lora_r", "lora_alpha")
        out += [f"unknown prepare step {s!r} (expected {', '.join(stages.PREPARE_STAGES)})"
                for s in [self.data, *self.eval_stages()] if s not in stages.PREPARE_STAGES]
        out += [f"unknown train step {s!r} (expected {', '.join(stages.TRAIN_STAGES)})"
                for s in (self.adapter_from or "2b", self.output) if s not in stages.TRAIN_STAGES]
        return out

    def eval_stages(self):
        return [s for s in self.eval_also.split(",") if s]


def qlora_model(settings, project, base_dir):
    """The 4-bit base with a trainable LoRA: new, or continued from a previous step's adapter."""
    from peft import LoraConfig, PeftModel, get_peft_model, prepare_model_for_kbit_training

    model = models.load_model_4bit(base_dir, attn_implementation=settings.attn_implementation)
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


def train(settings, then=None):
    """The QLoRA recipe: 2b runs it as it is, 2c with its own settings. `then(project)` runs
    after training, under the stage's lock (2c's merge). Returns the metrics, or None when the
    stage was already trained from the same inputs and settings."""
    from peft import get_peft_model_state_dict
    project = training.begin(settings)
    base_dir = training.require_trained(project, "2a")
    if settings.adapter_from:
        training.require_trained(project, settings.adapter_from)
    reads = ["2a", settings.data, *settings.eval_stages(), *([settings.adapter_from] if settings.adapter_from else [])]
    with training.stage_run(settings, settings.output, lineage.train_inputs(project, reads)) as run:
        if run.already_done:
            return None

        # 1. Model: 2a's weights in 4-bit, LoRA on top.
        tokenizer = models.load_tokenizer(base_dir)
        model = qlora_model(settings, project, base_dir)
        adapter_start = models.tensor_digest(get_peft_model_state_dict(model))

        # 2. Data: this step's samples; validation on them and on the earlier steps' data.
        train_data, validation = training.load_data(project, settings.data, settings.eval_stages(), tokenizer,
                                                    model.config.max_position_embeddings, settings.max_eval_samples)

        # 3. Train.
        metrics = training.fit(settings, run, model, tokenizer, train_data, validation,
                               extra_metrics={"adapter_digest_start": adapter_start, "adapter_from": settings.adapter_from})
        if then is not None:
            then(project)
        return metrics


def merge(project, adapter_stage="2c"):
    """2a's weights (bf16 on GPU, fp32 on CPU; never the 4-bit ones) + the adapter -> merged/,
    with the tokenizer: a plain model folder that AutoModelForCausalLM loads."""
    from peft import PeftModel
    base_dir, adapter_dir = stages.folder(project, "2a"), stages.folder(project, adapter_stage)
    model = PeftModel.from_pretrained(models.load_model(base_dir), adapter_dir).merge_and_unload()
    staging, merged = adapter_dir / ".merged.partial", adapter_dir / "merged"
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging)
    models.load_tokenizer(base_dir).save_pretrained(staging)
    shutil.rmtree(merged, ignore_errors=True)
    staging.rename(merged)
    return merged
