"""The imprint dial: a stage that trains on the novel (2c, 2d: its row's data is the novel) trains
in passes, each pass measured at its end, and publishes the pass at the edge of overfitting.

A pass is every training token of the novel seen once: step 1c's windows overlap (2048 tokens,
stride 512: each token in four of them), so the recipe rebuilds the novel's training text from them
(chateau/windows.py) and cuts it into consecutive samples of the stage's length; `--epochs N`
trains N passes (the Trainer's epochs over those samples). At the end of each pass, on the main
process: the held-out novel and French losses (what is gained, what the imprint costs),
memorization of the training text (chateau/memorization.py: greedy extraction of a 50-token suffix
from a 50-token prefix, the tokens agreed before the first difference, the teacher-forced
probability of the suffix; the same on the held-out slice as the control), and style on a few
samples (the novel's lexicon per 1,000 words, the share of 8-grams copied from the novel). One
record per pass in passes.json, and the pass's weights in passes/pass-N/ (an adapter: megabytes; a
full model: 2.2 GB per pass for TinyLlama in bf16).

The rule (`choose`, its thresholds are settings): validation loss alone cannot say when an
imprint turns into recitation (memorization grows log-linearly with repetitions while the held-out
loss can still fall; Carlini et al. 2023, Tirumala et al. 2022). So among the passes that recite
at most `--dial-max-extraction` of the training positions and whose held-out novel loss is within
`--dial-loss-tolerance` of the lowest any pass reached, the latest: the most imprinted pass that
still imitates rather than recites and still generalizes to pages it never saw. When no pass
qualifies, the pass that recites least (the earliest among equals). The chosen pass is the
stage's published model (its weights in the stage folder, merged for a merged stage): step 3,
step 4, the scoreboard and the notebook use it without being told.

    python -m chateau.dial --stage 2d                  # the passes, their figures, the chosen one
    python -m chateau.dial --stage 2d --pass-number 7   # publish pass 7 instead (outputs made from
                                                        # the previous choice are then stale)
"""
import dataclasses
import json
import math
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from chateau import lineage, stages
from chateau.cli import StageError, parse_settings, positive, run, say, setting, write_atomic

PASSES_DIR = "passes"
RECORDS = "passes.json"


@dataclass
class DialSettings:
    """How each pass is measured, and the rule's thresholds (a train step's `--dial-*` flags)."""
    positions: int = setting(64, "memorization positions per pass, on the training text and on the held-out slice")
    prefix: int = setting(50, "tokens of prefix a memorization position gives the model")
    suffix: int = setting(50, "tokens of true suffix it must reproduce")
    samples: int = setting(4, "samples generated per pass for the style measures (lexicon, copying; 0 = none)")
    sample_tokens: int = setting(128, "tokens per style sample")
    max_extraction: float = setting(0.01, "the rule: a pass that reproduces more than this share of the training positions recites")
    loss_tolerance: float = setting(0.03, "the rule: a pass whose held-out novel loss exceeds the lowest by more than this fraction no longer generalizes")

    def problems(self, prefix="dial-"):
        out = [f"--{prefix}{p[2:]}" for p in positive(self, "positions", "prefix", "suffix", "sample_tokens")]
        if self.samples < 0:
            out.append(f"--{prefix}samples must be >= 0 (got {self.samples})")
        for name in ("max_extraction", "loss_tolerance"):
            if not 0 <= getattr(self, name) <= 1:
                out.append(f"--{prefix}{name.replace('_', '-')} must be in [0, 1] (got {getattr(self, name)})")
        return out


def is_dialled(name):
    """Whether stage `name` trains on the novel in passes (its row's data is the novel)."""
    return name in stages.STAGES and stages.STAGES[name].kind == "train" and stages.STAGES[name].data == stages.NOVEL_DATA


DIALLED = ", ".join(s.name for s in stages.TABLE if is_dialled(s.name))  # "2c, 2d, 2f": for messages


def pass_dir(project, name, number):
    return stages.folder(project, name) / PASSES_DIR / f"pass-{number}"


def read_records(folder):
    path = Path(folder) / RECORDS
    return json.loads(path.read_text()) if path.exists() else []


def novel_loss(record):
    return record["validation_loss"][f"eval_{stages.stage(stages.NOVEL_DATA).run_name}_loss"]


def choose(records, max_extraction, loss_tolerance):
    """The pass number the rule picks (see the module's docstring: the one place it is stated)."""
    if not records:
        return None
    lowest = min(novel_loss(r) for r in records)
    fit = [r for r in records if r["memorization"]["train"]["extracted"] <= max_extraction
           and novel_loss(r) <= lowest * (1 + loss_tolerance)]
    if fit:
        return max(fit, key=lambda r: r["pass"])["pass"]
    return min(records, key=lambda r: (r["memorization"]["train"]["extracted"], r["pass"]))["pass"]


def pass_samples(dataset, manifest, sample_tokens):
    """One pass over the novel: its training text, rebuilt from 1c's windows, in consecutive
    samples of `sample_tokens` (0: 1c's window length). A Dataset of prepared rows."""
    from datasets import Dataset
    from chateau import prepared, windows
    s = manifest["settings"]
    stream = windows.novel_train_stream(dataset[prepared.INPUT_IDS], manifest["counts"]["tokens"], s["seq_len"],
                                        s["stride"], s["validation_fraction"], s["seed"])
    if stream is None:
        raise StageError(f"the novel's training windows do not match the settings in {stages.folder('', stages.NOVEL_DATA)}'s "
                         f"manifest: prepare it again (`python {stages.script_of(stages.NOVEL_DATA)} --overwrite`)")
    return Dataset(prepared.windows_table(windows.one_pass(stream, sample_tokens or s["seq_len"])))


def link_or_copy(source, target):
    """`target` becomes `source`'s content: a hard link where the disk allows (no second 2.2 GB)."""
    target.unlink(missing_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def publish(project, name, number, metrics):
    """Pass `number`'s weights become stage `name`'s published model (the files the stage folder
    holds), and `metrics` says so: published_pass, and the chosen pass's validation losses as the
    stage's end losses (what later steps read). Returns the keys it set."""
    folder, source = stages.folder(project, name), pass_dir(project, name, number)
    record = next(r for r in metrics["passes"] if r["pass"] == number)
    for weights in source.glob("*.safetensors"):
        link_or_copy(weights, folder / weights.name)
    for config in ("adapter_config.json", "config.json", "generation_config.json"):
        if (source / config).exists():
            shutil.copy2(source / config, folder / config)
    changed = {"published_pass": number, "validation_loss_end": record["validation_loss"],
               "perplexity_end": math.exp(novel_loss(record))}
    metrics.update(changed)
    return changed


def callback(settings, project, name, tokenizer, train_data, eval_datasets, output_dir):
    """A TrainerCallback that, at the end of every pass (epoch), on the main process, measures the
    model and keeps its weights in passes/pass-N/, its record in passes.json."""
    import torch
    from transformers import TrainerCallback
    from chateau import generation, memorization, scoreboard, training

    class Measure(TrainerCallback):
        refs = None

        def on_epoch_end(self, args, state, control, model=None, **kwargs):
            if not state.is_world_process_zero:
                return
            number = math.ceil(state.epoch - 1e-6)
            dial = settings.dial
            was_training = model.training
            model.eval()
            losses = {f"eval_{k}_loss": round(training.validation_loss(model, v), 5) for k, v in eval_datasets.items()}
            held_out = next(iter(eval_datasets.values()))
            memo = memorization.measure(model, train_data, held_out, n=dial.positions, prefix=dial.prefix,
                                        suffix=dial.suffix, seed=settings.seed)
            record = {"pass": number, "epoch": round(state.epoch, 3), "step": state.global_step,
                      "tokens_seen": state.global_step * settings.tokens_per_step, "validation_loss": losses,
                      "memorization": {k: dataclasses.asdict(v) for k, v in memo.items()}}
            if dial.samples:
                self.refs = self.refs or scoreboard.references(project, tokenizer, dial.samples)
                sampling = dataclasses.replace(settings.sample, new_tokens=dial.sample_tokens)
                with torch.random.fork_rng(devices=[model.device] if model.device.type == "cuda" else []):
                    torch.manual_seed(settings.sample.seed + number)
                    texts = generation.generate_from_prompts(model, tokenizer, sampling, self.refs.prompts[:dial.samples])
                record.update({"lexicon_per_1000": round(scoreboard.lexicon_rate(texts, self.refs.lexicon), 2),
                               "copied_8gram_share": round(scoreboard.copied_share(texts, self.refs.novel_words), 4),
                               "sample": texts[0]})
            model.train(was_training)
            keep = pass_dir(project, name, number)
            shutil.rmtree(keep, ignore_errors=True)
            model.save_pretrained(keep)
            if not stages.is_adapter(name) and stages.stage(name).produces == stages.FULL_MODEL:
                tokenizer.save_pretrained(keep)
            records = [r for r in read_records(output_dir) if r["pass"] != number] + [record]
            write_atomic(Path(output_dir) / RECORDS, json.dumps(sorted(records, key=lambda r: r["pass"]), indent=2,
                                                                 ensure_ascii=False) + "\n")
            train_memo = memo["train"]
            say(f"{name}: pass {number}: held-out novel loss {novel_loss(record):.4f}, training text extracted "
                f"{100 * train_memo.extracted:.1f}% (held-out {100 * memo['heldout'].extracted:.1f}%), "
                f"{train_memo.agreed_tokens:.1f} tokens agreed" +
                (f", lexicon {record['lexicon_per_1000']}/1000" if "lexicon_per_1000" in record else ""))

    return Measure()


def prepare_run(settings, project, name, train_data, tokenizer, eval_datasets, sample_tokens=0):
    """For a stage trained in passes: (one pass of the novel as its training samples, the callback
    that measures each pass, what publishes the chosen pass before the stage is finished); for
    any other stage, what it had and nothing more."""
    if not is_dialled(name):
        return train_data, [], None
    from chateau import prepared
    manifest = prepared.read_manifest(stages.folder(project, stages.stage(name).data))
    samples = pass_samples(train_data, manifest, sample_tokens)
    measure = callback(settings, project, name, tokenizer, samples, eval_datasets, stages.folder(project, name))
    return samples, [measure], lambda trainer, metrics: finish(project, name, settings.dial, metrics)


def finish(project, name, dial, metrics):
    """Once training ends: every pass's record joins metrics.json, the rule picks one, and its
    weights are published. Returns what joins the metrics."""
    records = read_records(stages.folder(project, name))
    if not records:
        return {}
    metrics["passes"] = records
    number = choose(records, dial.max_extraction, dial.loss_tolerance)
    changed = publish(project, name, number, metrics)
    say(f"{name}: the dial picks pass {number} of {len(records)} (training text extracted "
        f"{100 * next(r for r in records if r['pass'] == number)['memorization']['train']['extracted']:.1f}%, "
        f"rule: extraction <= {dial.max_extraction:.0%}, held-out loss within {dial.loss_tolerance:.0%} of the lowest)")
    return {"passes": records, "dial": {"max_extraction": dial.max_extraction, "loss_tolerance": dial.loss_tolerance},
            **changed}


def which_pass(project, name, epoch=0):
    """What a consumer of stage `name` reads, in words: "pass 7 of 10 (the dial's pick)", or ""
    for a stage not trained in passes."""
    metrics = lineage.read_metrics(project, name) or {}
    records = metrics.get("passes")
    if not records:
        return ""
    number = epoch or metrics.get("published_pass")
    return f"pass {number} of {len(records)}" + (" (the dial's pick)" if number == metrics.get("published_pass")
                                                   else " (--epoch: not the published pass)")


def made_from(project, name):
    """The outputs made from stage `name`'s published model: its continuation, its GGUF export."""
    return [p for p in [stages.folder(project, "3") / f"continuation_{name}.md", stages.export_dir(project, name)]
            if p.exists()]


@dataclass
class Settings:
    project_dir: str = setting("", "project folder (default: $KAFKA_PROJECT_DIR or /project)")
    base_model: str = setting(stages.BASE_MODEL, stages.BASE_MODEL_HELP)
    stage: str = setting("2d", f"a finished stage trained in passes: {DIALLED}")
    pass_number: int = setting(0, "publish this pass (0: the rule's pick, with the thresholds below)")
    max_extraction: float = setting(-1.0, "the rule's threshold (-1: the one the stage was trained with)")
    loss_tolerance: float = setting(-1.0, "the rule's threshold (-1: the one the stage was trained with)")

    def problems(self):
        return [] if is_dialled(self.stage) else [f"--stage {self.stage} is not trained in passes of the novel"]


def main(argv=None):
    settings = parse_settings(Settings, argv, description=__doc__)
    project = stages.workspace_of(settings)  # the stages of --base-model
    name = settings.stage
    metrics = lineage.read_metrics(project, name)
    if not metrics or not metrics.get("passes"):
        raise StageError(f"step {name} is not finished, or was trained without passes: {stages.stage(name).hint()}")
    records = metrics["passes"]
    for r in records:
        print(f"pass {r['pass']:>3}  held-out novel loss {novel_loss(r):.4f}  extracted {100 * r['memorization']['train']['extracted']:5.1f}%"
              f" (held-out {100 * r['memorization']['heldout']['extracted']:.1f}%)  lexicon {r.get('lexicon_per_1000', '-')}"
              + ("  <- published" if r["pass"] == metrics.get("published_pass") else ""))
    rule = metrics.get("dial", {})
    extraction = settings.max_extraction if settings.max_extraction >= 0 else rule.get("max_extraction", 0.01)
    tolerance = settings.loss_tolerance if settings.loss_tolerance >= 0 else rule.get("loss_tolerance", 0.03)
    number = settings.pass_number or choose(records, extraction, tolerance)
    if number not in [r["pass"] for r in records]:
        raise StageError(f"--pass-number {number}: {name} has passes {', '.join(str(r['pass']) for r in records)}")
    if number == metrics.get("published_pass"):
        say(f"{name}: pass {number} is already the published one: nothing changed")
        return
    folder, before = stages.folder(project, name), metrics.get("published_pass")
    with lineage.StageLock(folder, name):
        publish(project, name, number, metrics)
        if stages.stage(name).produces == stages.MERGED:
            from chateau import qlora
            metrics.update(qlora.merge(project, name))
        metrics["weights"] = lineage.weights_digests(folder)
        write_atomic(folder / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    say(f"{name}: pass {number} is now the published model (was pass {before})")
    for output in made_from(project, name):
        print(f"stale: {output} was made from the previous pass: rerun "
              f"{'step 3' if output.suffix == '.md' else 'step 4 with --overwrite'}", file=sys.stderr)


if __name__ == "__main__":
    run(main)
