"""Loading any stage's model and generating from it: used by the training samples, step 3, the
scoreboard and the notebook, so that what the notebook shows is what the tests run.

`Sampling` is the one place for the curriculum's sampling settings; `generate_batch` the one call
to `model.generate`."""
import re
from dataclasses import dataclass

import torch

from chateau import lineage, models, stages
from chateau.cli import StageError, setting


# The first public attempt's test of a model: 500 tokens from this prompt at the settings below.
SEED_PROMPT = "K. ouvrit la porte."
SEED_TEST_TOKENS = 500


@dataclass
class Sampling:
    """How every sample of the project is drawn: T 0.8, top-p 0.9, repetition penalty 1.1."""
    prompt: str = setting("", "prompt of the generated samples ('' = a passage of the novel's held-out slice)")
    new_tokens: int = setting(200, "tokens generated per sample")
    temperature: float = setting(0.8, "sampling temperature (0 = greedy: always the most likely token)")
    top_p: float = setting(0.9, "nucleus sampling: keep the smallest set of tokens with this probability (0, 1]")
    repetition_penalty: float = setting(1.1, "repetition penalty (1 = none)")
    seed: int = setting(0, "seed of the sampling (same seed, model and device -> same text)")

    def problems(self, prefix=""):
        flag = lambda name: f"--{prefix}{name.replace('_', '-')}"
        out = []
        if self.new_tokens <= 0:
            out.append(f"{flag('new_tokens')} must be > 0 (got {self.new_tokens})")
        # Logits are divided by the temperature: below ~0.01 they overflow to inf and the
        # probabilities become NaN; above 100 every token is as likely as any other.
        if not (self.temperature == 0 or 0.01 <= self.temperature <= 100):
            out.append(f"{flag('temperature')} must be 0 (greedy) or in [0.01, 100] (got {self.temperature})")
        if not 0 < self.top_p <= 1:
            out.append(f"{flag('top_p')} must be in (0, 1] (got {self.top_p})")
        if not 0 < self.repetition_penalty <= 10:
            out.append(f"{flag('repetition_penalty')} must be in (0, 10] (got {self.repetition_penalty})")
        if self.seed < 0 or self.seed >= 2**32:
            out.append(f"{flag('seed')} must be in [0, 2**32) (got {self.seed})")
        return out


def load_stage(project, stage, base_model=None, allow_stale=None, epoch=0):
    """(model, tokenizer) of a stage, at compute precision, ready to generate: what the stage
    table says it produces (a full model; an adapter applied, unmerged, on its base's full model;
    a merged stage's merged/), for a stage trained in passes the pass the dial published, or pass
    `epoch` (an adapter pass applied, unmerged, on its base). Only a finished stage that is not
    stale is loaded (`allow_stale`: a stale one with a warning)."""
    from chateau import dial
    if stage not in stages.MODEL_STAGES:
        raise StageError(f"unknown stage {stage!r}: expected one of {', '.join(stages.MODEL_STAGES)}")
    path = stages.model_dir(project, stage, base_model)
    hint = models.DOWNLOAD_HINT if stage == "base" else stages.stage(stage).hint()
    if stage != "base":
        if not lineage.is_finished(project, stage):
            raise StageError(f"step {stage} is not finished (no metrics.json in {stages.folder(project, stage)}): {hint}")
        lineage.check_current(project, stage, allow_stale=allow_stale)
    adapter = stages.folder(project, stage) if stages.is_adapter(stage) else None
    if epoch:
        chosen = dial.pass_dir(project, stage, epoch)
        if not (chosen / "config.json").exists() and not (chosen / "adapter_config.json").exists():
            raise StageError(f"--epoch {epoch}: {stage} has no pass {epoch} ({chosen}); `python -m chateau.dial --stage "
                             f"{stage}` lists its passes")
        if (chosen / "adapter_config.json").exists():
            path, adapter = stages.model_dir(project, stages.stage(stage).base, base_model), chosen
        else:
            path = chosen
    models.require(path / "config.json", f"the {stage} model", hint)
    model = models.load_model(path, fix=hint)
    if adapter is not None:
        model = models.load_adapter(model, adapter)
    tokenizer = models.load_tokenizer(path)
    model.to("cuda" if models.use_cuda() else "cpu").eval()
    return model, tokenizer


def generate_ids(model, tokenizer, input_ids, sampling, max_new_tokens, streamer=None):
    """New token ids after `input_ids` (a list), sampled with `sampling`'s settings."""
    return generate_batch(model, tokenizer, [input_ids], sampling, max_new_tokens, streamer)[0]


def generate_batch(model, tokenizer, batch_ids, sampling, max_new_tokens, streamer=None):
    """New token ids after each of `batch_ids` (lists of any lengths), generated together: the
    prompts are left-padded, so every row's last prompt token sits at the same place and the model
    (whose positions follow the attention mask) reads each as if it were alone. A row that ends
    (EOS) early is cut there."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    width = max(len(ids) for ids in batch_ids)
    ids = torch.tensor([[pad] * (width - len(row)) + row for row in batch_ids], device=model.device)
    mask = torch.tensor([[0] * (width - len(row)) + [1] * len(row) for row in batch_ids], device=model.device)
    drawn = dict(do_sample=True, temperature=sampling.temperature, top_p=sampling.top_p) if sampling.temperature else \
        dict(do_sample=False, temperature=None, top_p=None, top_k=None)  # greedy
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, **drawn,
                             repetition_penalty=sampling.repetition_penalty, pad_token_id=pad, streamer=streamer)
    new = out[:, width:].tolist()
    eos = tokenizer.eos_token_id
    return [row[:row.index(eos) + 1] if eos in row else row for row in new]


def prompt_ids(tokenizer, prompt):
    """A prompt as the model saw text in training: BOS (where the tokenizer has one), then the text."""
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    return bos + tokenizer(prompt, add_special_tokens=False)["input_ids"]


GENERATION_BATCH = 16  # samples generated together (a 1.1B model's cache for 16 x 456 tokens is ~0.2 GB at bf16)


def generate_from_prompts(model, tokenizer, sampling, prompts, batch_size=GENERATION_BATCH, progress=None):
    """One sample per prompt (prompt excluded), `batch_size` at a time, reproducible from
    `sampling.seed` (and the batch size). `progress(done, total)` is called after each batch."""
    torch.manual_seed(sampling.seed)
    texts = []
    for start in range(0, len(prompts), batch_size):
        batch = [prompt_ids(tokenizer, p) for p in prompts[start:start + batch_size]]
        texts += [tokenizer.decode(ids, skip_special_tokens=True)
                  for ids in generate_batch(model, tokenizer, batch, sampling, sampling.new_tokens)]
        if progress:
            progress(len(texts), len(prompts))
    return texts


SENTENCE_END = re.compile(r"(?<=[.!?…»])\s+")


def passages(text, n, min_words=15, max_words=60):
    """`n` passages of `text`, evenly spaced, each whole sentences from a sentence start, at least
    `min_words` long (at most `max_words`): prompts that give a model the book's voice to continue."""
    sentences = [s.strip() for s in SENTENCE_END.split(" ".join(text.split())) if s.strip()]
    sentences = sentences[1:] or sentences  # the first may be cut mid-sentence
    out = []
    for k in range(n):
        i, passage = len(sentences) * k // max(1, n), []
        while i < len(sentences) and len(" ".join(passage).split()) < min_words:
            passage.append(sentences[i])
            i += 1
        if passage:
            out.append(" ".join(" ".join(passage).split()[:max_words]))
    return out


def decode_rows(tokenizer, rows):
    """Prepared samples (lists of ids) back to one text: how the scoreboard and the prompts read data."""
    return " ".join(tokenizer.decode(row, skip_special_tokens=True) for row in rows)


def held_out_prompts(project, tokenizer, n, fallback=stages.FRENCH_DATA[0]):
    """`n` passages of the novel's held-out slice (1c's validation windows, never trained on),
    or of the `fallback` step's held-out books when the novel is not prepared yet."""
    from datasets import load_from_disk
    for stage in (stages.NOVEL_DATA, fallback):
        folder = stages.folder(project, stage)
        if (folder / "manifest.json").exists():
            rows = load_from_disk(str(folder))["validation"]["input_ids"][:64]
            found = passages(decode_rows(tokenizer, rows), n)
            if found:
                return found
    raise StageError(f"no held-out text to take prompts from: {stages.stage(stages.NOVEL_DATA).hint()}, or give a prompt")


def side_by_side(project, sampling, model_stages=stages.MODEL_STAGES, base_model=None):
    """The notebook's "trying the models": ("prompt", prompt) first, then (stage, continuation) for
    every model stage as soon as it is generated (a stage that cannot be loaded: its reason, in
    parentheses), all from the same prompt: `sampling.prompt`, or a passage of the novel's held-out slice."""
    prompt, announced, model = sampling.prompt, False, None
    for stage in model_stages:
        del model  # the previous stage's model goes before the next one loads: one model in memory at a time
        model = None
        try:
            model, tokenizer = load_stage(project, stage, base_model)
        except StageError as missing:
            yield stage, f"({missing.message})"
            continue
        prompt = prompt or held_out_prompts(project, tokenizer, 1)[0]
        if not announced:
            yield "prompt", prompt
            announced = True
        yield stage, generate_from_prompts(model, tokenizer, sampling, [prompt])[0].strip()


def continue_text(model, tokenizer, prompt_ids, new_tokens, context_tokens, chunk_tokens, sampling, stream=False):
    """Generate `new_tokens` after `prompt_ids` with a sliding window: the model sees at most the
    last `context_tokens` tokens and writes `chunk_tokens` at a time, so the continuation can be
    far longer than the context. Stops early at EOS; `stream` prints text as it is generated."""
    from transformers import TextStreamer
    streamer = TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True) if stream else None
    torch.manual_seed(sampling.seed)
    generated = []
    while len(generated) < new_tokens:
        context = (prompt_ids + generated)[-context_tokens:]
        new = generate_ids(model, tokenizer, context, sampling, min(chunk_tokens, new_tokens - len(generated)), streamer)
        if tokenizer.eos_token_id in new:  # the model ended the book
            generated += new[: new.index(tokenizer.eos_token_id)]
            break
        generated += new
    return generated
