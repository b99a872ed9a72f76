"""The scoreboard: did each stage move the model the way it should, and did 2c learn the novel's
world and voice rather than recite it?

One row per finished stage (base, 2a, 2b, 2c), every figure measured the same way for each:
- perplexity on the novel's held-out slice (should fall at 2c) and on held-out French books
  (should fall at 2a/2b, and not rise much at 2c);
- over N samples, each continuing a different passage of the novel's held-out slice:
  - `lexicon_per_1000`: the novel's own lexicon (its most characteristic words and names against
    the French corpus, by weighted log-odds, derived from the novel itself) per 1,000 words;
  - `copied_8gram_share`: the share of generated word 8-grams found in the novel's text, and
    `longest_copy_words`, the longest copied run of words (a model that recites the book has
    not learned to continue it);
  - `delta_novel`, `delta_french`: Burrows' Delta over the French corpus's most frequent words
    between the samples and the novel's held-out slice, and held-out French (lower = closer);
  - artifacts (page numbers, running heads, source lines) per 1,000 words, distinct-2.
Saved as output/scoreboard.json (rows, references, the lexicon) and output/scoreboard.csv.
"""
import csv
import json
import math
import re
from collections import Counter
from dataclasses import dataclass

import numpy as np

from chateau import generation, lineage, models, prepared, stages
from chateau.cleaning import GALLICA_SOURCE, is_page_number
from chateau.cli import StageError, parse_settings, positive, project_dir, run, setting

WORD = re.compile(r"[^\W\d_]+")  # letters only: "l'auberge" -> "l", "auberge"
LEXICON_SIZE = 100    # the novel's most characteristic words
LEXICON_MIN_COUNT = 5  # ... among those it uses at least this often (one-off words say nothing of style)
PRIOR_WEIGHT = 500    # total pseudo-counts of the log-odds prior (Monroe et al. 2008: a weak, informative prior)
MFW = 150             # Burrows' Delta over the corpus's 150 most frequent words (mostly function words)
COPY_N = 8            # word n-grams that count as copied (8 words are almost never shared by chance)
INLINE_PAGE_NUMBER = re.compile(r"[-–—\[(]\s*\d{1,4}\s*[-–—\])]")
# Novels in print spell numbers out: a digit in generated prose is almost always a page number.
DIGITS = re.compile(r"\b\d+\b")


def words(text):
    return WORD.findall(text.lower())


# ---------------------------------------------------------------------------------------------
# The novel's lexicon.

def characteristic_words(novel_words, corpus_words, size=LEXICON_SIZE, min_count=LEXICON_MIN_COUNT, prior=PRIOR_WEIGHT):
    """The `size` words most characteristic of the novel against the corpus: the log-odds ratio of
    a word's rate in the novel and in the corpus, smoothed by an informative Dirichlet prior
    (Monroe, Colaresi & Quinn 2008) so that rare words do not win by chance. Ranked by the
    log-odds itself (the effect size), not its z-score, which would favour frequent function
    words whose rate differs a little: what comes first is the novel's names and own nouns."""
    novel, corpus = Counter(novel_words), Counter(corpus_words)
    n_novel, n_corpus = sum(novel.values()), sum(corpus.values())
    both = n_novel + n_corpus
    scores = {}
    for word, count in novel.items():
        if count < min_count:
            continue
        alpha = prior * (count + corpus[word]) / both
        scores[word] = (math.log((count + alpha) / (n_novel + prior - count - alpha))
                        - math.log((corpus[word] + alpha) / (n_corpus + prior - corpus[word] - alpha)))
    return sorted(scores, key=lambda w: (-scores[w], w))[:size]


def lexicon_rate(texts, lexicon):
    """Occurrences of the lexicon's words per 1,000 words."""
    lexicon = set(lexicon)
    tokens = [w for t in texts for w in words(t)]
    return 1000 * sum(w in lexicon for w in tokens) / max(1, len(tokens))


# ---------------------------------------------------------------------------------------------
# Verbatim copying.

def ngrams(tokens, n=COPY_N):
    return [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]


def copied_share(texts, source_words, n=COPY_N):
    """Share of the texts' word n-grams that occur in the source (0: nothing recited)."""
    source = set(ngrams(source_words, n))
    grams = [g for t in texts for g in ngrams(words(t), n)]
    return sum(g in source for g in grams) / max(1, len(grams))


def longest_copy(texts, source_words, n=COPY_N):
    """The longest run of words of any text found verbatim in the source (0 when no n-gram is)."""
    starts = {}
    for i, gram in enumerate(ngrams(source_words, n)):
        starts.setdefault(gram, []).append(i)
    best = 0
    for text in texts:
        tokens = words(text)
        for i, gram in enumerate(ngrams(tokens, n)):
            for j in starts.get(gram, ()):
                length = n
                while i + length < len(tokens) and j + length < len(source_words) and tokens[i + length] == source_words[j + length]:
                    length += 1
                best = max(best, length)
    return best


# ---------------------------------------------------------------------------------------------
# Style distance.

def most_frequent_words(corpus_words, n=MFW):
    return [w for w, _ in Counter(corpus_words).most_common(n)]


def relative_frequencies(tokens, vocabulary):
    counts = Counter(tokens)
    return np.array([counts[w] for w in vocabulary], dtype=float) / max(1, len(tokens))


def burrows_delta(text_a, text_b, reference_chunks, vocabulary):
    """Burrows' Delta (2002): the mean absolute difference of the two texts' z-scored relative
    frequencies of `vocabulary`, the z-scores taken over `reference_chunks` (lists of words: the
    corpus the distances are measured in). 0 = the same profile; ~1 and more = far apart."""
    table = np.stack([relative_frequencies(chunk, vocabulary) for chunk in reference_chunks])
    mean, std = table.mean(axis=0), table.std(axis=0, ddof=1)
    std[std == 0] = 1.0
    z = lambda tokens: (relative_frequencies(tokens, vocabulary) - mean) / std
    return float(np.abs(z(text_a) - z(text_b)).mean())


def chunks(tokens, size):
    return [tokens[i:i + size] for i in range(0, len(tokens) - size + 1, size)]


# ---------------------------------------------------------------------------------------------
# Artifacts, repetition, perplexity.

RUNNING_HEADS = re.compile(r"^[A-ZÀ-Ý .'’-]{6,}$")  # a line in capitals alone: a running head


def artifact_rate(texts):
    """Page numbers, running headers and source lines per 1,000 words."""
    hits, total = 0, 0
    for text in texts:
        total += len(text.split())
        for line in text.splitlines():
            if line.strip() and (is_page_number(line) or GALLICA_SOURCE.search(line) or RUNNING_HEADS.match(line.strip())):
                hits += 1
                continue
            hits += len(INLINE_PAGE_NUMBER.findall(line))
            hits += len(DIGITS.findall(INLINE_PAGE_NUMBER.sub(" ", line)))
    return 1000 * hits / max(1, total)


def distinct_n(texts, n=2):
    """Distinct n-grams / all n-grams over the words of the samples (1.0: no repetition)."""
    grams = [tuple(ws[i:i + n]) for t in texts for ws in [t.split()] for i in range(len(ws) - n + 1)]
    return len(set(grams)) / max(1, len(grams))


def perplexity(model, dataset, batch_size=4, max_samples=64):
    """exp(mean token loss) over the first `max_samples` rows of a prepared validation split."""
    from chateau.training import validation_loss
    return math.exp(validation_loss(model, dataset.select(range(min(max_samples, len(dataset)))), batch_size))


# ---------------------------------------------------------------------------------------------
# The texts every stage is measured against.

@dataclass
class References:
    """What the generations are compared with, all derived from the project's own data."""
    novel_words: list       # the novel's whole text (clean_text.txt)
    held_out_words: list    # the novel's held-out slice (1c validation)
    french_words: list      # held-out French books (1b validation, else 1a)
    corpus_words: list      # the French corpus (1a and 1b training samples)
    french_stage: str       # the prepare step whose validation split is the held-out French
    lexicon: list
    vocabulary: list        # the corpus's most frequent words, for Delta
    reference_chunks: list
    prompts: list           # passages of the held-out slice, one per sample


def decoded_words(tokenizer, dataset, max_rows):
    rows = dataset.select(range(min(max_rows, len(dataset))))["input_ids"]
    return words(generation.decode_rows(tokenizer, rows))


def references(project, tokenizer, n_prompts, chunk_words=1000, max_corpus_rows=2000):
    """The novel, its held-out slice, held-out French and the French corpus, as words; the
    novel's lexicon; Delta's vocabulary and reference chunks; the sample prompts."""
    from datasets import load_from_disk
    novel_dir = stages.folder(project, stages.NOVEL_DATA)
    if prepared.read_manifest(novel_dir) is None:
        raise StageError(f"the novel's prepared data is missing at {novel_dir}: {stages.stage(stages.NOVEL_DATA).hint()}")
    novel = load_from_disk(str(novel_dir))
    french_stage = next((s for s in stages.FRENCH_DATA if prepared.read_manifest(stages.folder(project, s))), None)
    if french_stage is None:
        raise StageError(f"no prepared French data ({' or '.join(stages.FRENCH_DATA)}): {stages.stage(stages.FRENCH_DATA[0]).hint()}")
    corpus = [w for s in stages.FRENCH_DATA if prepared.read_manifest(stages.folder(project, s))
              for w in decoded_words(tokenizer, load_from_disk(str(stages.folder(project, s)))["train"], max_corpus_rows)]
    novel_words = words((novel_dir / "clean_text.txt").read_text())
    held_out_words = decoded_words(tokenizer, novel["validation"], max_corpus_rows)
    vocabulary = most_frequent_words(corpus)
    size = min(chunk_words, max(50, len(held_out_words) // 2))
    return References(
        novel_words=novel_words, held_out_words=held_out_words,
        french_words=decoded_words(tokenizer, load_from_disk(str(stages.folder(project, french_stage)))["validation"], max_corpus_rows),
        corpus_words=corpus, french_stage=french_stage, lexicon=characteristic_words(novel_words, corpus), vocabulary=vocabulary,
        reference_chunks=chunks(corpus, size) + chunks(novel_words, size),
        prompts=generation.held_out_prompts(project, tokenizer, n_prompts),
    )


def score_texts(texts, refs):
    """Every text measure of one stage's samples (prompts excluded)."""
    generated = [w for t in texts for w in words(t)]
    return {
        "lexicon_per_1000": round(lexicon_rate(texts, refs.lexicon), 2),
        "copied_8gram_share": round(copied_share(texts, refs.novel_words), 4),
        "longest_copy_words": longest_copy(texts, refs.novel_words),
        "delta_novel": round(burrows_delta(generated, refs.held_out_words, refs.reference_chunks, refs.vocabulary), 3),
        "delta_french": round(burrows_delta(generated, refs.french_words, refs.reference_chunks, refs.vocabulary), 3),
        "artifacts_per_1000": round(artifact_rate(texts), 2),
        "distinct_2": round(distinct_n(texts), 3),
    }


FORMS = {stages.FULL_MODEL: "full model", stages.ADAPTER: "adapter on its base, unmerged",
         stages.MERGED: "merged model (merged/)"}


def form(stage):
    """Which form of a stage's model the scoreboard scored (the table says what it produces)."""
    return "base model" if stage == "base" else FORMS[stages.stage(stage).produces]


def finished_stages(project, model_stages, base_model, allow_stale=False):
    """The stages whose model is finished and current (the base model when it is there; a trained
    stage once its metrics.json exists, the mark of a finished run, and none of its inputs changed
    since), and a note for each one skipped."""
    kept, notes = [], []
    for stage in model_stages:
        path = stages.model_dir(project, stage, base_model)
        if stage == "base":
            done, note = (path / "config.json").exists(), f"base: no model at {path}"
        else:
            done = lineage.is_finished(project, stage) and (path / "config.json").exists()
            note = f"{stage}: not finished ({stages.stage(stage).hint()})"
            if done:
                try:
                    lineage.check_current(project, stage, allow_stale)
                except StageError as stale:
                    done, note = False, stale.message
        if done:
            kept.append(stage)
        else:
            notes.append(note)
    return kept, notes


def build(project, model_stages=stages.MODEL_STAGES, n_samples=8, sampling=None, max_eval_samples=64,
          base_model=stages.BASE_MODEL, allow_stale=False):
    """Score every finished stage (a stale one only with `allow_stale`, marked so); write
    output/scoreboard.{json,csv}; return the rows."""
    from datasets import load_from_disk
    sampling = sampling or generation.Sampling()
    kept, notes = finished_stages(project, model_stages, base_model, allow_stale)
    for note in notes:
        print(f"scoreboard: skipped {note}")
    # The tokenizer every stage shares, from the first one's full model (an adapter's is its base's).
    tokenizer = models.load_tokenizer(stages.model_dir(project, kept[0], base_model)) if kept else None
    refs = references(project, tokenizer, n_samples) if kept else None
    novel_validation = load_from_disk(str(stages.folder(project, stages.NOVEL_DATA)))["validation"] if kept else None
    french_validation = load_from_disk(str(stages.folder(project, refs.french_stage)))["validation"] if kept else None
    rows, samples = [], {}
    for stage in kept:
        model, tokenizer = generation.load_stage(project, stage, base_model, allow_stale=allow_stale)
        texts = generation.generate_from_prompts(model, tokenizer, sampling, refs.prompts)
        samples[stage] = texts
        stale = stage != "base" and lineage.stale_reason(project, stage)
        rows.append({
            "stage": stage + (" (stale)" if stale else ""), "form": form(stage),
            "novel_perplexity": round(perplexity(model, novel_validation, max_samples=max_eval_samples), 2),
            "french_perplexity": round(perplexity(model, french_validation, max_samples=max_eval_samples), 2),
            **score_texts(texts, refs),
            "samples": len(texts),
        })
        del model
    out = project / "output"
    out.mkdir(parents=True, exist_ok=True)
    reference_rows = {} if refs is None else {
        "novel_held_out": score_texts([" ".join(refs.held_out_words)], refs),
        "french_held_out": score_texts([" ".join(refs.french_words)], refs),
    }
    (out / "scoreboard.json").write_text(json.dumps({
        "rows": rows, "references": reference_rows, "skipped": notes,
        "lexicon": refs.lexicon if refs else [], "prompts": refs.prompts if refs else [], "samples": samples,
    }, indent=2, ensure_ascii=False) + "\n")
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


@dataclass
class Settings:
    """python -m chateau.scoreboard [--project-dir DIR]: every finished stage scored, the table printed."""
    project_dir: str = setting("", "project folder (default: $KAFKA_PROJECT_DIR or /project)")
    base_model: str = setting(stages.BASE_MODEL, stages.BASE_MODEL_HELP)
    samples: int = setting(8, "generated samples per stage (each from another passage of the held-out slice)")
    max_eval_samples: int = setting(64, "validation rows per perplexity")
    allow_stale: bool = setting(False, "score stages whose inputs changed since they were trained too (marked stale)")

    def problems(self):
        return positive(self, "samples", "max_eval_samples")


def main(argv=None):
    settings = parse_settings(Settings, argv, description=__doc__)
    print(format_table(build(project_dir(settings.project_dir), n_samples=settings.samples,
                             max_eval_samples=settings.max_eval_samples, base_model=settings.base_model,
                             allow_stale=settings.allow_stale)))


if __name__ == "__main__":
    run(main)
