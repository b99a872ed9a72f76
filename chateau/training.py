"""What the three train steps share: the HF Trainer, set up once, with the curriculum's callbacks
(validation before training, generated samples, tokens/s, clean stop on SIGTERM/SIGINT, resume
from the last complete checkpoint, metrics.json). The steps themselves say which model, which data
and which optimizer; this module is how any of them is trained."""
import contextlib
import dataclasses
import hashlib
import importlib.util
import json
import math
import os
import pickle
import resource
import shutil
import signal
import sys
import time
from pathlib import Path

import numpy as np
import torch
from transformers import Trainer, TrainerCallback, TrainingArguments

from chateau import dial as dial_settings, generation, lineage, models, prepared, stages
from chateau.cli import (Interrupted, StageError, group, is_disk_full, size, is_main_process, positive, rank, save_settings, say,
                         setting, write_atomic)


@dataclasses.dataclass
class TrainSettings:
    """Fields every train step has. Each step's own dataclass sets the curriculum's defaults."""
    project_dir: str = setting("", "project folder (default: $KAFKA_PROJECT_DIR or /project)", identity=False)
    # Which chain, not what the stage is: the base's files are among its inputs (their digest), and
    # its folder decides the workspace the stage lives in (stages.workspace). The full-weight
    # recipe's own field keeps it in 2a's and 2d's identity, as it always was.
    base_model: str = setting(stages.BASE_MODEL, stages.BASE_MODEL_HELP, identity=False)
    device: str = setting("", models.DEVICE_HELP, identity=False)
    max_steps: int = setting(-1, "optimizer steps; -1 = --epochs passes over the training data")
    epochs: int = setting(1, "passes over the training data (when --max-steps is -1)")
    # What the curriculum fixes is the tokens per optimizer step; how they are reached (samples
    # per GPU, number of GPUs, accumulation) is execution: accumulation = tokens per step /
    # (batch size x sample length x processes), derived, so several GPUs train the same curriculum.
    tokens_per_step: int = setting(512, "tokens per optimizer step, over all processes (accumulation is derived from it)")
    batch_size: int = setting(1, "samples per GPU per micro-step", identity=False)
    lr: float = setting(1e-4, "peak learning rate")
    warmup_steps: int = setting(0, "linear warm-up steps, then cosine decay to 10% of --lr")
    warmup_ratio: float = setting(0.0, "linear warm-up as a share of all steps (replaces --warmup-steps when > 0)")
    weight_decay: float = setting(0.0, "decoupled weight decay")
    max_grad_norm: float = setting(1.0, "gradient clipping")
    gradient_checkpointing: bool = setting(True, "recompute activations in backward: less memory, ~30% more compute", identity=False)
    attn_implementation: str = setting("sdpa", "attention kernel: sdpa (PyTorch's fused, flash on GPU) | eager | flash_attention_2 (if installed)", identity=False)
    torch_compile: bool = setting(False, "torch.compile the model (GPU; measure with bench/train_bench.py)", identity=False)
    liger_kernel: bool = setting(False, "Liger's fused kernels: linear+cross-entropy, RMSNorm, RoPE, SwiGLU (pip install liger-kernel)", identity=False)
    eval_steps: int = setting(250, "validate every N steps (and before and after training)", identity=False)
    max_eval_samples: int = setting(512, "validation samples per evaluation, per validation set")
    save_steps: int = setting(250, "checkpoint every N steps", identity=False)
    save_total_limit: int = setting(2, "checkpoints kept", identity=False)
    logging_steps: int = setting(10, "log loss, lr, grad norm and tokens/s every N steps", identity=False)
    sample_steps: int = setting(500, "generate a sample every N steps (0 = never)", identity=False)
    sample: generation.Sampling = group(generation.Sampling, "sample", "how the samples are drawn (seeded by step)", identity=False)
    resume: str = setting("auto", "auto (latest complete checkpoint) | never | PATH of a checkpoint", identity=False)
    record_batches: bool = setting(False, "write a digest of every batch each rank trains on (checks data order and sharding)", identity=False)
    overwrite: bool = setting(False, "train a finished stage again (from other inputs or settings); the finished model stays until the new run starts", identity=False)
    seed: int = setting(0, "seed of initialization, data order and sampling")

    def problems(self):
        """Everything the Trainer, the optimizer or the sampler would reject later, checked before
        any file is touched."""
        out = positive(self, "batch_size", "tokens_per_step", "lr", "eval_steps", "save_steps", "logging_steps",
                       "max_eval_samples", "save_total_limit", "max_grad_norm")
        out += positive(self, "max_steps", allow=(-1,)) + positive(self, "epochs") + self.sample.problems(prefix="sample-")
        if not 0 <= self.warmup_ratio < 1:
            out.append(f"--warmup-ratio must be in [0, 1) (got {self.warmup_ratio})")
        out += models.device_problems(self.device)
        out += [f"--{name.replace('_', '-')} must be >= 0 (got {getattr(self, name)})"
                for name in ("warmup_steps", "weight_decay", "seed", "sample_steps") if getattr(self, name) < 0]
        if not math.isfinite(self.lr) or self.lr > 1:
            out.append(f"--lr {self.lr} cannot train: learning rates are ~1e-5 to 1e-2")
        if self.attn_implementation not in ATTENTION:
            out.append(f"--attn-implementation must be one of {', '.join(ATTENTION)} (got {self.attn_implementation})")
        if self.resume not in ("auto", "never") and not is_complete_checkpoint(self.resume):
            out.append(f"--resume must be auto, never or a complete checkpoint folder (got {self.resume})")
        if self.resume not in ("auto", "never") and self.overwrite:
            out.append(f"--resume {self.resume} and --overwrite contradict each other: --overwrite starts over "
                       f"(and deletes the checkpoints); drop one of them")
        if self.seed >= 2**32:
            out.append(f"--seed must be < 2**32 (got {self.seed})")
        if self.liger_kernel and importlib.util.find_spec("liger_kernel") is None:
            out.append("--liger-kernel needs the liger-kernel package: pip install liger-kernel (or drop the flag)")
        if self.attn_implementation == "flash_attention_2" and importlib.util.find_spec("flash_attn") is None:
            out.append("--attn-implementation flash_attention_2 needs the flash-attn package: pip install flash-attn "
                       "(or use sdpa, PyTorch's own fused attention)")
        return out


@dataclasses.dataclass
class ImprintSettings(TrainSettings):
    """The fields of a stage trained on the novel in passes (2c, 2d; chateau/dial.py): a recipe's
    settings class and this one make the stage's (`class Settings(ImprintSettings, QLoRASettings)`)."""
    epochs: int = setting(10, "passes over the novel's training text: every training token seen once per pass (1c's "
                              "windows overlap; the recipe rebuilds the text from them, so a pass is the book's training "
                              "tokens once, not a pass over the windows)")
    warmup_ratio: float = setting(0.2, "linear warm-up over the first 20% of the steps")
    eval_steps: int = setting(50, "validate every N steps (the dial also measures every pass)", identity=False)
    save_steps: int = setting(50, "checkpoint every N steps", identity=False)
    sample_steps: int = setting(100, "generate a sample every N steps (0 = never)", identity=False)
    dial: dial_settings.DialSettings = group(dial_settings.DialSettings, "dial",
                                             "how each pass is measured, and the rule that picks one", identity=False)

    def problems(self):
        return super().problems() + self.dial.problems()


@dataclasses.dataclass
class SampleLengthSettings(TrainSettings):
    """A stage that trains on shorter samples than its data was prepared in (2d, 2f: the novel's
    2048-token windows as 512-token samples, as its first public attempt trained it)."""
    sample_tokens: int = setting(0, "cut every prepared sample into pieces of this many tokens (0 = as prepared)")

    def problems(self):
        out = super().problems()
        if self.sample_tokens < 0 or self.sample_tokens == 1:
            out.append(f"--sample-tokens must be 0 (as prepared) or >= 2 (got {self.sample_tokens})")
        return out


def sample_length(settings):
    """The stage's --sample-tokens, or 0 (its samples as prepared) for a stage without the setting."""
    return settings.sample_tokens if isinstance(settings, SampleLengthSettings) else 0


def cut_samples(dataset, tokens):
    """Every sample cut into consecutive pieces of `tokens` ids (a tail shorter than that is
    dropped): 2d reads the novel's 2048-token windows as 512-token samples, which a full-weight
    step fits on a 12 GB card."""
    from datasets import Dataset
    ids = np.asarray(dataset[prepared.INPUT_IDS], dtype=np.int32)
    pieces = ids.shape[1] // tokens
    if pieces == 0:
        return dataset
    cut = ids[:, :pieces * tokens].reshape(-1, tokens)
    return Dataset(prepared.windows_table(cut))


def shaped_data(settings, project, name, train_data, tokenizer, validation):
    """The data stage `name` trains on, shaped as its settings say: every sample cut to
    --sample-tokens; for a stage trained in passes of the novel (chateau/dial.py), one pass of its
    training text, the callback that measures each pass, and what publishes the chosen pass.
    Returns (train data, validation sets, callbacks, before_finish or None)."""
    tokens = sample_length(settings)
    if tokens:
        validation = {key: cut_samples(rows, tokens) for key, rows in validation.items()}
    train_data, measure, publish = dial_settings.prepare_run(settings, project, name, train_data, tokenizer, validation, tokens)
    if tokens and not measure:
        train_data = cut_samples(train_data, tokens)
    return train_data, validation, measure, publish


def accumulation(settings, seq_len, world):
    """Micro-steps per optimizer step: --tokens-per-step / (--batch-size x sample length x
    processes). A combination that does not divide is refused, naming what would."""
    per_micro_step = settings.batch_size * seq_len * world
    if settings.tokens_per_step % per_micro_step:
        fits = [b for b in range(1, settings.batch_size + 1) if settings.tokens_per_step % (b * seq_len * world) == 0]
        raise StageError(f"--tokens-per-step {settings.tokens_per_step} is not a multiple of --batch-size "
                         f"{settings.batch_size} x {seq_len}-token samples x {world} process(es) = {per_micro_step}: "
                         f"use --batch-size {max(fits) if fits else 1}" + ("" if fits else " and a --tokens-per-step that "
                         f"is a multiple of {seq_len * world}"))
    return settings.tokens_per_step // per_micro_step


ATTENTION = ("sdpa", "eager", "flash_attention_2")


def collate(rows):
    """Fixed-length samples: no padding, labels are the inputs (the model shifts them)."""
    ids = torch.tensor([row["input_ids"] for row in rows], dtype=torch.long)
    return {"input_ids": ids, "labels": ids}


def is_complete_checkpoint(path):
    """Trainer writes trainer_state.json last: a checkpoint without a readable one (killed while
    saving) is never taken for a complete one."""
    try:
        state = json.loads((Path(path) / "trainer_state.json").read_text())
    except (OSError, ValueError):
        return False
    return state.get("global_step") == int(Path(path).name.rsplit("-", 1)[-1])


def refused_pickle(checkpoint):
    """The file of `checkpoint` that torch's weights-only loader refuses (optimizer.pt,
    scheduler.pt, rng_state.pth...), looked for only once a resume has failed on one."""
    from transformers.trainer_pt_utils import safe_globals  # the numpy types the Trainer allows for rng_state.pth
    for path in sorted(Path(checkpoint).glob("*.pt*")):
        try:
            with safe_globals():
                torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:
            return path
        except Exception:  # noqa: BLE001 - another kind of damage: not the file looked for
            continue
    return checkpoint


def out_of_memory_error(settings, output_dir, seq_len, during):
    """The one line for CUDA out of memory: the batch size that halves it, and where the rerun resumes."""
    last = latest_checkpoint(output_dir)
    return StageError(
        f"CUDA out of memory at --batch-size {settings.batch_size} with {seq_len}-token samples ({during}): rerun "
        f"the same command with --batch-size {max(1, settings.batch_size // 2)} (the tokens per step stay "
        f"{settings.tokens_per_step}: accumulation doubles); it resumes from {last or 'the start (no checkpoint yet)'}")


def disk_full_error(stage, output_dir, model, what="checkpoint"):
    """The one line for a disk that filled up while a checkpoint was written: where, how much a
    checkpoint needs, how much is free; the incomplete checkpoint is removed (it would hold the
    space the user needs) and the rerun resumes from the last complete one."""
    for partial in Path(output_dir).glob("checkpoint-*"):
        if not is_complete_checkpoint(partial):
            shutil.rmtree(partial, ignore_errors=True)
    if what != "checkpoint":  # the unfinished stage's own model files, cut short (no metrics.json: not finished)
        for partial in [*Path(output_dir).glob("*.safetensors"), Path(output_dir) / ".merged.partial"]:
            shutil.rmtree(partial, ignore_errors=True) if partial.is_dir() else partial.unlink(missing_ok=True)
    complete = latest_checkpoint(output_dir)
    if complete:
        needed = sum(f.stat().st_size for f in Path(complete).rglob("*") if f.is_file())
    else:  # the trained weights, and the optimizer's two moments (at most twice as many bytes again)
        needed = 3 * sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    free = shutil.disk_usage(output_dir).free
    return StageError(f"disk full: {stage} could not write its {what} in {output_dir} (a checkpoint needs "
                      f"~{size(needed)}, {size(free)} free there; the incomplete one was removed): "
                      f"free some disk space (or keep fewer checkpoints: --save-total-limit 1), then rerun the same "
                      f"command: it resumes from {complete or 'the start (no complete checkpoint yet)'}")


def checkpoint_step(path):
    return int(Path(path).name.rsplit("-", 1)[-1])


def latest_checkpoint(output_dir):
    checkpoints = sorted(Path(output_dir).glob("checkpoint-*"), key=checkpoint_step)
    complete = [c for c in checkpoints if is_complete_checkpoint(c)]
    return str(complete[-1]) if complete else None


def require_trained(project, stage):
    """A previous train step's output, complete (metrics.json is written last)."""
    out = stages.folder(project, stage)
    if not lineage.is_finished(project, stage):
        raise StageError(f"step {stage}'s output is missing or incomplete at {out}: {stages.stage(stage).hint()}")
    lineage.check_current(project, stage)
    return out


def validation_sets(project, data_stages, tokenizer, max_positions, max_samples):
    """{"1c_kafka": Dataset, ...}: each prepared stage's validation split, first `max_samples` rows."""
    out = {}
    for stage in data_stages:
        data, _ = prepared.load_prepared(project, stage, tokenizer, max_positions)
        validation = data["validation"]
        if len(validation) == 0:
            raise StageError(f"{stages.folder(project, stage)} has no validation samples: prepare it again with a "
                             f"validation share (`python {stages.script_of(stage)} --overwrite`, default settings)")
        out[stages.stage(stage).run_name] = validation.select(range(min(max_samples, len(validation))))
    return out


def load_data(project, data_stage, eval_stages, tokenizer, max_positions, max_eval_samples):
    """(training split of `data_stage`, {name: validation split}): the stage's own validation set
    first, then those of `eval_stages` (forgetting). Checked against the tokenizer and context."""
    data, _ = prepared.load_prepared(project, data_stage, tokenizer, max_positions)
    return data["train"], validation_sets(project, [data_stage, *eval_stages], tokenizer, max_positions, max_eval_samples)


class StopOnSignal(TrainerCallback):
    """SIGTERM (docker stop) or SIGINT (Ctrl-C): finish the current step, save a checkpoint, stop.
    A second signal stops at once. `with StopOnSignal() as stopper:` installs the handlers for the
    training only, and puts back whatever handlers were there before."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.received, self.previous = None, {}

    def __enter__(self):
        self.previous = {sig: signal.signal(sig, self._handle) for sig in self.SIGNALS}
        return self

    def __exit__(self, *exc):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        return False

    def _handle(self, signum, frame):
        if self.received is not None:
            raise KeyboardInterrupt
        self.received = signal.Signals(signum).name
        print(f"\n{self.received} received: saving a checkpoint after this step, then stopping", file=sys.stderr)

    def on_step_end(self, args, state, control, **kwargs):
        if self.received:
            control.should_save = True
            control.should_training_stop = True


class GenerateSamples(TrainerCallback):
    """Every `sample_steps`, generate from the prompt; log to TensorBoard and samples.jsonl."""

    def __init__(self, settings, tokenizer, output_dir, writer, find_prompt):
        self.settings, self.tokenizer, self.path, self.writer = settings, tokenizer, Path(output_dir) / "samples.jsonl", writer
        self.find_prompt, self.prompt = find_prompt, None

    def generate(self, model, step):
        sampling = self.settings.sample
        self.prompt = self.prompt or self.find_prompt()  # looked up once, when the first sample is due
        model.eval()
        # Sampling draws from its own generator state: the training's RNG (data order, dropout)
        # stays as it was, so a run with samples trains exactly like one without.
        with torch.random.fork_rng(devices=[model.device] if model.device.type == "cuda" else []):
            torch.manual_seed(sampling.seed + step)
            new = generation.generate_ids(model, self.tokenizer, generation.prompt_ids(self.tokenizer, self.prompt),
                                          sampling, sampling.new_tokens)
        model.train()
        text = self.prompt + " " + self.tokenizer.decode(new, skip_special_tokens=True).lstrip()
        with self.path.open("a") as f:
            f.write(json.dumps({"step": step, "prompt": self.prompt, "text": text}, ensure_ascii=False) + "\n")
        if self.writer is not None:
            self.writer.add_text("sample", text, step)
            self.writer.flush()

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if self.settings.sample_steps and state.global_step % self.settings.sample_steps == 0 and state.is_world_process_zero:
            self.generate(model, state.global_step)


class StepClock(TrainerCallback):
    """The time at the end of every optimizer step (perf_counter seconds): the one clock the
    benchmark reads for this step and for its plain-Trainer baseline (tokens_per_second)."""

    def __init__(self):
        self.times = []

    def on_step_end(self, args, state, control, **kwargs):
        if models.use_cuda():
            torch.cuda.synchronize()  # the step's kernels are done, not just queued
        self.times.append(time.perf_counter())


def tokens_per_second(step_times, tokens_per_step, warmup=2):
    """Throughput between optimizer-step ends, after `warmup` steps (compilation, allocator)."""
    times = step_times[warmup:]
    return (len(times) - 1) * tokens_per_step / (times[-1] - times[0]) if len(times) > 1 else None


class StopOnNonFinite(TrainerCallback):
    """A training loss that is NaN or infinite stops the run: nothing after it can be right."""

    def __init__(self):
        self.bad, self.last_good_step = None, 0

    def on_log(self, args, state, control, logs=None, **kwargs):
        loss = (logs or {}).get("loss")
        if loss is None:
            return
        if math.isfinite(loss):
            self.last_good_step = state.global_step
        elif self.bad is None:
            self.bad = (state.global_step, loss)
            control.should_training_stop = True
            control.should_save = False


class RecordStart(TrainerCallback):
    """Keeps the validation losses of the evaluation before the first step (eval_on_start)."""

    def __init__(self, path):
        self.path, self.losses, self.step = Path(path), {}, None

    def on_train_begin(self, args, state, control, **kwargs):
        self.step = None if self.path.exists() else state.global_step  # a resumed run keeps the first numbers

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if state.global_step == self.step and state.is_world_process_zero:
            self.losses.update({k: v for k, v in metrics.items() if k.endswith("_loss")})
            self.path.write_text(json.dumps(self.losses, indent=2) + "\n")


class CurriculumTrainer(Trainer):
    """The HF Trainer plus tokens/s in the logs and, on request, a digest of every batch."""

    def __init__(self, *args, tokens_per_step, record_batches_to=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.tokens_per_step, self.record_batches_to = tokens_per_step, record_batches_to
        self._last_log = (time.time(), 0)

    def log(self, logs, start_time=None):
        now, step = time.time(), self.state.global_step
        if "loss" in logs and step > self._last_log[1]:
            logs["tokens_per_second"] = round((step - self._last_log[1]) * self.tokens_per_step / (now - self._last_log[0]), 1)
            self._last_log = (now, step)
        super().log(logs, start_time)

    def training_step(self, model, inputs, *args, **kwargs):
        if self.record_batches_to:
            digest = hashlib.sha256(inputs["input_ids"].cpu().numpy().tobytes()).hexdigest()[:16]
            with open(self.record_batches_to, "a") as f:
                f.write(f"{self.state.global_step} {digest}\n")
        return super().training_step(model, inputs, *args, **kwargs)


def validation_loss(model, dataset, batch_size=4):
    """Mean token loss of `model` over a validation split (fixed-length rows: the Trainer's
    eval_loss): the merge's check, and the scoreboard's perplexities."""
    losses = []
    model.eval()
    with torch.no_grad():
        for i in range(0, len(dataset), batch_size):
            batch = collate(dataset.select(range(i, min(i + batch_size, len(dataset)))))
            batch = {k: v.to(model.device) for k, v in batch.items()}
            losses.append(model(**batch).loss.float().item() * len(batch["input_ids"]))
    return sum(losses) / len(dataset)


def peak_memory_gib():
    """This process's peak memory as the card holds it: PyTorch's peak reserved pool plus what the
    device holds outside that pool, measured now (the CUDA context, ~0.5 GiB, and library
    workspaces; on a card shared with another process, theirs too). CPU: the peak RSS."""
    if models.use_cuda():
        free, total = torch.cuda.mem_get_info()
        outside = max(0, total - free - torch.cuda.memory_reserved())
        return round((torch.cuda.max_memory_reserved() + outside) / 2**30, 2)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)  # CPU: peak RSS (KiB -> GiB)


@dataclasses.dataclass
class Run:
    """What a train step's run will do, decided before anything is loaded or changed."""
    stage: str
    output_dir: Path
    identity: dict
    resume: str | None = None      # the checkpoint to resume from
    already_done: bool = False     # finished from the same inputs and settings: nothing to do


def plan_run(settings, stage, inputs):
    """Decide, changing nothing: already trained (same identity: say so, exit 0), train again
    (--overwrite), resume from a checkpoint of the same run, or start. A finished stage trained
    from other inputs or settings, or checkpoints of another run, need --overwrite."""
    project = stages.workspace_of(settings)
    output_dir = stages.folder(project, stage)
    identity = lineage.identity(settings, inputs)
    run_file = output_dir / "run.json"
    previous = json.loads(run_file.read_text()) if run_file.exists() else None
    finished = lineage.is_finished(project, stage)
    if lineage.already_done(previous if finished else None, identity, settings.overwrite, f"the finished model in {output_dir}"):
        return Run(stage, output_dir, identity, already_done=True)
    if finished or settings.overwrite:
        return Run(stage, output_dir, identity)  # train again from the start
    resume = {"never": None, "auto": latest_checkpoint(output_dir)}.get(settings.resume, settings.resume)
    if resume and previous is not None and previous != identity:
        raise StageError(f"the checkpoints in {output_dir} come from a run with other inputs or settings: pass "
                         f"--resume never (or --overwrite) to start over")
    return Run(stage, output_dir, identity, resume=resume)


def training_arguments(settings, output_dir, evaluate_first, grad_accum, optim="adamw_torch"):
    """The Trainer's arguments from a step's settings: cosine to 10% of the peak after warm-up,
    bf16 and fused kernels on GPU, checkpoints every --save-steps. TensorBoard is the callback
    fit() adds with its own writer (report_to none: no logging folder through the environment)."""
    cuda = models.use_cuda()
    return models.one_gpu_per_process(TrainingArguments(
        output_dir=str(output_dir), max_steps=settings.max_steps, num_train_epochs=settings.epochs,
        per_device_train_batch_size=settings.batch_size, per_device_eval_batch_size=settings.batch_size,
        gradient_accumulation_steps=grad_accum, learning_rate=settings.lr,
        lr_scheduler_type="cosine_with_min_lr", lr_scheduler_kwargs={"min_lr_rate": 0.1},
        warmup_steps=settings.warmup_ratio or settings.warmup_steps, weight_decay=settings.weight_decay, max_grad_norm=settings.max_grad_norm,
        optim=optim, bf16=cuda, use_cpu=not cuda,
        gradient_checkpointing=settings.gradient_checkpointing, gradient_checkpointing_kwargs={"use_reentrant": False},
        eval_strategy="steps", eval_steps=settings.eval_steps, logging_steps=settings.logging_steps,
        save_strategy="steps", save_steps=settings.save_steps, save_total_limit=settings.save_total_limit,
        report_to="none", seed=settings.seed, data_seed=settings.seed, eval_on_start=evaluate_first,
        ddp_find_unused_parameters=False, dataloader_num_workers=0,
        torch_compile=settings.torch_compile and cuda, use_liger_kernel=settings.liger_kernel,
        disable_tqdm=False,  # the progress bar in a terminal (the verbosity that hides warnings would turn it off)
    ))


def forget_earlier_runs(run, log_dir, start_file):
    """Called once the new run is known to start. Until it writes metrics.json again the stage is
    not finished (the next step refuses it); a fresh start also drops the checkpoints, logs and
    samples of earlier runs, which would mix in. run.json records what this run is made from."""
    if not is_main_process():
        return
    (run.output_dir / "metrics.json").unlink(missing_ok=True)
    if not run.resume:
        shutil.rmtree(log_dir, ignore_errors=True)
        for checkpoint in run.output_dir.glob("checkpoint-*"):
            shutil.rmtree(checkpoint, ignore_errors=True)
        shutil.rmtree(run.output_dir / "passes", ignore_errors=True)  # the dial's kept passes (chateau/dial.py)
        for stale in [start_file, run.output_dir / "samples.jsonl", run.output_dir / "passes.json",
                      *run.output_dir.glob("batches-rank*.txt")]:
            stale.unlink(missing_ok=True)
    (run.output_dir / "run.json").write_text(json.dumps(run.identity, indent=2, ensure_ascii=False) + "\n")


def fit(settings, run, model, tokenizer, train_dataset, eval_datasets, optimizers=(None, None), optim="adamw_torch",
        extra_metrics=None, before_finish=None, callbacks=()):
    """Train `model` with the Trainer and write the stage's output, metrics.json last.

    eval_datasets: {name: Dataset}; the first is the stage's own validation set, the others show
    forgetting (e.g. French after Kafka). `before_finish(trainer, metrics)` runs once the model is saved and
    before metrics.json (a merged stage's merge: the stage is finished only with it); what it
    returns joins the metrics. Returns the metrics dict. Raises Interrupted after saving a
    checkpoint when stopped by a signal.
    """
    from transformers.integrations import TensorBoardCallback
    project, stage, output_dir = stages.workspace_of(settings), run.stage, run.output_dir
    log_dir = project / "runs" / stages.stage(stage).run_name
    seq_len = len(train_dataset[0]["input_ids"])
    world = int(os.environ.get("WORLD_SIZE", 1))
    grad_accum = accumulation(settings, seq_len, world)
    tokens_per_step = settings.tokens_per_step
    if settings.batch_size * world > len(train_dataset):
        raise StageError(f"--batch-size {settings.batch_size} x {world} process(es) is more samples than the "
                         f"{len(train_dataset)} training samples of {stages.stage(stage).data}: lower --batch-size")
    resume = run.resume
    if sum(p.numel() for p in model.parameters() if p.requires_grad) == 0:
        raise StageError("the model has no trainable parameters: nothing would be learned")
    output_dir.mkdir(parents=True, exist_ok=True)
    # Validation before training runs inside train() (eval_on_start), once the model is wrapped for
    # DDP: a trainer.evaluate() first would mark it prepared and DDP would never wrap it. A resumed
    # run keeps the first run's numbers.
    start_file = output_dir / "eval_start.json"
    evaluate_first = not (resume and start_file.exists())  # decided alike on every rank
    args = training_arguments(settings, output_dir, evaluate_first, grad_accum, optim)
    # Samples continue a passage of the novel's held-out slice (or of this stage's held-out data
    # until the novel is prepared), unless --sample-prompt says otherwise.
    own_data = stages.stage(stage).data
    find_prompt = lambda: settings.sample.prompt or generation.held_out_prompts(project, tokenizer, 1, fallback=own_data)[0]
    finite = StopOnNonFinite()
    sampler = GenerateSamples(settings, tokenizer, output_dir, None, find_prompt)
    clock = StepClock()
    writer = None
    with StopOnSignal() as stopper:
        trainer = CurriculumTrainer(
            model=model, args=args, train_dataset=train_dataset, eval_dataset=eval_datasets,
            data_collator=collate, processing_class=tokenizer, optimizers=optimizers,
            callbacks=[stopper, sampler, finite, clock, RecordStart(start_file), *callbacks],
            tokens_per_step=tokens_per_step,
            record_batches_to=output_dir / f"batches-rank{rank()}.txt" if settings.record_batches else None,
        )
        forget_earlier_runs(run, log_dir, start_file)  # everything is checked: the run starts
        if is_main_process():  # TensorBoard: one writer for the Trainer's scalars and the samples
            from torch.utils.tensorboard import SummaryWriter
            writer = sampler.writer = SummaryWriter(str(log_dir))
            trainer.add_callback(TensorBoardCallback(tb_writer=writer))
        began = time.time()
        try:
            if resume and 0 < settings.max_steps <= checkpoint_step(resume):
                # Killed after its last checkpoint but before it finished: the checkpoint is the
                # trained model. (Trainer.train would still take a step past --max-steps.)
                from transformers import TrainerState
                trainer._load_from_checkpoint(resume)
                trainer.state = TrainerState.load_from_json(str(Path(resume) / "trainer_state.json"))
            else:
                trainer.train(resume_from_checkpoint=resume)
        except torch.OutOfMemoryError:
            raise out_of_memory_error(settings, output_dir, seq_len, "training") from None
        except pickle.UnpicklingError as error:
            raise StageError(f"{refused_pickle(resume)} holds a pickle that torch's weights-only loader refuses "
                             f"({str(error).splitlines()[0][:120]}): nothing else than plain tensors is ever loaded; "
                             f"delete {resume} (the rerun resumes from the checkpoint before it) or pass --resume never") from None
        except Exception as error:  # noqa: BLE001 - re-raised unless it is one of the two cases below
            text = str(error)
            if is_disk_full(error):
                raise disk_full_error(stage, output_dir, model) from None
            if resume and not clock.times:
                raise StageError(f"the checkpoint {resume} cannot be read ({text.splitlines()[0][:120]}): it is damaged; "
                                 f"delete it (the rerun resumes from the one before) or pass --resume never") from None
            raise
    if finite.bad is not None:
        step, value = finite.bad
        good = [c for c in output_dir.glob("checkpoint-*") if checkpoint_step(c) <= finite.last_good_step]
        last = max(good, key=checkpoint_step, default=None)
        raise StageError(f"{stage}: the training loss became {value} at step {step}: the run stopped and the stage is not "
                         f"finished; lower --lr (now {settings.lr}) or check the data (last good checkpoint: {last or 'none'})")
    start = json.loads(start_file.read_text())
    say(f"{stage}: validation before training: " + ", ".join(f"{k}={v:.4f}" for k, v in start.items()))
    if stopper.received:
        raise Interrupted(stopper.received, f"{stage}: stopped by {stopper.received} at step {trainer.state.global_step}; "
                                            f"checkpoint saved in {latest_checkpoint(output_dir)}. Rerun the same command "
                                            f"without --overwrite to resume.")
    extra_metrics = {**(extra_metrics or {}), "tokens_per_step": tokens_per_step, "grad_accum": grad_accum,
                     "step_end_times": [round(t, 4) for t in clock.times]}
    try:
        metrics = finish(settings, run, trainer, sampler, start, began, tokens_per_step, extra_metrics, before_finish)
    except torch.OutOfMemoryError:  # the final validation (its batch is --batch-size too)
        raise out_of_memory_error(settings, output_dir, seq_len, "the final validation") from None
    except Exception as error:  # noqa: BLE001 - re-raised unless the disk is full
        if is_disk_full(error):
            raise disk_full_error(stage, output_dir, model, "trained model") from None
        raise
    if writer:
        writer.close()
    primary = f"eval_{next(iter(eval_datasets))}_loss"
    say(f"{stage}: validation loss {start[primary]:.4f} -> {metrics['validation_loss_end'][primary]:.4f} "
        f"(perplexity {metrics['perplexity_start']:.1f} -> {metrics['perplexity_end']:.1f}) in {metrics['steps']} steps")
    return metrics


def finish(settings, run, trainer, sampler, start, began, tokens_per_step, extra_metrics, before_finish=None):
    """Final validation, the model (or adapter) + tokenizer as safetensors, a last sample, the
    settings, and metrics.json last: the mark of a finished stage (never with a non-finite loss)."""
    stage, output_dir, model = run.stage, run.output_dir, trainer.model
    end = trainer.evaluate()
    primary = f"eval_{next(iter(trainer.eval_dataset))}_loss"
    bad = {k: v for k, v in {**start, **end}.items() if k.endswith("_loss") and not math.isfinite(v)}
    if bad:
        raise StageError(f"{stage}: validation loss is not finite ({', '.join(f'{k}={v}' for k, v in bad.items())}): "
                         f"the stage is not finished; check the prepared data (--seq-len) and lower --lr")
    cuda = models.use_cuda()
    metrics = {
        "stage": stage, "validation_loss_start": start,
        "validation_loss_end": {k: v for k, v in end.items() if k.endswith("_loss")},
        "perplexity_start": math.exp(start[primary]), "perplexity_end": math.exp(end[primary]),
        "steps": trainer.state.global_step, "tokens_seen": trainer.state.global_step * tokens_per_step,
        "wall_time_s": round(time.time() - began, 1), "peak_memory_gib": peak_memory_gib(),
        "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "world_size": int(os.environ.get("WORLD_SIZE", 1)), "device": "cuda" if cuda else "cpu",
        **(extra_metrics or {}), "identity": run.identity,
    }
    trainer.save_model(str(output_dir))
    if trainer.is_world_process_zero():
        sampler.generate(model, trainer.state.global_step)
        if before_finish is not None:
            metrics.update(before_finish(trainer, metrics) or {})
        save_settings(settings, output_dir / "settings.json")
        metrics["weights"] = lineage.weights_digests(output_dir)  # what the stage is, for the steps after it
        write_atomic(output_dir / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    if settings.record_batches:  # each rank's final weights: DDP ranks must agree
        trained = {n: p for n, p in model.named_parameters() if p.requires_grad}
        (output_dir / f"weights-rank{rank()}.txt").write_text(models.tensor_digest(trained) + "\n")
    return metrics


@contextlib.contextmanager
def stage_run(settings, stage, inputs):
    """`with stage_run(...) as run:` the stage's lock for the whole run (one run at a time per
    stage; taken by the main process) and the plan (plan_run), which says when it is already done."""
    folder = stages.folder(stages.workspace_of(settings), stage)
    with lineage.StageLock(folder, stage) if is_main_process() else contextlib.nullcontext():
        run = plan_run(settings, stage, inputs)
        if run.already_done:
            say(f"already trained: {folder} (same inputs and settings; pass --overwrite to train it again)")
        yield run


@dataclasses.dataclass
class Opening:
    """What a train step starts from, found and checked before anything is loaded or changed."""
    project: Path   # the workspace of the step's base (stages.workspace): where its stages live
    start: Path     # the full weights it starts from (the base model, or an earlier stage's)
    inputs: dict    # {input: digest}: the stages it reads and, when it starts from the base, the base


def begin(settings, name):
    """The opening of every train step: the device set up (a GPU, or the CPU asked for), the seed,
    the workspace of its base, the model it starts from (finished and current) and the digests of
    its inputs (what its identity records)."""
    models.set_up_device(settings.device)
    torch.manual_seed(settings.seed)
    step = stages.stage(name)
    project = stages.workspace_of(settings)
    if step.base == "base":
        start = stages.base_model_dir(project, settings.base_model)
        models.require(start / "config.json", "the base model", models.DOWNLOAD_HINT)
    else:
        require_trained(project, step.base)
        start = stages.model_dir(project, step.base)
    if step.adapter_from:
        require_trained(project, step.adapter_from)
    inputs = lineage.train_inputs(project, step.inputs, start if step.base == "base" else None)
    if is_main_process():  # everything checked: its base's folder (the one process that writes)
        stages.claim_workspace(stages.inputs_dir(project), settings.base_model)
    return Opening(project, start, inputs)
