"""Step 3: write the chapters Kafka never wrote: continue Le Château from where the book stops.

    docker exec -it kafka python 3_continue_kafka.py
    python 3_continue_kafka.py --project-dir /tmp/kafka-demo --new-tokens 300 --context-tokens 128 \\
        --chunk-tokens 64   # tiny, CPU

Loads a stage's model (default 2c's merged/), takes the end of data/1c_kafka/clean_text.txt as
the prompt (the last --context-tokens tokens: 1536 leaves 512 of TinyLlama's 2048 to generate),
and generates --new-tokens with a sliding window (keep the last 1536 tokens, write 512 at a time),
streaming to the console. Writes output/continuation_<stage>.md with the settings and seed in a
header. Same seed, same model, same device -> same text.
"""
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from chateau import dial, generation, lineage, models, stages
from chateau.cli import StageError, group, parse_settings, positive, run, setting


def chapter_sampling():
    """The project's sampling settings; a chapter's length; the prompt defaults to the novel's end."""
    return generation.Sampling(prompt="", new_tokens=4000)


@dataclass
class Settings:
    project_dir: str = setting("", "project folder (default: $KAFKA_PROJECT_DIR or /project)")
    stage: str = setting(stages.CURRICULUM_END, f"model to continue with: {', '.join(stages.MODEL_STAGES)}")
    base_model: str = setting(stages.BASE_MODEL, stages.BASE_MODEL_HELP)
    prompt_file: str = setting("", "file whose text is the prompt")
    context_tokens: int = setting(1536, "tokens of context the model sees (TinyLlama's 2048 minus one chunk)")
    chunk_tokens: int = setting(512, "tokens written per window")
    output: str = setting("", "output file, relative to the project folder or absolute (default: output/continuation_<stage>.md)")
    allow_stale: bool = setting(False, "continue with a stage whose inputs changed since it was trained (said in the file's header)")
    device: str = setting("", models.DEVICE_HELP + "; --device cpu writes while a step trains on the GPU")
    epoch: int = setting(0, f"a stage trained in passes ({dial.DIALLED}): continue with this pass (0: the one the dial published)")
    # --prompt (default: the end of the novel's clean text), --new-tokens (4000, ~3,000 words: a
    # chapter), --temperature, --top-p, --repetition-penalty, --seed.
    sampling: generation.Sampling = group(chapter_sampling, "", "sampling settings")

    def problems(self):
        out = positive(self, "context_tokens", "chunk_tokens") + self.sampling.problems() + models.device_problems(self.device)
        if self.epoch < 0 or (self.epoch and not dial.is_dialled(self.stage)):
            out.append(f"--epoch {self.epoch}: only a stage trained in passes has them ({dial.DIALLED}); 0 is the published one")
        if self.stage not in stages.MODEL_STAGES:
            out.append(f"--stage must be one of {', '.join(stages.MODEL_STAGES)}")
        if self.sampling.prompt and self.prompt_file:
            out.append("give --prompt or --prompt-file, not both")
        if self.prompt_file and not Path(self.prompt_file).is_file():
            out.append(f"--prompt-file {self.prompt_file} does not exist")
        elif self.prompt_file:
            try:
                Path(self.prompt_file).read_text(encoding="utf-8")
            except UnicodeDecodeError:
                out.append(f"--prompt-file {self.prompt_file} is not UTF-8 text: save it as UTF-8")
        return out


def output_path(project, settings):
    """Where the chapter goes: --output relative to the project folder (not to the code's folder),
    never inside a stage's folder (a finished stage's files are not step 3's to overwrite)."""
    out = project / (settings.output or f"output/continuation_{settings.stage}.md")
    resolved = out.resolve()
    for step in stages.TABLE:
        if step.kind in ("prepare", "train") and resolved.is_relative_to(step.folder(project).resolve()):
            raise StageError(f"--output {settings.output} is inside step {step.name}'s folder ({step.folder(project)}): "
                             f"write the continuation elsewhere, e.g. output/")
    if resolved.is_dir():
        raise StageError(f"--output {settings.output} is a folder: give a file name")
    return out


def main(argv=None):
    settings = parse_settings(Settings, argv, description=__doc__)
    models.set_up_device(settings.device, require_gpu=False)  # writing on the CPU is slow, not wrong
    project = stages.workspace_of(settings)  # the stages of --base-model
    sampling = settings.sampling

    out = output_path(project, settings)

    # 1. Model and prompt: by default the novel's last tokens, exactly as step 2c read them.
    model, tokenizer = generation.load_stage(project, settings.stage, settings.base_model, allow_stale=settings.allow_stale,
                                             epoch=settings.epoch)
    which = "" if settings.stage == "base" else dial.which_pass(project, settings.stage, settings.epoch)
    if which:
        print(f"3: continuing with {settings.stage}, {which}", flush=True)
    stale = None if settings.stage == "base" else lineage.stale_reason(project, settings.stage)
    if sampling.prompt or settings.prompt_file:
        prompt = sampling.prompt or Path(settings.prompt_file).read_text(encoding="utf-8")
    else:
        clean_text = models.require(stages.folder(project, stages.NOVEL_DATA) / "clean_text.txt", "the novel's clean text",
                                    stages.stage(stages.NOVEL_DATA).hint())
        prompt = clean_text.read_text()
    if settings.context_tokens + settings.chunk_tokens > model.config.max_position_embeddings:
        raise StageError(f"--context-tokens + --chunk-tokens must fit the model's {model.config.max_position_embeddings} positions")
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"][-settings.context_tokens:]

    # 2. Generate, window after window, streaming to the console.
    print(f"... {tokenizer.decode(prompt_ids[-60:])}", flush=True)
    new_ids = generation.continue_text(model, tokenizer, prompt_ids, sampling.new_tokens, settings.context_tokens,
                                       settings.chunk_tokens, sampling, stream=True)
    text = tokenizer.decode(new_ids, skip_special_tokens=True)

    # 3. Write the chapter with how it was made.
    out.parent.mkdir(parents=True, exist_ok=True)
    shown = {k: v for k, v in vars(settings).items() if k not in ("project_dir", "output", "sampling")} | vars(sampling)
    header = "\n".join(f"- {k}: {v}" for k, v in shown.items()) + (f"\n- STALE MODEL (--allow-stale): {stale}" if stale else "")
    partial = out.with_suffix(".md.partial")
    partial.write_text(f"# Le Château, continued ({settings.stage})\n\n{header}\n- model: {stages.model_dir(project, settings.stage, settings.base_model)}\n"
                       + (f"- pass: {which}\n" if which else "") + f"- generated tokens: {len(new_ids)}\n- written: {datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC}\n\n"
                       f"---\n\n{text.strip()}\n")
    partial.rename(out)
    print(f"\n\n3 done: {len(new_ids)} tokens written to {out}")


if __name__ == "__main__":
    run(main)
