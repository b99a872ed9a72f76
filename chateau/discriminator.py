"""A blind discriminator: can a classifier tell a stage's prose from the novel's?

The strongest test of an imitation is not a distance but a reader that tries to tell the two
apart (Chakrabarty et al. 2025: fine-tuned imitations of 50 authors were flagged as machine-written
3% of the time, prompted ones 97%). Here the reader is a logistic regression on the standard
stylometric features, scored by cross-validated accuracy:

- **function words**: the relative frequency of each of ~200 French closed-class words
  (articles, pronouns, prepositions, conjunctions, auxiliaries, common adverbs);
- **character 2-4-grams of the distorted text** (Stamatatos 2017, "text distortion"): every word
  that is not a function word has its letters replaced by `*`, so the n-grams see function words,
  punctuation, word lengths and word order across boundaries, and never a name or a noun of the
  novel: the figure judges style, not vocabulary.

0.5 means the classifier cannot tell the two sides apart; 1.0 means it always can. Every figure
comes with its 95% interval (Wilson, over the pooled out-of-fold predictions) and the number of
chunks and words it rests on.
"""
import math
import re
from dataclasses import asdict, dataclass

FUNCTION_WORDS = frozenset("""
le la les l un une des du au aux de d à en dans par pour sur sous avec sans chez vers entre contre
depuis pendant avant après devant derrière selon malgré parmi jusque jusqu hors près loin
et ou mais donc or ni car que qu quand comme si s lorsque lorsqu puisque puisqu quoique parce
je j me m moi tu te t toi il elle ils elles on nous vous se soi lui leur leurs eux y ce c ça cela ceci
celui celle ceux celles celui-ci qui quoi dont où lequel laquelle lesquels lesquelles auquel duquel
mon ma mes ton ta tes son sa ses notre nos votre vos mien tien sien cet cette ces
être est es suis sommes êtes sont était étais étions étiez étaient été fut furent fût serait seraient sera seront
avoir ai as a avons avez ont avait avais avions aviez avaient eu eut eût aurait auraient aura auront
ne n pas plus point jamais rien personne guère tout tous toute toutes très bien aussi encore déjà alors
puis même mêmes ainsi trop peu moins tant non oui là ici quelque quelques chaque autre autres aucun aucune
fait faire dit comme cependant pourtant enfin toujours souvent assez beaucoup
""".split())
WORD = re.compile(r"[^\W\d_]+")
DIGIT = re.compile(r"\d")
CHUNK_WORDS = 250     # words per chunk: the 200-300; both sides cut the same way
CHAR_NGRAMS = (2, 4)  # character n-gram lengths on the distorted text
MAX_CHAR_FEATURES = 1000  # the most frequent n-grams of each training fold (more only adds noise at ~40 chunks)
FOLDS = 5
MIN_CHUNKS = 4        # per side: below this a cross-validated accuracy means nothing


def distort(text):
    """The text with every word that is not a function word masked letter by letter ("Emma
    regardait la mer." -> "**** ******** la ***."), digits as '#': what is left is style."""
    text = DIGIT.sub("#", " ".join(text.split()))
    return WORD.sub(lambda m: m.group() if m.group().lower() in FUNCTION_WORDS else "*" * len(m.group()), text)


def chunks(texts, size=CHUNK_WORDS):
    """Consecutive chunks of `size` whitespace-separated words of each text (a shorter tail is
    dropped, so that every chunk is the same length)."""
    out = []
    for text in texts:
        tokens = text.split()
        out += [" ".join(tokens[i:i + size]) for i in range(0, len(tokens) - size + 1, size)]
    return out


def _function_words(text):
    return [w.lower() for w in WORD.findall(text) if w.lower() in FUNCTION_WORDS]


def pipeline(seed=0):
    """Features (refit on each training fold, so no test chunk shapes them) and the classifier."""
    from sklearn.feature_extraction.text import CountVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline, make_union
    from sklearn.preprocessing import FunctionTransformer, Normalizer, StandardScaler

    function_words = CountVectorizer(analyzer=_function_words, vocabulary=sorted(FUNCTION_WORDS))
    char_ngrams = make_pipeline(FunctionTransformer(lambda texts: [distort(t) for t in texts]),
                                CountVectorizer(analyzer="char", ngram_range=CHAR_NGRAMS, max_features=MAX_CHAR_FEATURES))
    relative = lambda vectorizer: make_pipeline(vectorizer, Normalizer(norm="l1"))  # counts -> frequencies
    return make_pipeline(make_union(relative(function_words), relative(char_ngrams)),
                         StandardScaler(with_mean=False), LogisticRegression(C=0.1, max_iter=5000, random_state=seed))


def wilson(correct, n, z=1.96):
    """95% Wilson score interval of a proportion (sound near 0 and 1, unlike the normal one)."""
    if n == 0:
        return 0.0, 1.0
    p = correct / n
    centre, half = (p + z * z / (2 * n)) / (1 + z * z / n), z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass
class Discrimination:
    accuracy: float | None   # cross-validated; None when either side has fewer than MIN_CHUNKS chunks
    low: float | None        # 95% interval
    high: float | None
    chunks_per_side: int
    words_per_chunk: int

    def as_dict(self):
        return asdict(self)

    def __str__(self):
        if self.accuracy is None:
            return f"too few chunks ({self.chunks_per_side} of {self.words_per_chunk} words per side, {MIN_CHUNKS} needed)"
        return (f"{self.accuracy:.2f} [{self.low:.2f}, {self.high:.2f}] "
                f"({self.chunks_per_side} + {self.chunks_per_side} chunks of {self.words_per_chunk} words)")


def evenly(items, n):
    """`n` of `items`, evenly spaced (the whole range, not just its start)."""
    return [items[len(items) * k // n] for k in range(n)] if n < len(items) else list(items)


def discriminate(texts_a, texts_b, chunk_words=CHUNK_WORDS, folds=FOLDS, seed=0):
    """How well a classifier tells chunks of `texts_a` from chunks of `texts_b` (the same number
    of chunks of the same length on each side): cross-validated accuracy and its 95% interval."""
    import numpy as np
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    a, b = chunks(texts_a, chunk_words), chunks(texts_b, chunk_words)
    n = min(len(a), len(b))
    if n < MIN_CHUNKS:
        return Discrimination(None, None, None, n, chunk_words)
    x = evenly(a, n) + evenly(b, n)
    y = np.array([0] * n + [1] * n)
    cv = StratifiedKFold(n_splits=min(folds, n), shuffle=True, random_state=seed)
    predicted = cross_val_predict(pipeline(seed), x, y, cv=cv)
    correct = int((predicted == y).sum())
    low, high = wilson(correct, 2 * n)
    return Discrimination(round(correct / (2 * n), 3), round(low, 3), round(high, 3), n, chunk_words)
