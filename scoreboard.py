"""The scoreboard: did each stage move the model the way it should?

One row per stage (base, 2a, 2b, 2c): Kafka validation perplexity (should fall at 2c), French
validation perplexity (should fall at 2a/2b, and not rise much at 2c), and over N generated
samples: the rate of the novel's own names and words, the rate of artifacts (page numbers,
running headers, source lines: should be ~0 everywhere) and distinct-2 (repetition: higher is
more varied). Saved as output/scoreboard.json and .csv.
"""
import csv
import json
import math
import re

import torch

import common
import generation
from cleaning import GALLICA_SOURCE, is_page_number

# The novel's own names and words (French translation): a model imprinted on it uses them.
KAFKA_WORDS = (
    "k.", "frieda", "klamm", "barnabé", "olga", "amalia", "pepi", "arpenteur", "château", "village", "auberge",
    "aubergiste", "maire", "instituteur", "secrétaire", "messager", "aides", "arthur", "jérémie", "sortini",
    "sordini", "momus", "bürgel", "erlanger", "gardena", "hans", "brunswick", "westwest", "lasemann", "schwarzer",
    "gisa", "fonctionnaire", "fonctionnaires", "neige", "comte", "valets",
)
RUNNING_HEADS = re.compile(r"\b(?:LE CHÂTEAU|FRANZ KAFKA|KAFKA)\b")
INLINE_PAGE_NUMBER = re.compile(r"[-–—\[(]\s*\d{1,4}\s*[-–—\])]")
# The novel spells its numbers out: a digit in generated prose is almost always a page number.
DIGITS = re.compile(r"\b\d+\b")


def kafka_word_rate(texts):
    """Occurrences of the novel's names and words per 1,000 words."""
    tokens = [w for t in texts for w in re.findall(r"k\.|[a-zà-ÿœæ]+", t.lower())]
    hits = sum(w in KAFKA_WORDS for w in tokens)
    return 1000 * hits / max(1, len(tokens))


def artifact_rate(texts):
    """Page numbers, running headers and source lines per 1,000 words."""
    hits, total = 0, 0
    for text in texts:
        total += len(text.split())
        for line in text.splitlines():
            if line.strip() and (is_page_number(line) or GALLICA_SOURCE.search(line)):
                hits += 1
                continue
            hits += len(RUNNING_HEADS.findall(line)) + len(INLINE_PAGE_NUMBER.findall(line))
            hits += len(DIGITS.findall(INLINE_PAGE_NUMBER.sub(" ", line)))
    return 1000 * hits / max(1, total)


def distinct_n(texts, n=2):
    """Distinct n-grams / all n-grams over the words of the samples (1.0: no repetition)."""
    grams = [tuple(ws[i:i + n]) for t in texts for ws in [t.split()] for i in range(len(ws) - n + 1)]
    return len(set(grams)) / max(1, len(grams))


def perplexity(model, dataset, batch_size=4, max_samples=64):
    """exp(mean token loss) over the first `max_samples` rows of a prepared validation split."""
    losses, count = 0.0, 0
    rows = dataset.select(range(min(max_samples, len(dataset))))["input_ids"]
    with torch.no_grad():
        for i in range(0, len(rows), batch_size):
            ids = torch.tensor(rows[i:i + batch_size], device=model.device)
            tokens = ids[:, 1:].numel()
            losses += model(input_ids=ids, labels=ids).loss.float().item() * tokens
            count += tokens
    return math.exp(losses / max(1, count))


def build(project, stages=generation.STAGES, n_samples=8, sampling=None, max_eval_samples=64):
    """Score every stage whose model exists; write output/scoreboard.{json,csv}; return the rows."""
    from datasets import load_from_disk
    sampling = sampling or generation.Sampling(new_tokens=200)
    kafka = load_from_disk(str(project / common.DATA["1c"]))["validation"]
    french = load_from_disk(str(project / common.DATA["1b"]))["validation"]
    rows = []
    for stage in stages:
        try:
            model, tokenizer = generation.load_stage(project, stage)
        except common.StageError:
            continue  # not trained yet
        texts = generation.generate_text(model, tokenizer, sampling, n=n_samples)
        rows.append({
            "stage": stage,
            "kafka_perplexity": round(perplexity(model, kafka, max_samples=max_eval_samples), 2),
            "french_perplexity": round(perplexity(model, french, max_samples=max_eval_samples), 2),
            "kafka_words_per_1000": round(kafka_word_rate(texts), 2),
            "artifacts_per_1000": round(artifact_rate(texts), 2),
            "distinct_2": round(distinct_n(texts), 3),
            "samples": n_samples,
        })
        del model
    out = project / "output"
    out.mkdir(parents=True, exist_ok=True)
    (out / "scoreboard.json").write_text(json.dumps(rows, indent=2, ensure_ascii=False) + "\n")
    with (out / "scoreboard.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["stage"])
        writer.writeheader()
        writer.writerows(rows)
    return rows


def format_table(rows):
    if not rows:
        return "(no stage trained yet)"
    keys = list(rows[0])
    widths = [max(len(k), *(len(str(r[k])) for r in rows)) for k in keys]
    lines = ["  ".join(k.ljust(w) for k, w in zip(keys, widths))]
    lines += ["  ".join(str(r[k]).ljust(w) for k, w in zip(keys, widths)) for r in rows]
    return "\n".join(lines)


if __name__ == "__main__":
    import sys
    print(format_table(build(common.project_dir(sys.argv[1] if len(sys.argv) > 1 else ""))))
