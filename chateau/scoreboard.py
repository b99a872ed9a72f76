"""The scoreboard: did each stage move the model the way it should, and did 2c learn the novel's
world and voice rather than recite it?

One row per finished model stage (the base model, then every train stage of the stage table: 2a,
2b, 2c, 2d, ...), every figure measured the same way for each:
- perplexity and bits per byte (below) on the novel's held-out slice (should fall at 2c) and on
  held-out French books (should fall at 2a/2b, and not rise much at 2c);
- the next-passage test (chateau.next_passage): does the model pick the true continuation of a
  1,000-token held-out context among six? Likelihoods only;
- memorization of the novel's training text, as the imprint dial measures each pass
  (chateau/memorization.py, with the dial's settings as `--memorization-*`, chateau/dial.py's
  DialSettings): at positions of the novel's training text (rebuilt from 1c's windows, as the
  dial's passes see it, in 1c's window length), does greedy decoding from a 50-token prefix
  reproduce the true 50-token suffix (`extracted_train`), how many tokens does it agree before the
  first difference (`agreed_tokens_train`), how probable is the true suffix, teacher-forced; the
  same at positions of the held-out slice (`..._heldout`), the control: what a model reproduces of
  text it never saw. The same positions for every stage;
- over samples drawn until they hold ~5,000 words (what stylometry needs), each continuing a
  passage of the novel's held-out slice:
  - `told_apart`: the blind discriminator (chateau.discriminator): how well a classifier on
    function words and character n-grams tells the samples from the novel (0.5: it cannot);
  - `lexicon_per_1000`: the novel's own lexicon (its most characteristic words and names against
    the French corpus, by weighted log-odds, derived from the novel itself) per 1,000 words;
  - `copied_8gram_share`: the share of generated word 8-grams found in the novel's text, and
    `longest_copy_words`, the longest copied run of words (a model that recites the book has
    not learned to continue it);
  - `delta_novel`, `delta_french`: Burrows' Delta over the French corpus's most frequent words
    between the samples and the novel's held-out slice, and held-out French (lower = closer);
  - artifacts (page numbers, running heads, source lines) per 1,000 words, distinct-2.
Two reference rows measure the held-out novel and held-out French the same way, for scale (no
model: they have no likelihood and no memorization figure). A stage trained in passes is scored
at its published pass (the dial's pick); `--epoch N` scores pass N of `--epoch-stage` (2d by
default) instead, its row labelled with the pass. `COLUMNS` says what each column is and which way
is better. Saved as output/scoreboard.json (rows, references, sizes, samples, the lexicon) and
output/scoreboard.csv.

Bits per byte: perplexity per token depends on the tokenizer (a tokenizer with longer tokens
predicts fewer, harder ones), so two models with different vocabularies cannot be compared by it;
bits per byte of UTF-8 text can. Over the same rows as the perplexity (the first
`--max-eval-samples` rows of the validation split, fixed-length windows of token ids):

    bits per byte = (sum over rows of the negative log-likelihood, in nats, of the row's
                     predicted tokens) / ln 2 / (sum over rows of the UTF-8 bytes of
                     tokenizer.decode(the row's predicted tokens, skip_special_tokens=True))

- The predicted tokens of a row are all but its first: the first token of each window has no
  context and is not predicted; its loss is not counted and neither are its bytes (a window that
  starts a document starts with BOS, which is thus never counted).
- A special token that is predicted (EOS where a window reaches the end of a book; BOS, pad) has
  its loss counted (it is part of the per-token loss beside it) and no bytes (it is no text).
- The loss is the one the perplexity is made of (chateau.training.validation_loss, the mean over
  every predicted token; its rows have no padding), so perplexity = exp(nats / predicted tokens).
- The bytes are those of each row's decoded text as the tokenizer decodes it: a decoder that drops
  the space before the first word it decodes (a Llama tokenizer's "▁" at the start) does so once
  per row, and a character cut at a window's edge (byte-fallback tokens) decodes to U+FFFD (3
  bytes): a few bytes per window of thousands.
"""
import csv
import dataclasses
import io
import json
import math
import re
import time
from collections import Counter
from dataclasses import dataclass
from functools import cached_property
from typing import NamedTuple

import numpy as np

from chateau import dial, discriminator, generation, lineage, memorization, models, next_passage, prepared, stages
from chateau.cleaning import GALLICA_SOURCE, is_page_number
from chateau.cli import StageError, group, parse_settings, positive, run, setting, write_atomic

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


class HeldOutLoss(NamedTuple):
    perplexity: float      # per token: exp(mean loss of the predicted tokens)
    bits_per_byte: float   # per byte of UTF-8 text: comparable across tokenizers


def held_out_loss(model, tokenizer, dataset, batch_size=4, max_samples=64):
    """Perplexity and bits per byte over the first `max_samples` rows of a prepared validation
    split, from one pass of the model over them: what each counts is stated in the module's
    docstring (the first token of a row is not predicted; predicted special tokens count their loss
    and no bytes)."""
    from chateau.training import validation_loss
    rows = dataset.select(range(min(max_samples, len(dataset))))
    mean_nats = validation_loss(model, rows, batch_size)  # per predicted token: every row's tokens but its first
    ids = rows[prepared.INPUT_IDS]
    predicted_tokens = sum(len(row) - 1 for row in ids)
    text_bytes = sum(len(tokenizer.decode(row[1:], skip_special_tokens=True).encode("utf-8")) for row in ids)
    return HeldOutLoss(perplexity=math.exp(mean_nats), bits_per_byte=mean_nats * predicted_tokens / math.log(2) / text_bytes)


# ---------------------------------------------------------------------------------------------
# The texts every stage is measured against.

STYLOMETRY_WORDS = 5000  # words per text where attribution becomes stable for novels (Eder 2015, "Does size matter?")


@dataclass
class References:
    """What the generations are compared with, all derived from the project's own data."""
    novel_words: list       # the novel's whole text (clean_text.txt)
    held_out_text: str      # the novel's held-out slice (1c validation), as text
    french_text: str        # held-out French books (1b validation, else 1a), as text
    corpus_text: str        # the French corpus (1a and 1b training samples), as text
    french_stage: str       # the prepare step whose validation split is the held-out French
    lexicon: list
    vocabulary: list        # the corpus's most frequent words, for Delta
    reference_chunks: list
    prompts: list           # passages of the held-out slice, cycled through by the samples

    @cached_property
    def held_out_words(self):  # read by every stage's Delta: split once
        return words(self.held_out_text)

    @cached_property
    def french_words(self):
        return words(self.french_text)


def decoded_text(tokenizer, dataset, max_rows):
    return generation.decode_rows(tokenizer, dataset.select(range(min(max_rows, len(dataset))))["input_ids"])


def references(project, tokenizer, n_prompts, chunk_words=1000, max_corpus_rows=2000):
    """The novel, its held-out slice, held-out French and the French corpus; the novel's lexicon;
    Delta's vocabulary and reference chunks; the sample prompts."""
    from datasets import load_from_disk
    novel_dir = stages.folder(project, stages.NOVEL_DATA)
    if prepared.read_manifest(novel_dir) is None:
        raise StageError(f"the novel's prepared data is missing at {novel_dir}: {stages.stage(stages.NOVEL_DATA).hint()}")
    novel = load_from_disk(str(novel_dir))
    french_stage = next((s for s in stages.FRENCH_DATA if prepared.read_manifest(stages.folder(project, s))), None)
    if french_stage is None:
        raise StageError(f"no prepared French data ({' or '.join(stages.FRENCH_DATA)}): {stages.stage(stages.FRENCH_DATA[0]).hint()}")
    corpus_text = " ".join(decoded_text(tokenizer, load_from_disk(str(stages.folder(project, s)))["train"], max_corpus_rows)
                           for s in stages.FRENCH_DATA if prepared.read_manifest(stages.folder(project, s)))
    corpus = words(corpus_text)
    novel_words = words((novel_dir / "clean_text.txt").read_text())
    held_out = decoded_text(tokenizer, novel["validation"], max_corpus_rows)
    size = min(chunk_words, max(50, len(words(held_out)) // 2))
    return References(
        novel_words=novel_words, held_out_text=held_out,
        french_text=decoded_text(tokenizer, load_from_disk(str(stages.folder(project, french_stage)))["validation"], max_corpus_rows),
        corpus_text=corpus_text, french_stage=french_stage, lexicon=characteristic_words(novel_words, corpus),
        vocabulary=most_frequent_words(corpus), reference_chunks=chunks(corpus, size) + chunks(novel_words, size),
        prompts=generation.held_out_prompts(project, tokenizer, n_prompts),
    )


def score_texts(texts, refs):
    """Every text measure of one stage's samples (prompts excluded) but the discriminator."""
    generated = [w for t in texts for w in words(t)]
    return {
        "lexicon_per_1000": round(lexicon_rate(texts, refs.lexicon), 2),
        "copied_8gram_share": round(copied_share(texts, refs.novel_words), 4),
        "longest_copy_words": longest_copy(texts, refs.novel_words),
        "delta_novel": round(burrows_delta(generated, refs.held_out_words, refs.reference_chunks, refs.vocabulary), 3),
        "delta_french": round(burrows_delta(generated, refs.french_words, refs.reference_chunks, refs.vocabulary), 3),
        "artifacts_per_1000": round(artifact_rate(texts), 2),
        "distinct_2": round(distinct_n(texts), 3),
        "words": len(generated),
    }


def told_apart(texts, other_text, chunk_words):
    """The blind discriminator's figures for `texts` against `other_text` (the novel's held-out slice)."""
    result = discriminator.discriminate([" ".join(texts)], [other_text], chunk_words)
    return {"told_apart": result.accuracy, "told_apart_95": [result.low, result.high],
            "told_apart_chunks": result.chunks_per_side}


FORMS = {stages.FULL_MODEL: "full model", stages.ADAPTER: "adapter on its base, unmerged",
         stages.MERGED: "merged model (merged/)"}


def form(stage, epoch=0):
    """Which form of a stage's model the scoreboard scored (the table says what it produces; pass
    `epoch` of a merged stage is its adapter, applied unmerged on its base: generation.load_stage)."""
    if stage == "base":
        return "base model"
    produces = stages.stage(stage).produces
    return FORMS[stages.ADAPTER if epoch and produces == stages.MERGED else produces]


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


def as_the_dial_measures(name):
    """The field `name` of the dial's settings (chateau/dial.py DialSettings), its default and help:
    declared there once, for the passes and the scoreboard alike."""
    field = {f.name: f for f in dataclasses.fields(dial.DialSettings)}[name]
    return dataclasses.field(default=field.default, metadata=field.metadata)


@dataclass
class MemorizationSettings:
    """The memorization measure's settings, the dial's own fields (`--memorization-*`): each stage
    is measured as each pass is. The dial's other fields (its rule's thresholds, its style
    samples) choose a pass, which the scoreboard never does."""
    positions: int = as_the_dial_measures("positions")
    prefix: int = as_the_dial_measures("prefix")
    suffix: int = as_the_dial_measures("suffix")

    def problems(self):
        return [f"--memorization-{problem[2:]}" for problem in positive(self, "positions", "prefix", "suffix")]


@dataclass
class Settings:
    """python -m chateau.scoreboard [--project-dir DIR]: every finished stage scored, the table printed.

    The defaults are the real run's: ~5,000 generated words per stage (what stylometry needs),
    a 40-item next-passage test with 1,000-token contexts. ~2 minutes per stage on a 12 GB GPU."""
    project_dir: str = setting("", "project folder (default: $KAFKA_PROJECT_DIR or /project)")
    base_model: str = setting(stages.BASE_MODEL, stages.BASE_MODEL_HELP)
    words: int = setting(STYLOMETRY_WORDS, "generated words per stage (at least; samples are drawn until there are this many)")
    sample_tokens: int = setting(512, "tokens per generated sample (each continues a passage of the held-out slice)")
    batch_size: int = setting(generation.GENERATION_BATCH, "samples generated together")
    chunk_words: int = setting(discriminator.CHUNK_WORDS, "words per chunk of the blind discriminator")
    next_passage_items: int = setting(40, "items of the next-passage test (0: skip it)")
    context_tokens: int = setting(next_passage.CONTEXT_TOKENS, "context of each next-passage item, in tokens")
    candidate_tokens: int = setting(next_passage.CANDIDATE_TOKENS, "length of each next-passage candidate, in tokens")
    max_eval_samples: int = setting(64, "validation rows per perplexity (and bits per byte)")
    allow_stale: bool = setting(False, "score stages whose inputs changed since they were trained too (marked stale)")
    epoch: int = setting(0, "score pass N of --epoch-stage instead of its published pass (0: the published one, the dial's pick)")
    epoch_stage: str = setting(dial.Settings.stage, f"the stage trained in passes whose pass --epoch scores: {dial.DIALLED}")
    memorization: MemorizationSettings = group(MemorizationSettings, "memorization",
                                               "memorization of the novel's training text, measured as the dial measures each pass")

    def problems(self):
        out = positive(self, "words", "sample_tokens", "batch_size", "chunk_words", "context_tokens",
                       "candidate_tokens", "max_eval_samples") + positive(self, "next_passage_items", allow=(0,))
        if self.epoch < 0:
            out.append(f"--epoch must be >= 0 (got {self.epoch}; 0 is the published pass)")
        if not dial.is_dialled(self.epoch_stage):
            out.append(f"--epoch-stage {self.epoch_stage}: only a stage trained in passes has them ({dial.DIALLED})")
        return out + self.memorization.problems()


def load_settings(config="", *flags):
    """The scoreboard's settings: the defaults (the real run's), or a profile file's (profiles/*/scoreboard.json),
    `flags` beside them (the notebook's --base-model)."""
    return parse_settings(Settings, (["--config", str(config)] if config else []) + [str(f) for f in flags])


MAX_SAMPLE_FACTOR = 4  # a stage that writes few words (EOS early) gets at most 4x the expected samples


def samples_until(model, tokenizer, sampling, prompts, target_words, batch_size, expected_words_per_sample):
    """Samples, a batch at a time (the prompts cycled), until they hold `target_words` words."""
    texts, total = [], 0
    cap = MAX_SAMPLE_FACTOR * max(1, math.ceil(target_words / max(1, expected_words_per_sample)))
    while total < target_words and len(texts) < cap:
        batch = [prompts[(len(texts) + k) % len(prompts)] for k in range(batch_size)]
        seeded = dataclasses.replace(sampling, seed=sampling.seed + len(texts))
        new = generation.generate_from_prompts(model, tokenizer, seeded, batch, batch_size)
        texts += new
        total += sum(len(words(t)) for t in new)
    return texts


def check_asked_pass(project, settings):
    """A `--epoch` pass that is not there stops the scoreboard before it scores any stage, not when
    its stage's turn comes minutes later, with step 3's error line for it: generation.load_stage
    says it (or that the stage is not finished) before it loads any weight."""
    if settings.epoch and not dial.pass_dir(project, settings.epoch_stage, settings.epoch).is_dir():
        generation.load_stage(project, settings.epoch_stage, settings.base_model, settings.allow_stale, epoch=settings.epoch)


def novel_training_text(project, novel):
    """The novel's training text as the dial's passes see it (rebuilt from 1c's overlapping windows:
    each token once), in rows of 1c's window length: where memorization is measured, the same
    positions for every stage."""
    return dial.pass_samples(novel["train"], prepared.read_manifest(stages.folder(project, stages.NOVEL_DATA)), 0)


def memorization_figures(measured):
    """memorization.measure's two splits as a row's flat figures: extracted_train,
    agreed_tokens_heldout, ... (a column each), and the positions they rest on."""
    return {"memorization_positions": measured["train"].positions,
            **{f"{name}_{split}": value for split, figures in measured.items()
               for name, value in dataclasses.asdict(figures).items() if name != "positions"}}


def build(project, settings=None, model_stages=stages.MODEL_STAGES, progress=print):
    """Score every finished stage (a stale one only with `allow_stale`, marked so); write
    output/scoreboard.{json,csv}; return the board (rows, reference rows, sizes)."""
    from datasets import load_from_disk
    settings = settings or Settings()
    sampling = generation.Sampling(new_tokens=settings.sample_tokens)
    check_asked_pass(project, settings)
    kept, notes = finished_stages(project, model_stages, settings.base_model, settings.allow_stale)
    for note in notes:
        progress(f"scoreboard: skipped {note}")
    # The tokenizer every stage shares, from the first one's full model (an adapter's is its base's).
    tokenizer = models.load_tokenizer(stages.model_dir(project, kept[0], settings.base_model)) if kept else None
    refs = references(project, tokenizer, 64) if kept else None
    if kept:
        novel = load_from_disk(str(stages.folder(project, stages.NOVEL_DATA)))
        novel_validation, novel_training = novel["validation"], novel_training_text(project, novel)
        french_validation = load_from_disk(str(stages.folder(project, refs.french_stage)))["validation"]
        items = next_passage.build_items(tokenizer, refs.held_out_text, settings.next_passage_items,
                                         settings.context_tokens, settings.candidate_tokens)
    rows, samples = [], {}
    memorized = settings.memorization
    for number, stage in enumerate(kept, 1):
        began = time.time()
        epoch = settings.epoch if stage == settings.epoch_stage else 0
        model, tokenizer = generation.load_stage(project, stage, settings.base_model, allow_stale=settings.allow_stale,
                                                 epoch=epoch)
        stale = stage != "base" and lineage.stale_reason(project, stage)
        label = stage + (f" (pass {epoch})" if epoch else "") + (" (stale)" if stale else "")
        which = "" if stage == "base" else dial.which_pass(project, stage, epoch)
        texts = samples_until(model, tokenizer, sampling, refs.prompts, settings.words, settings.batch_size,
                              expected_words_per_sample=settings.sample_tokens // 2)
        samples[label] = texts
        generated = time.time() - began
        passage = next_passage.score(model, items, settings.context_tokens, settings.candidate_tokens)
        novel_loss, french_loss = (held_out_loss(model, tokenizer, validation, max_samples=settings.max_eval_samples)
                                   for validation in (novel_validation, french_validation))
        measured = memorization.measure(model, novel_training, novel_validation, memorized.positions, memorized.prefix,
                                        memorized.suffix)
        rows.append({
            "stage": label, "form": form(stage, epoch) + (f", {which}" if which else ""),
            "novel_perplexity": round(novel_loss.perplexity, 2), "novel_bits_per_byte": round(novel_loss.bits_per_byte, 4),
            "french_perplexity": round(french_loss.perplexity, 2), "french_bits_per_byte": round(french_loss.bits_per_byte, 4),
            "next_passage": passage.accuracy, "next_passage_95": [passage.low, passage.high], "next_passage_items": passage.items,
            **memorization_figures(measured),
            **told_apart(texts, refs.held_out_text, settings.chunk_words),
            **score_texts(texts, refs),
            "samples": len(texts),
        })
        progress(f"scoreboard: {label} ({number}/{len(kept)}): {len(texts)} samples, {rows[-1]['words']:,} words in "
                 f"{generated:.0f} s; next passage, perplexities and memorization in {time.time() - began - generated:.0f} s")
        del model
    board = {
        "rows": rows, "references": reference_rows(refs, settings.chunk_words) if refs else [], "skipped": notes, "settings": dataclasses.asdict(settings),
        "indicative": indicative(rows), "lexicon": refs.lexicon if refs else [],
        "prompts": refs.prompts if refs else [], "samples": samples,
    }
    out = project / "output"
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "scoreboard.json", json.dumps(board, indent=2, ensure_ascii=False) + "\n")
    table = io.StringIO()
    writer = csv.DictWriter(table, fieldnames=list(rows[0]) if rows else ["stage"])
    writer.writeheader()
    writer.writerows(rows)
    write_atomic(out / "scoreboard.csv", table.getvalue())
    return board


REFERENCES = {
    "(novel)": "the novel's held-out slice measured as a stage's samples are; told apart: its first half from its second",
    "(French)": "held-out French books measured the same way; told apart: the corpus's French books (the other authors) "
                "from the novel's held-out slice",
}


def reference_rows(refs, chunk_words):
    """The two rows that give the measures their scale: the held-out novel itself (its Delta to
    itself is 0, its lexicon the novel's; its two halves should not be told apart, ~0.5) and
    held-out French (how far another author is)."""
    held_out = refs.held_out_text.split()
    halves = [" ".join(held_out[:len(held_out) // 2])], " ".join(held_out[len(held_out) // 2:])
    # Other authors against the novel: the corpus's books, as many chunks as the novel's slice has
    # (the held-out French alone is a few samples in a small run; no model is involved here, so
    # books the stages trained on serve as well as held-out ones).
    return [
        {"stage": "(novel)", "form": REFERENCES["(novel)"], **told_apart(*halves, chunk_words),
         **score_texts([refs.held_out_text], refs), "samples": 1},
        {"stage": "(French)", "form": REFERENCES["(French)"], **told_apart([refs.corpus_text], refs.held_out_text, chunk_words),
         **score_texts([refs.french_text], refs), "samples": 1},
    ]


def indicative(rows):
    """A warning when a stage's figures rest on fewer words than stylometry needs, else None."""
    fewest = min((r["words"] for r in rows), default=0)
    if rows and fewest < STYLOMETRY_WORDS:
        return (f"indicative only: {fewest:,} generated words for the smallest stage; lexicon, Delta and the discriminator "
                f"become stable around {STYLOMETRY_WORDS:,} words per text (Eder 2015)")
    return None


# ---------------------------------------------------------------------------------------------
# The table as people read it.

class Column(NamedTuple):
    key: str
    short: str      # its header
    better: str     # which way is better (↑, ↓, ↓ 0.5: towards 0.5), or "" when neither
    what: str       # what it is (the legend)
    form: str       # how its figures are written: a format spec, "interval", "percent" (the same decimals all down a column)
    group: str      # "model": a likelihood of held-out text; "memorization": what it reproduces of the novel's
                    # training text (the held-out slice as control); "samples": a measure of the generated samples


# One place for the scoreboard's columns, in the terminal table's order. The Markdown tables split
# them by group: what each model predicts, what it recites, what it writes (21 columns do not fit a page).
COLUMNS = [
    Column("stage", "stage", "", "base model, each trained stage (a pass asked with --epoch: \"2d (pass 2)\"), and the two "
           "reference rows in parentheses", "", ""),
    Column("novel_perplexity", "novel ppl", "↓", "perplexity on the novel's held-out slice (per token: it depends on the "
           "tokenizer)", ".1f", "model"),
    Column("novel_bits_per_byte", "novel bpb", "↓", "the same loss in bits per byte of the slice's UTF-8 text: comparable "
           "across tokenizers", ".3f", "model"),
    Column("french_perplexity", "French ppl", "↓", "perplexity on held-out French books (should not rise much at 2c)", ".1f", "model"),
    Column("french_bits_per_byte", "French bpb", "↓", "the same loss in bits per byte of their UTF-8 text", ".3f", "model"),
    Column("next_passage", "next passage", "↑", "next-passage accuracy: the true continuation of a held-out context picked among six "
           "(chance 0.17)", "interval", "model"),
    Column("extracted_train", "extracted train", "↓", "share of positions of the novel's training text whose true suffix "
           "greedy decoding reproduces exactly from its prefix (recitation)", "percent", "memorization"),
    Column("extracted_heldout", "extracted held-out", "", "the same at positions of the held-out slice, never trained on: "
           "the control", "percent", "memorization"),
    Column("agreed_tokens_train", "agreed train", "↓", "suffix tokens greedy decoding gets right before its first "
           "difference, mean over the training text's positions", ".1f", "memorization"),
    Column("agreed_tokens_heldout", "agreed held-out", "", "the same on the held-out slice: the control", ".1f", "memorization"),
    Column("suffix_logprob_per_token_train", "log-p train", "", "teacher-forced log-probability (nats) per true suffix "
           "token, training text: it moves long before anything is recited; its excess over held-out is memorized",
           ".2f", "memorization"),
    Column("suffix_logprob_per_token_heldout", "log-p held-out", "", "the same on the held-out slice: the control", ".2f",
           "memorization"),
    Column("told_apart", "told apart", "↓ 0.5", "blind discriminator's accuracy telling the samples from the novel (0.5: it cannot)",
           "interval", "samples"),
    Column("delta_novel", "Δ novel", "↓", "Burrows' Delta to the novel's held-out slice (150 most frequent words)", ".2f", "samples"),
    Column("delta_french", "Δ French", "", "Burrows' Delta to held-out French", ".2f", "samples"),
    Column("lexicon_per_1000", "lexicon", "↑", "the novel's 100 most characteristic words, per 1,000 words", ".1f", "samples"),
    Column("copied_8gram_share", "copied", "↓", "share of word 8-grams found verbatim in the novel", "percent", "samples"),
    Column("longest_copy_words", "longest copy", "↓", "longest run of words copied from the novel", ",", "samples"),
    Column("artifacts_per_1000", "artifacts", "↓", "page numbers, running heads, source lines per 1,000 words", ".1f", "samples"),
    Column("distinct_2", "distinct-2", "↑", "distinct word pairs / all word pairs (1: no repetition)", ".2f", "samples"),
    Column("words", "words", "", "generated words the text measures rest on", ",", "samples"),
]
COLUMN = {c.key: c for c in COLUMNS}

SIZE_OF = {"told_apart": "told_apart_chunks", "next_passage": "next_passage_items"}  # what each interval rests on
SIZE_UNIT = {"told_apart": "chunks per side", "next_passage": "items"}


def interval(row, key):
    """A figure with its 95% interval: "0.83 [0.70, 0.91]"."""
    low, high = row[key + "_95"]
    return f"{row[key]:.2f} [{low:.2f}, {high:.2f}]"


def cell(row, key, sizes=True):
    """One figure as the tables write it; an interval with what it rests on (×N) unless `sizes` is
    False (the Markdown table says N in its legend, to stay narrow)."""
    value, form = row.get(key), COLUMN[key].form
    if value is None or value == "":
        return "—"
    if form == "interval":
        return interval(row, key) + (f" ×{row[SIZE_OF[key]]}" if sizes else "")
    if form == "percent":
        return f"{100 * value:.1f}%"
    return format(value, form) if form else str(value)


def header(column):
    return f"{column.short} {column.better}".strip()


def table_rows(board, columns=COLUMNS, rows=None, sizes=True):
    """Header and cells of `rows` (default: the stage rows, then the reference rows) in `columns`."""
    rows = board["rows"] + board["references"] if rows is None else rows
    return [header(c) for c in columns], [[cell(row, c.key, sizes) for c in columns] for row in rows]


def format_table(board):
    """The board as aligned plain text (the terminal, the logs)."""
    if not board["rows"]:
        return "(no stage trained yet)"
    head, body = table_rows(board)
    widths = [max(len(h), *(len(r[i]) for r in body)) for i, h in enumerate(head)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in [head] + body]
    return "\n".join(lines + ([board["indicative"]] if board["indicative"] else []))


def counts(rows, key):
    """What the rows' intervals of `key` rest on: "30", or "10–20" when the rows differ."""
    sizes = sorted({r[SIZE_OF[key]] for r in rows if r.get(key) is not None})
    return "" if not sizes else str(sizes[0]) if len(sizes) == 1 else f"{sizes[0]}–{sizes[-1]}"


def markdown_rows(head, body):
    # No-break spaces: a figure and its interval stay on one line, and a header's arrow with its
    # name (a narrow page wraps "told apart ↓ 0.5" between its words only). Stages left, figures right.
    nowrap = lambda text: re.sub(r"(?<=Δ) | (?=[↑↓])|(?<=[↑↓]) | (?=\[)|(?<=,) ", "\u00a0", text)
    return "\n".join(["| " + " | ".join(map(nowrap, head)) + " |", "|:--|" + "--:|" * (len(head) - 1)] +
                     ["| " + " | ".join(map(nowrap, line)) + " |" for line in body])


def markdown_table(board):
    """The board as three Markdown tables, each with its columns explained beneath (the notebook,
    docs/results.md): what each model predicts of held-out text and what it recites of the novel's
    training text (no reference row: they have no model), and what its samples are like (with the
    reference rows, for scale)."""
    if not board["rows"]:
        return "(no stage trained yet)"
    size = board["settings"]
    legend = lambda group: [f"- **{c.short}**{' ' + c.better if c.better else ''}: {c.what}" for c in COLUMNS if c.group == group]
    intervals = lambda key, rows: (f"- [a, b]: 95% interval of **{COLUMN[key].short}**, over {counts(rows, key)} "
                                   f"{SIZE_UNIT[key]}" if counts(rows, key) else None)
    everything = board["rows"] + board["references"]
    of_group = lambda group: COLUMNS[:1] + [c for c in COLUMNS if c.group == group]
    memorized = size["memorization"]
    parts = [f"**{board['indicative']}.**"] if board["indicative"] else []
    parts += [
        "**What each model predicts** of held-out text (likelihoods: nothing sampled)",
        markdown_rows(*table_rows(board, of_group("model"), board["rows"], sizes=False)),
        "\n".join(legend("model") + list(filter(None, [intervals("next_passage", board["rows"])])) +
                  [f"- sizes: next passage: {size['context_tokens']}-token contexts, {size['candidate_tokens']}-token candidates; "
                   f"perplexities and bits per byte over {size['max_eval_samples']} validation rows"]),
        "**What each model recites** of the novel's training text, as the imprint dial measures each pass (greedy "
        "continuations and teacher-forced likelihoods: nothing sampled), beside the held-out slice as the control",
        markdown_rows(*table_rows(board, of_group("memorization"), board["rows"], sizes=False)),
        "\n".join(legend("memorization") +
                  [f"- sizes: {memorized['positions']} positions of the training text and as many of the held-out slice, "
                   f"each a {memorized['prefix']}-token prefix and the true {memorized['suffix']}-token suffix"]),
        f"**What each model writes**: samples of {size['sample_tokens']} tokens, each continuing a passage of the novel's "
        f"held-out slice, until {size['words']:,} words per stage; two reference rows for scale",
        markdown_rows(*table_rows(board, of_group("samples"), everything, sizes=False)),
        "\n".join(legend("samples") + list(filter(None, [intervals("told_apart", everything)])) +
                  [f"- sizes: discriminator: {size['chunk_words']}-word chunks"] +
                  [f"- **{name}**: {what}" for name, what in REFERENCES.items()]),
    ]
    return "\n\n".join(parts)


BASES_COLUMNS = ("novel_bits_per_byte", "french_bits_per_byte", "novel_perplexity", "french_perplexity", "extracted_train",
                 "lexicon_per_1000", "told_apart")


def bases_table(project):
    """Markdown: the scoreboards of every base with stages in the project (each base's own
    output/scoreboard.json, stages.workspaces), side by side. Bits per byte first: perplexities per
    token compare stages of one base only, since another tokenizer cuts the same text into other
    tokens; bits per byte of the same held-out text compare any two models. (Each base's held-out
    slice is the middle of the book counted in its own tokens: the same passage to within a window
    at its edges; its French, the same held-out books.)"""
    rows = []
    for base_model, work in stages.workspaces(project).items():
        path = stages.folder(work, "3") / "scoreboard.json"
        if path.exists():
            rows += [{**row, "base": base_model} for row in json.loads(path.read_text())["rows"]]
    if not rows:
        return "(no scoreboard yet: run the scoreboard for a base first)"
    columns = [COLUMN[key] for key in BASES_COLUMNS]
    return markdown_rows(["base", "stage", *map(header, columns)],
                         [[row["base"], row["stage"], *(cell(row, c.key, sizes=False) for c in columns)] for row in rows])


def main(argv=None):
    settings = parse_settings(Settings, argv, description=__doc__)
    print(format_table(build(stages.workspace_of(settings), settings)))


if __name__ == "__main__":
    run(main)
