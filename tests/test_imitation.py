"""The blind discriminator and the next-passage test on texts where the answer is known: real
French prose from ../shared/corpus, never copied into the repository."""
import random

import pytest
import torch

from chateau import discriminator, next_passage
from dev import real_inputs

OTHER = "FRA00501_Balzac"  # Albert Savarus: another author of the same decades


def prose(stem, start, n_words):
    return " ".join(" ".join(real_inputs.paragraphs(stem)).split()[start:start + n_words])


def test_distortion_keeps_function_words_and_punctuation_and_masks_every_other_word():
    assert discriminator.distort("Emma regardait la mer, et Charles  dormait ; 1857.") == \
        "**** ********* la ***, et ******* ******* ; ####."


def test_the_discriminator_tells_two_authors_apart_and_not_two_halves_of_one_novel():
    novel = prose(real_inputs.NOVEL, 20000, 12000)
    words = novel.split()
    authors = discriminator.discriminate([" ".join(words[:6000])], [prose(OTHER, 5000, 6000)])
    halves = discriminator.discriminate([" ".join(words[:6000])], [" ".join(words[6000:])])
    assert authors.chunks_per_side == halves.chunks_per_side == 24 and authors.words_per_chunk == 250
    assert authors.low > 0.7, authors       # measured: 0.90 [0.78, 0.95]
    # Not better than chance (measured 0.35 [0.23, 0.50]: below 0.5 is the usual pull of balanced
    # cross-validation when there is nothing to learn, each test fold tipping the training one).
    assert halves.low < 0.5 and halves.accuracy < 0.65, halves
    # Word order matters: the same words shuffled are told from the author's own prose, because
    # character n-grams of the distorted text run across word boundaries ("de la ***, et").
    shuffled = words[:6000]
    random.Random(0).shuffle(shuffled)
    assert discriminator.discriminate([" ".join(words[6000:])], [" ".join(shuffled)]).low > 0.7


def test_the_discriminator_does_not_see_names():
    """The novel's names swapped for another's leave the features unchanged: it judges style."""
    text = prose(real_inputs.NOVEL, 20000, 3000)
    renamed = text.replace("Emma", "Irma").replace("Charles", "Antoine").replace("Homais", "Hermès")
    assert renamed != text and discriminator.distort(renamed) == discriminator.distort(text)


def test_too_few_chunks_is_said_not_scored():
    result = discriminator.discriminate([prose(real_inputs.NOVEL, 0, 700)], [prose(OTHER, 0, 5000)])
    assert result.accuracy is None and result.chunks_per_side == 2 and "too few chunks" in str(result)


def test_wilson_interval():
    assert discriminator.wilson(0, 0) == (0.0, 1.0)
    low, high = discriminator.wilson(40, 48)
    assert 0.70 < low < 0.71 and 0.91 < high < 0.92  # 0.833 over 48: [0.704, 0.913]


# ---------------------------------------------------------------------------------------------
# The next-passage test with a model that has read the text and one that has read another.

CONTEXT, CANDIDATE = 48, 12  # the real test's 1,000 and 100 tokens, shrunk for a 2-layer model


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast
    raw = Tokenizer(models.BPE(unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.Metaspace()
    raw.decoder = decoders.Metaspace()
    raw.train_from_iterator([prose(real_inputs.NOVEL, 0, 20000), prose(OTHER, 0, 20000)],
                            trainers.BpeTrainer(vocab_size=800, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False))
    return PreTrainedTokenizerFast(tokenizer_object=raw, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def trained_on(tokenizer, text, steps=120, seed=0):
    """A 2-layer Llama trained on `text` (near memorisation): windows of 64 tokens after BOS at random
    offsets, so that it knows the text from anywhere, as a model that has read it does."""
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                         max_position_embeddings=256, bos_token_id=1, eos_token_id=2))
    ids = torch.tensor(tokenizer(text, add_special_tokens=False)["input_ids"])
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(steps):
        starts = torch.randint(0, len(ids) - 64, (16,))
        batch = torch.cat([torch.full((16, 1), tokenizer.bos_token_id), torch.stack([ids[s:s + 64] for s in starts])], 1)
        model(input_ids=batch, labels=batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return model.eval()


def test_the_next_passage_test_picks_the_true_continuation_only_with_a_model_that_read_the_text(tokenizer):
    text = prose(real_inputs.NOVEL, 40000, 1000)
    items = next_passage.build_items(tokenizer, text, 30, CONTEXT, CANDIDATE)
    assert len(items) == 30
    for item in items:
        assert len(item.context) == CONTEXT + 1 and item.context[0] == tokenizer.bos_token_id
        assert len(item.candidates) == 6 and {len(c) for c in item.candidates} == {CANDIDATE}
    assert {item.answer for item in items} != {items[0].answer}  # the true one is not always in the same place
    has_read = next_passage.score(trained_on(tokenizer, text), items, CONTEXT, CANDIDATE)
    has_not = next_passage.score(trained_on(tokenizer, prose(OTHER, 5000, 1000)), items, CONTEXT, CANDIDATE)
    assert has_read.items == has_not.items == 30
    assert has_read.accuracy >= 0.8, has_read
    assert has_not.low < 1 / 6 < has_not.high, has_not  # chance


def test_the_shared_context_cache_scores_like_six_full_forwards(tokenizer):
    """The cached context shared by the candidates gives the same likelihoods as reading context +
    candidate from scratch, candidate by candidate."""
    model = trained_on(tokenizer, prose(OTHER, 0, 800), steps=5)
    item = next_passage.build_items(tokenizer, prose(real_inputs.NOVEL, 40000, 600), 1, CONTEXT, CANDIDATE)[0]
    cached = next_passage.candidate_log_likelihoods(model, item)
    for candidate, value in zip(item.candidates, cached):
        ids = torch.tensor([item.context + candidate])
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1], -1)
        assert logp[-CANDIDATE:].gather(-1, torch.tensor(candidate)[:, None]).sum().item() == pytest.approx(value, abs=1e-3)
