"""The notebook's views of the project: each stage's curves from the TensorBoard logs under runs/
(read as they are written, so they work while a stage is still training), the curriculum's
story on one axis of tokens seen, a line per stage from its metrics.json, the samples each stage
wrote while training, the imprint dial of a stage trained in passes (each pass's figures, and the
seed's own test at its first, published and last pass), the scoreboard's new measures as a plot,
the continuations and the exported files (step 4 run from the notebook, its output streamed). The
cells that load models run inside `models_released()`: the notebook holds no model, nor PyTorch's
GPU cache, between cells."""
import contextlib
import gc
import json
import math
import re
import signal
import subprocess
import sys
import traceback
from pathlib import Path
from typing import NamedTuple

from chateau import dial, stages
from chateau import cli

# One colour per validation set, the same in every plot (by prepare stage); training loss in black.
COLOURS = dict(zip(stages.PREPARE_STAGES, ("tab:blue", "tab:green", "tab:red", "tab:purple", "tab:orange")))
# Characters that Markdown would read as markup in a model's text: escaped wherever text is shown.
MARKDOWN_SPECIAL = str.maketrans({c: "\\" + c for c in "\\`*_{}[]<>#|"})
SMOOTH_ABOVE = 30  # logged training-loss points beyond which the curve is smoothed (the raw one stays, faint)

def quiet():
    """The notebook's first cell: the libraries' noise off (chateau.cli.quiet), and no progress bar
    at all (a bar's carriage returns turn into lines in a notebook's output)."""
    cli.quiet(training_bar=False)


def read_scalars(log_dir):
    """{tag: [(step, value), ...]} from every event file under `log_dir`."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    scalars = {}
    for events in sorted(log_dir.rglob("events.out.tfevents.*")):
        accumulator = EventAccumulator(str(events), size_guidance={"scalars": 0})
        accumulator.Reload()
        for tag in accumulator.Tags()["scalars"]:
            scalars.setdefault(tag, []).extend((e.step, e.value) for e in accumulator.Scalars(tag))
    return {tag: sorted(points) for tag, points in scalars.items()}


def by_validation_set(named, prefix):
    """{prepare stage: value} of the entries of `named` whose key is `<prefix><run name>_loss`: a
    validation set's loss as the TensorBoard logs ("eval/") or a pass's record ("eval_") name it."""
    by_run = {stages.stage(s).run_name: s for s in stages.PREPARE_STAGES}
    runs = {key: key[len(prefix):-len("_loss")] for key in named if key.startswith(prefix) and key.endswith("_loss")}
    return {by_run[run]: named[key] for key, run in runs.items() if run in by_run}


def validation_curves(scalars):
    """{prepare stage: [(step, loss)]} of every validation set in a stage's logs."""
    return by_validation_set(scalars, "eval/")


def smooth(values, weight=0.9):
    """TensorBoard's smoothing: an exponential moving average, debiased at the start."""
    out, average = [], 0.0
    for i, value in enumerate(values, 1):
        average = weight * average + (1 - weight) * value
        out.append(average / (1 - weight ** i))
    return out


def logged_stages(project, train_stages=stages.TRAIN_STAGES):
    logged = {s: read_scalars(project / "runs" / stages.stage(s).run_name) for s in train_stages}
    return {s: v for s, v in logged.items() if v}


def plot_stages(project, train_stages=stages.TRAIN_STAGES):
    """One row per stage with logs: the losses in nats per token (training, smoothed when long,
    and every validation set in its colour) with the learning rate on a small twin axis; beside
    them the gradient norm and the throughput."""
    import matplotlib.pyplot as plt
    logged = logged_stages(project, train_stages)
    if not logged:
        print("no training logs yet under", project / "runs")
        return None
    fig, axes = plt.subplots(len(logged), 2, figsize=(13, 3.4 * len(logged)), squeeze=False,
                             gridspec_kw={"width_ratios": (3, 2)})
    for (stage, scalars), (loss_ax, health_ax) in zip(logged.items(), axes):
        if "train/loss" in scalars:
            steps, losses = zip(*scalars["train/loss"])
            long = len(losses) > SMOOTH_ABOVE
            loss_ax.plot(steps, losses, color="black", alpha=0.25 if long else 0.8, lw=1, label="training")
            if long:
                loss_ax.plot(steps, smooth(losses), color="black", lw=1.5, label="training (smoothed)")
        for data, points in validation_curves(scalars).items():
            own = data == stages.stage(stage).data
            loss_ax.plot(*zip(*points), color=COLOURS.get(data), marker="o", ms=4, lw=2 if own else 1.2,
                         label=f"validation: {stages.stage(data).title}" + (" (own)" if own else ""))
        loss_ax.set(title=stages.label(stage), xlabel="optimizer step", ylabel="loss (nats/token)")
        loss_ax.legend(fontsize=8, loc="upper right")
        if "train/learning_rate" in scalars:
            lr_ax = loss_ax.twinx()
            lr_ax.plot(*zip(*scalars["train/learning_rate"]), color="grey", lw=0.8, ls="--")
            lr_ax.set_ylabel("learning rate (dashed)", color="grey", fontsize=8)
            lr_ax.tick_params(labelsize=7, colors="grey")
            lr_ax.set_ylim(0, None)
        if "train/grad_norm" in scalars:
            health_ax.plot(*zip(*scalars["train/grad_norm"]), color="tab:brown", lw=1)
        health_ax.set(title=f"{stage}: gradient norm and throughput", xlabel="optimizer step", ylabel="gradient norm (before clipping)")
        if "train/tokens_per_second" in scalars:
            speed_ax = health_ax.twinx()
            speed_ax.plot(*zip(*scalars["train/tokens_per_second"]), color="tab:cyan", lw=1)
            speed_ax.set_ylabel("tokens/s (cyan)", color="tab:cyan", fontsize=8)
            speed_ax.set_ylim(0, None)
    fig.tight_layout()
    return fig


def read_json(path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def tokens_per_step(project, stage):
    """Tokens per optimizer step of a stage, from its metrics.json, or its settings.json while it trains."""
    record = read_json(stages.folder(project, stage) / "metrics.json") or read_json(stages.folder(project, stage) / "settings.json")
    return (record or {}).get("tokens_per_step")


def plot_curriculum(project, end=stages.CURRICULUM_END):
    """The curriculum's story on one axis: tokens seen from the first stage to `end` (2a -> 2b ->
    2c), every validation loss each stage measured on it. Where 2c's curves meet 1b's, it shows what
    imprinting the novel costs French."""
    import matplotlib.pyplot as plt
    chain, logged = stages.path_to(end), logged_stages(project)
    if not any(s in logged for s in chain):
        print("no training logs yet under", project / "runs")
        return None
    fig, ax = plt.subplots(figsize=(11, 4))
    offset, spans, labelled = 0, [], set()
    for stage in chain:
        per_step = tokens_per_step(project, stage)
        if stage not in logged or not per_step:
            break
        for data, points in validation_curves(logged[stage]).items():
            xs = [offset + step * per_step for step, _ in points]
            ax.plot(xs, [loss for _, loss in points], color=COLOURS.get(data), marker="o", ms=4,
                    label=None if data in labelled else f"validation: {stages.stage(data).title}")
            labelled.add(data)
        finished = read_json(stages.folder(project, stage) / "metrics.json")
        last = finished["steps"] if finished else max(points[-1][0] for points in logged[stage].values())
        spans.append((stage, offset, offset + last * per_step))
        offset += last * per_step
    for stage, start, stop in spans:
        ax.axvline(start, color="grey", lw=0.8, ls=":")
        ax.text(start, 0.98, f" {stage}", transform=ax.get_xaxis_transform(), fontsize=9, color="grey", va="top")
    lengths = [stop - start for _, start, stop in spans if stop > start]
    log_scale = len(lengths) > 1 and max(lengths) / min(lengths) > 20
    if log_scale:  # 2a's billions of tokens would squash 2c's millions into a line
        ax.set_xscale("symlog", linthresh=max(1, min(lengths)))
    ax.set(title=f"The curriculum: {' → '.join(s for s, *_ in spans)}", ylabel="validation loss (nats/token)",
           xlabel="tokens seen since the base model" + (" (log scale)" if log_scale else ""))
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def summaries(project, train_stages=stages.TRAIN_STAGES):
    """A line per trained stage from its metrics.json: steps, tokens, wall time, its own
    validation loss and perplexity start -> end, peak memory; "training" for one still running."""
    lines = []
    for stage in train_stages:
        metrics = read_json(stages.folder(project, stage) / "metrics.json")
        if metrics is None:
            if (project / "runs" / stages.stage(stage).run_name).exists():
                lines.append(f"{stages.label(stage)}: training (no metrics.json yet)")
            continue
        start, end = (next(iter(metrics[k].values())) for k in ("validation_loss_start", "validation_loss_end"))
        lines.append(f"{stages.label(stage)}: {metrics['steps']:,} steps, {metrics['tokens_seen']:,} tokens, "
                     f"{metrics['wall_time_s'] / 60:.1f} min; {stages.stage(stages.stage(stage).data).title} loss "
                     f"{start:.3f} → {end:.3f} (perplexity {math.exp(start):.1f} → {math.exp(end):.1f}); "
                     f"peak memory {metrics['peak_memory_gib']} GiB on {metrics['device']}")
    return lines


def training_samples(project, stage):
    """[(step, prompt, continuation)] of the samples a stage wrote while training (samples.jsonl)."""
    path = stages.folder(project, stage) / "samples.jsonl"
    if not path.exists():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [(r["step"], r["prompt"], r["text"][len(r["prompt"]):] if r["text"].startswith(r["prompt"]) else r["text"]) for r in rows]


def samples_table(project, train_stages=stages.TRAIN_STAGES, width=400):
    """A Markdown table per stage: its prompt once, then its first, middle and last training
    sample (the continuation only), by step."""
    parts = []
    cell = lambda text: " ".join(text.split())[:width].translate(MARKDOWN_SPECIAL) or "(empty)"
    for stage in train_stages:
        rows = training_samples(project, stage)
        if not rows:
            continue
        picked = list(dict.fromkeys([0, len(rows) // 2, len(rows) - 1]))
        parts.append(f"**{stages.label(stage)}**, after the prompt: *{cell(rows[0][1])}*\n\n| step | sample |\n|---|---|\n" +
                     "\n".join(f"| {rows[i][0]} | {cell(rows[i][2])} |" for i in picked))
    return "\n\n".join(parts) or "(no training samples yet)"


def plot_scoreboard(board):
    """The scoreboard's two reader-like measures per stage, with their 95% intervals: the
    next-passage accuracy (chance 1/6) and the blind discriminator (0.5: it cannot tell). A legend
    says what each colour and line is."""
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    rows = board["rows"]
    if not rows:
        return None
    fig, (passage_ax, told_ax) = plt.subplots(1, 2, figsize=(11, 3.8))
    names = [r["stage"] for r in rows]
    colour = lambda row: "grey" if row["stage"] == "base" else "tab:red"
    for ax, key, title, ylabel, line, line_label in (
            (passage_ax, "next_passage", "Next passage ↑", "true continuation picked (share of items)", 1 / 6, "chance (1 in 6)"),
            (told_ax, "told_apart", "Told apart from the novel ↓", "discriminator accuracy", 0.5, "0.5: cannot tell")):
        for i, row in enumerate(rows):
            if row.get(key) is not None:
                low, high = row[key + "_95"]
                ax.errorbar(i, row[key], yerr=[[row[key] - low], [high - row[key]]], fmt="o", color=colour(row), capsize=4)
        ax.axhline(line, color="grey", ls="--", lw=0.8)
        ax.set(title=title, ylim=(0, 1.05), xlim=(-0.5, len(rows) - 0.5), xticks=range(len(rows)), xticklabels=names,
               xlabel="stage", ylabel=ylabel)
        handles = [Line2D([], [], color="grey", marker="o", ls="", label="base model"),
                   Line2D([], [], color="tab:red", marker="o", ls="", label="trained stage (bar: 95% interval)"),
                   Line2D([], [], color="grey", ls="--", lw=0.8, label=line_label)]
        novel = next((r for r in board["references"] if r["stage"] == "(novel)"), None)
        if key == "told_apart" and novel and novel.get(key) is not None:
            ax.axhline(novel[key], color="tab:blue", ls=":", lw=1)
            handles.append(Line2D([], [], color="tab:blue", ls=":", lw=1, label="the novel's two halves"))
        ax.legend(handles=handles, fontsize=8, loc="best")
    fig.tight_layout()
    return fig


def quote(text):
    """Generated text as a Markdown block quote, its paragraphs kept and nothing in it read as
    Markdown or HTML (a model may write `*`, `#` or `<`)."""
    paragraphs = [" ".join(p.split()).translate(MARKDOWN_SPECIAL) for p in text.split("\n") if p.strip()]
    return "\n>\n".join(f"> {p}" for p in paragraphs) or "> (empty)"


def with_code(message):
    """A message of the project (a StageError's, a hint) as Markdown: its `commands` as code, the
    rest as plain text (paths and names keep their underscores and stars)."""
    parts = message.split("`")
    if len(parts) % 2 == 0:  # an unpaired backtick: no code in it
        return message.translate(MARKDOWN_SPECIAL)
    return "".join(f"`{part}`" if i % 2 else part.translate(MARKDOWN_SPECIAL) for i, part in enumerate(parts))


def model_block(title, text):
    """A model's continuation under its title, quoted. A model that could not be loaded (its reason
    in parentheses, as generation.side_by_side gives it) is one line of status beside its title,
    outside the quote, where its command reads as code."""
    if text.startswith("(") and text.endswith(")"):
        return f"**{title}**: not available: {with_code(text[1:-1])}"
    return f"**{title}**\n\n{quote(text)}"


def side_by_side_block(stage, text):
    """One block of "trying the models": the prompt, or a stage's continuation under its name."""
    if stage == "prompt":
        return f"**Prompt**, a passage of the novel's held-out slice:\n\n{quote(text)}"
    return model_block(stages.label(stage), text)


def last_words(text, at_least=60):
    """The end of a text, whole paragraphs of it, at least `at_least` words; a long last paragraph
    from a sentence start within it (at most twice that)."""
    paragraphs = [" ".join(p.split()) for p in text.split("\n") if p.strip()]
    kept = []
    while paragraphs and sum(len(p.split()) for p in kept) < at_least:
        kept.insert(0, paragraphs.pop())
    if not kept:
        return ""
    first = kept[0].split()
    room = 2 * at_least - sum(len(p.split()) for p in kept[1:])  # > at_least: the others hold fewer
    cut = len(first) > room
    if cut:
        first = first[-room:]
        start = next((i for i in range(1, len(first) // 2) if first[i - 1][-1] in ".!?…»"), 0)
        kept[0] = " ".join(first[start:])
    if paragraphs or cut:
        kept[0] = "… " + kept[0]
    return "\n".join(kept)


def continued_from(project, settings):
    """(what it is, text) of what a continuation continued, from the settings its file records:
    its --prompt, its --prompt-file, or by default the novel's clean text, whose end step 3 reads;
    None when that text is not here."""
    if settings.get("prompt"):
        return "The end of its prompt", settings["prompt"]
    if settings.get("prompt_file"):
        try:
            return f"The end of its prompt file ({settings['prompt_file']})", Path(settings["prompt_file"]).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            return None
    try:
        return "The novel's last lines", (stages.folder(project, stages.NOVEL_DATA) / "clean_text.txt").read_text()
    except OSError:
        return None


def continuation_markdown(path, project):
    """A continuation file (output/continuation_*.md) for reading: its title, its settings folded
    away, the last lines of the text it continues (quoted), then its text (quoted)."""
    header, _, body = path.read_text().partition("\n---\n")
    lines = header.strip().splitlines()
    title = lines[0][2:] if lines and lines[0].startswith("# ") else path.name
    settings = dict(re.findall(r"^- (\w+): ?(.*)$", header, re.M))
    folded = "\n".join(lines[1:] if lines and lines[0].startswith("# ") else lines).strip()
    source = continued_from(project, settings)
    context = settings.get("context_tokens")
    before = "" if source is None else (
        source[0].translate(MARKDOWN_SPECIAL) + (f" (the model read the last {context} tokens)" if context else "") +
        f":\n\n{quote(last_words(source[1]))}\n\n")
    return (f"### {title.translate(MARKDOWN_SPECIAL)}\n\n`{path}`\n\n<details><summary>settings</summary>\n\n{folded}\n\n"
            f"</details>\n\n{before}The continuation:\n\n{quote(body)}")


# ---------------------------------------------------------------------------------------------
# The imprint dial, seen as its author saw it: a stage trained in passes (chateau/dial.py), each
# pass's figures from its metrics.json, and the seed's own test of a model at three of its passes.

class Passes(NamedTuple):
    records: list     # one per pass (chateau/dial.py's record), in order
    published: int    # the pass the stage publishes (the dial's pick, or the one `python -m chateau.dial` moved it to)
    rule: dict        # the rule's thresholds the stage was trained with (max_extraction, loss_tolerance)


def passes(project, stage):
    """Stage `stage`'s passes from its metrics.json; no records for a stage without passes or not finished."""
    metrics = read_json(stages.folder(project, stage) / "metrics.json") or {}
    return Passes(metrics.get("passes") or [], metrics.get("published_pass"), metrics.get("dial") or {})


def dial_stage(project, preferred=dial.Settings.stage):
    """The stage the dial view shows: `preferred` (2d, the dial's own default) when it has passes,
    else the first stage that has (2c, on the curriculum's default path), else `preferred`."""
    with_passes = [s for s in stages.TRAIN_STAGES if passes(project, s).records]
    return preferred if preferred in with_passes or not with_passes else with_passes[0]


def no_passes(project, stage):
    """What the dial view says of a stage without passes (not trained, or trained without them)."""
    known = read_json(stages.folder(project, stage) / "metrics.json") is not None
    return with_code(f"{stages.label(stage)}: " + ("trained without passes: no pass to show" if known else
                                                   f"not trained yet: {stages.stage(stage).hint()}"))


def dial_table(project, stage):
    """A Markdown table of stage `stage`'s passes, one row each: tokens seen, the held-out losses
    (the novel's, and each other validation set's: French), extraction of the training text and of
    the held-out control, the novel's lexicon per 1,000 words of its samples; the published pass
    marked. Beneath it, the sizes of the measure and the rule that picked the pass."""
    records, published, rule = passes(project, stage)
    if not records:
        return no_passes(project, stage)
    measured = (read_json(stages.folder(project, stage) / "settings.json") or {}).get("dial", {})
    others = [d for d in by_validation_set(records[0]["validation_loss"], "eval_") if d != stages.NOVEL_DATA]
    percent = lambda share: f"{100 * share:.1f}%"
    head = (["pass", "tokens seen", f"held-out loss: {stages.stage(stages.NOVEL_DATA).title} ↓"] +
            [f"held-out loss: {stages.stage(d).title}" for d in others] +
            ["extracted: training text ↓", "extracted: held-out (control)", "lexicon /1000 ↑"])
    lines = ["| " + " | ".join(head) + " |", "|:--|" + "--:|" * (len(head) - 1)]
    for record in records:
        losses, memorized = by_validation_set(record["validation_loss"], "eval_"), record["memorization"]
        lexicon = record.get("lexicon_per_1000")
        cells = ([f"**{record['pass']}** (published)" if record["pass"] == published else str(record["pass"]),
                  f"{record['tokens_seen']:,}", f"{losses[stages.NOVEL_DATA]:.4f}"] + [f"{losses[d]:.4f}" for d in others] +
                 [percent(memorized["train"]["extracted"]), percent(memorized["heldout"]["extracted"]),
                  "—" if lexicon is None else f"{lexicon:.1f}"])
        lines.append("| " + " | ".join(cells) + " |")
    sizes = (f"Recitation at {records[0]['memorization']['train']['positions']} positions of the training text and as many "
             f"of the held-out slice" + (f", each a {measured['prefix']}-token prefix and its true {measured['suffix']}-token "
                                         f"suffix" if "prefix" in measured else ""))
    picked = (f"; the rule: among the passes that reproduce at most {rule['max_extraction']:.0%} of the training positions "
              f"and whose held-out novel loss is within {rule['loss_tolerance']:.0%} of the lowest, the latest"
              if rule else "")
    return f"**{stages.label(stage)}**, {len(records)} passes of the novel\n\n" + "\n".join(lines) + f"\n\n{sizes}{picked}."


def plot_dial(project, stage):
    """Stage `stage`'s passes in two small panels: the held-out losses per pass, and how much of the
    training text each pass recites against the held-out control, with the rule's limit; the
    published pass marked in both."""
    import matplotlib.pyplot as plt
    records, published, rule = passes(project, stage)
    if not records:
        return None
    numbers = [r["pass"] for r in records]
    fig, (loss_ax, recite_ax) = plt.subplots(1, 2, figsize=(11, 3.4))
    losses = [by_validation_set(r["validation_loss"], "eval_") for r in records]
    for data in losses[0]:
        loss_ax.plot(numbers, [loss[data] for loss in losses], color=COLOURS.get(data), marker="o", ms=4,
                     label=f"held-out: {stages.stage(data).title}")
    extracted = {split: [100 * r["memorization"][split]["extracted"] for r in records] for split in ("train", "heldout")}
    recite_ax.plot(numbers, extracted["train"], color=COLOURS[stages.NOVEL_DATA], marker="o", ms=4, label="training text")
    recite_ax.plot(numbers, extracted["heldout"], color=COLOURS[stages.NOVEL_DATA], marker="o", ms=4, ls="--",
                   label="held-out slice (control)")
    limit = 100 * rule.get("max_extraction", 0)
    if limit:
        recite_ax.axhline(limit, color="black", lw=0.8, ls="-.", label=f"the rule's limit ({limit:g}%)")
    # Room above the rule's limit and the highest point; at least 0-1%, so that no recitation reads as a flat line at 0.
    recite_ax.set_ylim(0, 1.15 * max(2 * limit, *extracted["train"], *extracted["heldout"], 1))
    for ax in (loss_ax, recite_ax):
        ax.axvline(published, color="grey", ls=":", lw=1.2, label=f"published: pass {published}")
        ax.set(xlabel="pass", xticks=numbers)
        ax.legend(fontsize=8, loc="best")
    loss_ax.set(title=f"{stages.label(stage)}: held-out loss per pass", ylabel="loss (nats/token)")
    recite_ax.set(title="Recitation per pass", ylabel="suffixes reproduced exactly (%)")
    fig.tight_layout()
    return fig


def seed_test_blocks(project, stage, sampling, prompt=None, base_model=None):
    """The seed's own test at the first, the published and the last pass of `stage`, as Markdown
    blocks: what it is, then each pass's continuation of `prompt` as soon as it is written. Each
    pass is loaded as step 3's `--epoch` loads it (generation.load_stage), one model at a time, and
    continues the prompt with `sampling` (the same seed for every pass); a pass that cannot be loaded
    (its folder deleted) is its one line. Nothing for a stage without passes (dial_table says why)."""
    from chateau import generation
    prompt = prompt or generation.SEED_PROMPT
    records, published, _ = passes(project, stage)
    if not records:
        return
    shown = sorted({records[0]["pass"], published, records[-1]["pass"]})
    yield (f"The seed's own test: *{prompt.translate(MARKDOWN_SPECIAL)}* continued by {stages.label(stage)} at its first, "
           f"published and last pass ({', '.join(map(str, shown))}): {sampling.new_tokens} tokens, temperature "
           f"{sampling.temperature}, top-p {sampling.top_p}, repetition penalty {sampling.repetition_penalty}, "
           f"seed {sampling.seed} for each")
    model = None
    for number in shown:
        del model  # the previous pass's model goes before the next one loads
        model = None
        title = f"pass {number}" + (" (published)" if number == published else "")
        try:
            model, tokenizer = generation.load_stage(project, stage, base_model, epoch=number)
        except cli.StageError as missing:
            yield model_block(title, f"({missing.message})")
            continue
        yield model_block(title, generation.generate_from_prompts(model, tokenizer, sampling, [prompt])[0].strip())


# ---------------------------------------------------------------------------------------------
# Memory: the notebook holds no model between cells.

def release_memory():
    """Collect the models nothing refers to any more and hand PyTorch's cached GPU memory back to
    the card (PyTorch keeps freed blocks for reuse: a step training beside the notebook could not
    have them). Never starts CUDA just to do so."""
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


@contextlib.contextmanager
def models_released():
    """Around a cell that loads models: when it ends, also by an error or an interrupt, none of
    them stays in memory. An exception's traceback keeps the local variables of every function it
    ran through (a model among them) for as long as the kernel remembers the error: they are
    cleared, the traceback itself kept."""
    try:
        yield
    except BaseException as error:
        traceback.clear_frames(error.__traceback__)
        raise
    finally:
        release_memory()


# ---------------------------------------------------------------------------------------------
# Step 4 from the notebook.

def run_export(project, *flags, show=print):
    """Step 4 (4_export_gguf.py) as the terminal would run it, each line of its output shown as it
    comes (minutes on a real model), its errors among them; returns its exit status. An interrupt
    of the cell interrupts the step as Ctrl-C would."""
    script = Path(__file__).resolve().parents[1] / stages.script_of("4")
    command = [sys.executable, "-u", str(script), "--project-dir", str(project), *flags]
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, encoding="utf-8",
                          errors="replace", bufsize=1) as process:
        try:
            for line in process.stdout:
                show(line.rstrip("\n"))
        except BaseException:
            process.send_signal(signal.SIGINT)
            process.wait()
            raise
    return process.returncode


def exported_files(project):
    """{stage: [path]} of the files step 4 published (GGUF files, largest first, then the Modelfile)."""
    found = {}
    for stage in stages.EXPORTABLE:
        folder = stages.export_dir(project, stage)
        files = sorted((p for p in folder.glob("*.gguf") if not p.name.startswith(".")), key=lambda p: -p.stat().st_size)
        if files:
            found[stage] = files + [p for p in [folder / "Modelfile"] if p.exists()]
    return found


def size_text(n_bytes):
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n_bytes >= scale:
            return f"{n_bytes / scale:.{2 if unit == 'GiB' else 1}f} {unit}"
    return f"{n_bytes} bytes"


def check_cells(record):
    """(checked by, top-1 agreement, perplexity model -> file) of one file's record in export.json:
    llama.cpp's figures where it checked the file, else transformers' (the round trip)."""
    for engine, figures in (("llama.cpp", record.get("llama_cpp")), ("transformers", record.get("round_trip"))):
        if isinstance(figures, dict) and "perplexity_gguf" in figures:
            source, gguf = figures["perplexity_source"], figures["perplexity_gguf"]
            change = f"{(gguf - source) / source:+.2%}".replace("-0.00%", "+0.00%").replace("+0.00%", "±0.00%")
            return engine, f"{figures['top1_agreement']:.1%}", f"{source:.2f} → {gguf:.2f} ({change})"
    return ("not checked", "—", "—")


def export_table(project):
    """The files step 4 published, a Markdown table per exported stage: file, size, and how close
    it came to the model it was made from (export.json's figures); "" when there are none."""
    parts = []
    for stage, files in exported_files(project).items():
        record = read_json(stages.export_dir(project, stage) / "export.json") or {}
        rows = []
        for path in files:
            done = record.get(path.name, {})
            engine, top1, perplexity = check_cells(done) if path.suffix == ".gguf" else ("", "", "")
            stale = " (from a stale model)" if done.get("stale") else ""
            rows.append(f"| `{path.name}`{stale} | {size_text(path.stat().st_size)} | {engine} | {top1} | {perplexity} |")
        parts.append(f"**{stages.label(stage)}**, in `{stages.export_dir(project, stage)}`\n\n"
                     "| file | size | checked in | top-1 agreement | perplexity: model → file |\n"
                     "|:--|--:|:--|--:|--:|\n" + "\n".join(rows))
    if parts:
        parts.append("Measured on the novel's held-out text: top-1 agreement, how often the file's most likely next "
                     "token is the model's; perplexity, the model's and the file's.")
    return "\n\n".join(parts)


def llama_cpp_hint():
    """A line for the user when llama.cpp is missing here (its checks and q4_k_m need it), else None."""
    from chateau import llama_cpp_check
    if llama_cpp_check.available():
        return None
    return (f"llama.cpp is not installed here: the files are checked in transformers only and q4_k_m is not made. "
            f"Install it with `pip install {llama_cpp_check.PIN}` (it builds llama.cpp: 10-20 minutes); "
            f"the Docker image has it.")
