"""The scoreboard's measures on texts where the answer is known: real French prose from
../shared/corpus (Madame Bovary and other novels of its time), never copied into the repository."""
import random

import pytest

from chateau import scoreboard
from dev import real_inputs


@pytest.fixture(scope="module")
def texts():
    """Word lists: the novel (Madame Bovary), two chunks of it set apart, and French from other novels."""
    novel = scoreboard.words(" ".join(real_inputs.paragraphs(real_inputs.NOVEL)))
    others = [stem for stem, *_ in real_inputs.corpus_books() if stem != real_inputs.NOVEL][:6]
    corpus = [w for stem in others for w in scoreboard.words(" ".join(real_inputs.paragraphs(stem)[:400]))]
    return {"novel": novel, "corpus": corpus, "held_out": novel[60000:63000], "later": novel[90000:93000],
            "french": corpus[-3000:]}


def test_the_novels_lexicon_is_its_names_and_nouns(texts):
    lexicon = scoreboard.characteristic_words(texts["novel"], texts["corpus"])
    assert {"emma", "bovary", "homais", "léon", "yonville"} <= set(lexicon[:20])
    assert not {"le", "la", "de", "et", "il"} & set(lexicon)  # function words are common everywhere
    held_out = " ".join(texts["held_out"])
    assert scoreboard.lexicon_rate([held_out], lexicon) > 3 * scoreboard.lexicon_rate([" ".join(texts["french"])], lexicon)


def test_a_copied_paragraph_scores_high_copying_and_new_prose_none(texts):
    novel = texts["novel"]
    copied = " ".join(novel[20000:20120])
    assert scoreboard.copied_share([copied], novel) == 1.0
    assert scoreboard.longest_copy([copied], novel) == 120
    half = " ".join(texts["french"][:60] + novel[30000:40030])  # 30 words recited after 60 of other prose
    assert 0.2 < scoreboard.copied_share([" ".join(texts["french"][:60] + novel[30000:30030])], novel) < 0.5
    assert scoreboard.longest_copy([half], novel) >= 30
    assert scoreboard.copied_share([" ".join(texts["french"][:500])], novel) < 0.01
    assert scoreboard.longest_copy([" ".join(texts["french"][:500])], novel) < 12


def test_delta_tells_the_novels_style_from_other_french_and_from_word_salad(texts):
    vocabulary = scoreboard.most_frequent_words(texts["corpus"])
    chunks = scoreboard.chunks(texts["corpus"], 1000) + scoreboard.chunks(texts["novel"], 1000)
    delta = lambda a, b: scoreboard.burrows_delta(a, b, chunks, vocabulary)
    same_author = delta(texts["later"], texts["held_out"])
    other_author = delta(texts["french"], texts["held_out"])
    rng = random.Random(0)
    vocabulary_words = sorted(set(texts["novel"]))
    salad = [rng.choice(vocabulary_words) for _ in range(3000)]  # the novel's words, drawn without its grammar
    assert delta(texts["held_out"], texts["held_out"]) == 0
    assert same_author < other_author < delta(salad, texts["held_out"])
    # Delta counts words, not their order: shuffling a text leaves it where it was.
    shuffled = texts["later"][:]
    rng.shuffle(shuffled)
    assert delta(shuffled, texts["held_out"]) == pytest.approx(same_author)
