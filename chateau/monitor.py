"""Section 2 of the notebook: each stage's curves (training and validation loss, learning rate)
from the TensorBoard logs under runs/, and its latest generated samples. Reads the logs as they
are written, so it works while a stage is still running."""
import json

from chateau import stages


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


def plot_stages(project, train_stages=stages.TRAIN_STAGES):
    """One row per stage with logs: losses (training and every validation set) and learning rate."""
    import matplotlib.pyplot as plt
    logged = {s: read_scalars(project / "runs" / stages.stage(s).run_name) for s in train_stages}
    logged = {s: v for s, v in logged.items() if v}
    if not logged:
        print("no training logs yet under", project / "runs")
        return None
    fig, axes = plt.subplots(len(logged), 2, figsize=(12, 3.5 * len(logged)), squeeze=False)
    for (stage, scalars), (loss_ax, lr_ax) in zip(logged.items(), axes):
        for tag, points in scalars.items():
            if tag == "train/loss" or (tag.startswith("eval/") and tag.endswith("_loss")):
                loss_ax.plot(*zip(*points), label=tag.replace("eval/", "validation ").replace("_loss", ""),
                             marker="o" if tag.startswith("eval/") else None)
        loss_ax.set(title=f"{stage}: loss", xlabel="step", ylabel="loss")
        loss_ax.legend(fontsize=8)
        if "train/learning_rate" in scalars:
            lr_ax.plot(*zip(*scalars["train/learning_rate"]))
        lr_ax.set(title=f"{stage}: learning rate", xlabel="step")
    fig.tight_layout()
    return fig


def latest_samples(project, train_stages=stages.TRAIN_STAGES, n=1):
    """{stage: [(step, text), ...]}: the last `n` samples each stage generated while training."""
    out = {}
    for stage in train_stages:
        path = stages.folder(project, stage) / "samples.jsonl"
        if path.exists():
            rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
            out[stage] = [(r["step"], r["text"]) for r in rows[-n:]]
    return out


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
