"""What is published says what it is: the model card step 4 writes beside the GGUF files
(README.md with the YAML front matter model hubs read), from the project's own records: the
lineage of the exported stage, the dial's pass and its memorization figures, the scoreboard's row
when there is one, how to run it, and its limits."""
import json
from pathlib import Path

from chateau import dial, downloads, generation, lineage, stages

TEXTS = ("Gallica's public-domain French books (PleIAs/French-PD-Books; public domain) and the French "
         "translation of Franz Kafka's *Das Schloss* (*Le Château*): Kafka's text is in the public domain; a "
         "translation carries its translator's rights where they still run; check them before you publish "
         "this model")


def front_matter(base, stage):
    lines = ["---", f"base_model: {base.repo}", "language:", "- fr", f"license: {base.license}  # the base model's; "
             "the training texts' terms are in the card", "datasets:", f"- {downloads.CORPUS_REPO}", "tags:",
             "- gguf", "- llama.cpp", "- french", "- kafka", "- literary", f"- stage-{stage}",
             "pipeline_tag: text-generation", "---"]
    return "\n".join(lines)


def card(project, stage, name, files, epoch=0):
    """The model card's text for stage `stage` of `project` (a workspace: its base's) exported as
    `files` ([(file name, MiB)])."""
    metrics = lineage.read_metrics(project, stage) or {}
    folder = stages.base_of(project)
    base = downloads.base_of_folder(folder) or downloads.Base(repo=Path(folder).name, folder=folder, license="other",
                                                              path="", download_gb=0, why="")
    path = " → ".join([base.repo, *[stages.label(s) for s in stages.path_to(stage)]])
    out = [front_matter(base, stage), "", f"# {name}: {stages.label(stage)}", "",
           f"A French literary completion model imprinted on Kafka's *Le Château*, made by the Kafka-trained "
           f"LLM pipeline. Lineage: {path}.", "", f"Trained on: {TEXTS}.", "", "## Files", "",
           *[f"- `{file}` ({mib} MiB)" for file, mib in files], ""]
    records = metrics.get("passes")
    if records:
        number = epoch or metrics.get("published_pass")
        chosen = next(r for r in records if r["pass"] == number)
        train, held = chosen["memorization"]["train"], chosen["memorization"]["heldout"]
        out += ["## The imprint dial", "",
                f"The novel was trained in {len(records)} passes, each measured; this is **{dial.which_pass(project, stage, epoch)}** "
                f"(rule: extraction ≤ {metrics['dial']['max_extraction']:.0%} of the training positions, held-out loss within "
                f"{metrics['dial']['loss_tolerance']:.0%} of the lowest; the latest such pass).", "",
                "| pass | held-out novel loss | training text extracted | held-out extracted | tokens agreed (of the suffix) |",
                "|---|---|---|---|---|",
                *[f"| {r['pass']}{' ←' if r['pass'] == number else ''} | {dial.novel_loss(r):.3f} | "
                  f"{100 * r['memorization']['train']['extracted']:.1f}% | {100 * r['memorization']['heldout']['extracted']:.1f}% | "
                  f"{r['memorization']['train']['agreed_tokens']:.1f} |" for r in records], "",
                f"Memorization of this pass: given {chosen['memorization']['train']['positions']} prefixes of the novel's "
                f"training text, greedy decoding reproduced the true continuation exactly {100 * train['extracted']:.1f}% of "
                f"the time ({train['agreed_tokens']:.1f} tokens agreed on average before the first difference); on pages it "
                f"never saw, {100 * held['extracted']:.1f}%.", ""]
    board = stages.folder(project, "3") / "scoreboard.json"
    row = next((r for r in json.loads(board.read_text()).get("rows", []) if r.get("stage") == stage), None) \
        if board.exists() else None
    if row:
        shown = {k: row[k] for k in ("novel_perplexity", "french_perplexity", "lexicon_per_1000", "copied_8gram_share",
                                     "next_passage", "told_apart") if k in row}
        out += ["## Scoreboard (output/scoreboard.json)", "", *[f"- {k}: {v}" for k, v in shown.items()], ""]
    first = files[0][0] if files else f"{name}-q8_0.gguf"
    sampling, prompt = generation.Sampling(), generation.SEED_PROMPT  # the project's sampling settings and the seed's test
    out += ["## Run it", "",
            f"- llama.cpp: `llama-cli -m {first} --temp {sampling.temperature} --top-p {sampling.top_p} --repeat-penalty "
            f"{sampling.repetition_penalty} -n {generation.SEED_TEST_TOKENS} -p \"{prompt}\"`",
            f"- Ollama: `ollama create {name} -f Modelfile`, then `ollama run {name} \"{prompt}\"`",
            "- LM Studio: open the `.gguf` file.", "",
            "## Limits", "",
            "- A completion model, not a chat model: give it prose to continue, not a question.",
            "- It writes in the register of its training texts: nineteenth-century French books and one novel; it knows "
            "nothing after them and invents freely.",
            "- It can reproduce passages of the novel it was trained on: the memorization figures above are measured, "
            "not estimated. Do not use it to reproduce the book.", ""]
    return "\n".join(out)
