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

import common
import generation


@dataclass
class Settings:
    project_dir: str = common.setting("", "project folder (default: $KAFKA_PROJECT_DIR or /project)")
    stage: str = common.setting("2c", "model to continue with: base, 2a, 2b or 2c")
    prompt: str = common.setting("", "prompt text (default: the end of the novel's clean text)")
    prompt_file: str = common.setting("", "file whose text is the prompt")
    new_tokens: int = common.setting(4000, "tokens to write (~3,000 words: a chapter)")
    context_tokens: int = common.setting(1536, "tokens of context the model sees (TinyLlama's 2048 minus one chunk)")
    chunk_tokens: int = common.setting(512, "tokens written per window")
    temperature: float = common.setting(0.8, "sampling temperature")
    top_p: float = common.setting(0.9, "nucleus sampling")
    repetition_penalty: float = common.setting(1.1, "repetition penalty")
    seed: int = common.setting(0, "random seed (same seed -> same text)")
    output: str = common.setting("", "output file (default: output/continuation_<stage>.md)")

    def problems(self):
        out = common.positive(self, "new_tokens", "context_tokens", "chunk_tokens")
        if self.stage not in generation.STAGES:
            out.append(f"--stage must be one of {', '.join(generation.STAGES)}")
        if self.prompt and self.prompt_file:
            out.append("give --prompt or --prompt-file, not both")
        if self.prompt_file and not Path(self.prompt_file).is_file():
            out.append(f"--prompt-file {self.prompt_file} does not exist")
        return out


def main():
    settings = common.parse_settings(Settings, description=__doc__)
    common.check_device()
    project = common.project_dir(settings.project_dir)

    # 1. Model and prompt: by default the novel's last tokens, exactly as step 2c read them.
    model, tokenizer = generation.load_stage(project, settings.stage)
    if settings.prompt or settings.prompt_file:
        prompt = settings.prompt or Path(settings.prompt_file).read_text()
    else:
        clean_text = common.require(project / common.DATA["1c"] / "clean_text.txt", "the novel's clean text",
                                    common.run_hint("1c"))
        prompt = clean_text.read_text()
    if settings.context_tokens + settings.chunk_tokens > model.config.max_position_embeddings:
        raise common.StageError(f"--context-tokens + --chunk-tokens must fit the model's {model.config.max_position_embeddings} positions")
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"][-settings.context_tokens:]

    # 2. Generate, window after window, streaming to the console.
    sampling = generation.Sampling(temperature=settings.temperature, top_p=settings.top_p,
                                   repetition_penalty=settings.repetition_penalty, seed=settings.seed)
    print(f"... {tokenizer.decode(prompt_ids[-60:])}", flush=True)
    new_ids = generation.continue_text(model, tokenizer, prompt_ids, settings.new_tokens, settings.context_tokens,
                                       settings.chunk_tokens, sampling, stream=True)
    text = tokenizer.decode(new_ids, skip_special_tokens=True)

    # 3. Write the chapter with how it was made.
    out = Path(settings.output) if settings.output else project / "output" / f"continuation_{settings.stage}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    header = "\n".join(f"- {k}: {v}" for k, v in vars(settings).items() if k not in ("project_dir", "output"))
    partial = out.with_suffix(".md.partial")
    partial.write_text(f"# Le Château, continued ({settings.stage})\n\n{header}\n- model: {generation.stage_path(project, settings.stage)}\n"
                       f"- generated tokens: {len(new_ids)}\n- written: {datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC}\n\n"
                       f"---\n\n{text.strip()}\n")
    partial.rename(out)
    print(f"\n\n3 done: {len(new_ids)} tokens written to {out}")


if __name__ == "__main__":
    common.run(main)
