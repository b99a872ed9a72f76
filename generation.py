"""Loading any stage's model and generating from it: used by 3_continue_kafka.py, the scoreboard
and the notebook, so that what the notebook shows is what the tests run."""
from dataclasses import dataclass

import torch

import common

STAGES = ("base", "2a", "2b", "2c")


@dataclass
class Sampling:
    """The curriculum's sampling settings: "K. ouvrit la porte.", T 0.8, top-p 0.9, rep. penalty 1.1."""
    prompt: str = "K. ouvrit la porte."
    new_tokens: int = 500
    temperature: float = 0.8
    top_p: float = 0.9
    repetition_penalty: float = 1.1
    seed: int = 0


def stage_path(project, stage):
    """Where a stage's model lives: base, 2a's full model, 2b's adapter (on 2a), 2c's merged model."""
    return {"base": project / common.BASE_MODEL, "2a": project / common.MODELS["2a"],
            "2b": project / common.MODELS["2b"], "2c": project / common.MODELS["2c"] / "merged"}[stage]


def load_stage(project, stage):
    """(model, tokenizer) of a stage, at compute precision, ready to generate. 2b is 2a with its
    adapter applied (unmerged); 2c is the merged model that step 2c wrote."""
    from transformers import AutoModelForCausalLM
    if stage not in STAGES:
        raise common.StageError(f"unknown stage {stage!r}: expected one of {', '.join(STAGES)}")
    path = stage_path(project, stage)
    hint = {"base": "download it with notebook.ipynb (section 1)", "2a": common.run_hint("2a"),
            "2b": common.run_hint("2b"), "2c": common.run_hint("2c")}[stage]
    marker = "adapter_config.json" if stage == "2b" else "config.json"
    common.require(path / marker, f"the {stage} model", hint)
    if stage == "2b":
        from peft import PeftModel
        base_dir = stage_path(project, "2a")
        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir, dtype=common.compute_dtype()), path)
        tokenizer = common.load_tokenizer(base_dir)
    else:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=common.compute_dtype())
        tokenizer = common.load_tokenizer(path)
    model.to("cuda" if common.use_cuda() else "cpu").eval()
    return model, tokenizer


def generate_ids(model, tokenizer, input_ids, sampling, max_new_tokens, streamer=None):
    """New token ids after `input_ids` (a list), sampled with `sampling`'s settings."""
    ids = torch.tensor([input_ids], device=model.device)
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=True,
                             max_new_tokens=max_new_tokens, temperature=sampling.temperature, top_p=sampling.top_p,
                             repetition_penalty=sampling.repetition_penalty, pad_token_id=tokenizer.eos_token_id,
                             streamer=streamer)
    return out[0, len(input_ids):].tolist()


def generate_text(model, tokenizer, sampling, n=1):
    """`n` samples from `sampling.prompt`, reproducible from `sampling.seed`; prompt excluded."""
    torch.manual_seed(sampling.seed)
    prompt = [tokenizer.bos_token_id] + tokenizer(sampling.prompt, add_special_tokens=False)["input_ids"]
    return [tokenizer.decode(generate_ids(model, tokenizer, prompt, sampling, sampling.new_tokens), skip_special_tokens=True)
            for _ in range(n)]


def side_by_side(project, sampling, stages=STAGES):
    """{stage: text} for every stage whose model exists (the notebook's "trying the models")."""
    out = {}
    for stage in stages:
        try:
            model, tokenizer = load_stage(project, stage)
        except common.StageError as missing:
            out[stage] = f"({missing.message})"
            continue
        out[stage] = sampling.prompt + generate_text(model, tokenizer, sampling)[0]
    return out


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
