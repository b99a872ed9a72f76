"""The notebook's views of the project: each stage's curves from the TensorBoard logs under runs/
(read as they are written, so they work while a stage is still training), the curriculum's
story on one axis of tokens seen, a line per stage from its metrics.json, the samples each stage
wrote while training, the scoreboard's new measures as a plot, and the exported files."""
import json
import logging
import math
import os
import warnings

from chateau import stages

# One colour per validation set, the same in every plot (by prepare stage); training loss in black.
COLOURS = dict(zip(stages.PREPARE_STAGES, ("tab:blue", "tab:green", "tab:red", "tab:purple", "tab:orange")))
# Characters that Markdown would read as markup in a model's text: escaped wherever text is shown.
MARKDOWN_SPECIAL = str.maketrans({c: "\\" + c for c in "\\`*_{}[]<>#|"})
SMOOTH_ABOVE = 30  # logged training-loss points beyond which the curve is smoothed (the raw one stays, faint)

# Warnings the libraries print for their own deprecations, not the user's doing: kept out of the
# notebook's output (each a message pattern, matched from the start).
KNOWN_WARNINGS = (
    "IProgress not found",                       # tqdm in Jupyter without ipywidgets: the bars are off anyway
    "`gradient_checkpointing_kwargs` is deprecated", "`gradient_checkpointing_enable` is deprecated",
    "`is_gradient_checkpointing` is deprecated",  # transformers 5 renamed these; peft still calls them
    "builtin type swig",                          # pymupdf's SWIG bindings under Python 3.11+
)


def quiet():
    """The notebook's output without the libraries' noise: no progress bars (transformers'
    "Loading weights", datasets', the hub's) and none of the known deprecation warnings above.
    Call it before importing them: the bars read their switches at import."""
    os.environ["TQDM_DISABLE"] = "1"
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    for message in KNOWN_WARNINGS:
        warnings.filterwarnings("ignore", message=message)
    # bitsandbytes on CPU logs that an optional faster kernel (the `kernels` package) is absent;
    # its own CPU path runs without it, and on a GPU the message never comes.
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)


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


def validation_curves(scalars):
    """{prepare stage: [(step, loss)]} of every validation set in a stage's logs."""
    by_run = {stages.stage(s).run_name: s for s in stages.PREPARE_STAGES}
    return {by_run[tag[len("eval/"):-len("_loss")]]: points for tag, points in scalars.items()
            if tag.startswith("eval/") and tag.endswith("_loss") and tag[len("eval/"):-len("_loss")] in by_run}


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
    next-passage accuracy (chance 1/6) and the blind discriminator (0.5: it cannot tell)."""
    import matplotlib.pyplot as plt
    rows = board["rows"]
    if not rows:
        return None
    fig, (passage_ax, told_ax) = plt.subplots(1, 2, figsize=(11, 3.4))
    names = [r["stage"] for r in rows]
    for ax, key, title in ((passage_ax, "next_passage", "next passage ↑ (chance 1/6)"),
                           (told_ax, "told_apart", "told apart from the novel ↓ (0.5: cannot)")):
        for i, row in enumerate(rows):
            if row.get(key) is not None:
                low, high = row[key + "_95"]
                ax.errorbar(i, row[key], yerr=[[row[key] - low], [high - row[key]]], fmt="o", color="tab:red" if i else "grey", capsize=4)
        ax.axhline(1 / 6 if key == "next_passage" else 0.5, color="grey", ls="--", lw=0.8)
        ax.set(title=title, ylim=(0, 1.05), xticks=range(len(rows)), xticklabels=names)
    novel = next((r for r in board["references"] if r["stage"] == "(novel)"), None)
    if novel and novel.get("told_apart") is not None:
        told_ax.axhline(novel["told_apart"], color="tab:blue", ls=":", lw=1, label="the novel's two halves")
        told_ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def quote(text):
    """Generated text as a Markdown block quote, its paragraphs kept and nothing in it read as
    Markdown or HTML (a model may write `*`, `#` or `<`)."""
    paragraphs = [" ".join(p.split()).translate(MARKDOWN_SPECIAL) for p in text.split("\n") if p.strip()]
    return "\n>\n".join(f"> {p}" for p in paragraphs) or "> (empty)"


def side_by_side_block(stage, text):
    """One block of "trying the models": the prompt, or a stage's continuation under its name."""
    if stage == "prompt":
        return f"**Prompt**, a passage of the novel's held-out slice:\n\n{quote(text)}"
    return f"**{stages.label(stage)}**\n\n{quote(text)}"


def continuation_markdown(path):
    """A continuation file (output/continuation_*.md) for reading: its settings folded away, its text quoted."""
    header, _, body = path.read_text().partition("\n---\n")
    return (f"**{path.name}**\n\n<details><summary>settings</summary>\n\n{header.strip()}\n\n</details>\n\n"
            f"{quote(body)}")


def exported_files(project):
    """[(path, MiB)] of every GGUF file step 4 wrote, with the Modelfiles beside them."""
    return [(path, round(path.stat().st_size / 2**20, 1))
            for stage in stages.EXPORTABLE for path in sorted(stages.export_dir(project, stage).glob("*"))
            if path.suffix == ".gguf" or path.name == "Modelfile"]


def run_export(project, *flags):
    """Step 4 (4_export_gguf.py) as the terminal would run it; returns its output."""
    import subprocess
    import sys
    from pathlib import Path
    script = Path(__file__).resolve().parents[1] / stages.script_of("4")
    out = subprocess.run([sys.executable, str(script), "--project-dir", str(project), *flags], text=True, capture_output=True)
    return out.stdout + out.stderr
