"""Bits per byte, computed by hand for a small model and a short French text, against the
scoreboard's: the loss from a plain forward pass, the bytes from str.encode."""
import math

import pytest

from chateau import models, scoreboard
from dev import fixtures

TEXT = ("« Vous êtes l’arpenteur ? » demanda l’aubergiste. K. hocha la tête ; dehors, la neige "
        "couvrait déjà le château — et personne, à cette heure-là, n’en descendait.")


@pytest.fixture(scope="module", params=["llama", "mistral"])
def model_and_tokenizer(request, tmp_path_factory):
    """The tiny fixture models with their tokenizers: a Llama-style one ("▁" pieces, every
    character in its vocabulary) and a Mistral-style one (some characters only as byte tokens)."""
    out = tmp_path_factory.mktemp(request.param)
    build_tokenizer, build_model = {"llama": (fixtures.build_tokenizer, fixtures.build_model),
                                    "mistral": (fixtures.build_mistral_tokenizer, fixtures.build_mistral_model)}[request.param]
    return build_model(out).eval(), build_tokenizer(out)


def rows_dataset(rows):
    from datasets import Dataset
    return Dataset.from_dict({"input_ids": rows})


def nats_of_predicted_tokens(model, row):
    """The negative log-likelihood, in nats, of every token of `row` but the first, each given the
    ones before it: one forward pass, float64 log-softmax."""
    import torch
    ids = torch.tensor([row])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, :-1].double()
    return -float(torch.log_softmax(logits, dim=-1).gather(-1, ids[0, 1:, None]).sum())


def test_a_whole_document_in_one_row_is_its_text_in_bits_per_byte(model_and_tokenizer):
    """BOS, the text, EOS in one row: BOS is the row's first token (not predicted), the text's
    tokens and EOS are predicted, and the bytes are exactly the text's (EOS is no text)."""
    model, tokenizer = model_and_tokenizer
    row = models.document_ids(tokenizer, tokenizer(TEXT, add_special_tokens=False)["input_ids"])
    assert row[0] == tokenizer.bos_token_id and row[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(row[1:], skip_special_tokens=True) == TEXT  # the tokenizer gives the text back
    text_bytes = len(TEXT.encode("utf-8"))
    assert text_bytes > len(TEXT)  # « », ’, accents: bytes, not characters, are counted
    by_hand = nats_of_predicted_tokens(model, row) / math.log(2) / text_bytes
    figures = scoreboard.held_out_loss(model, tokenizer, rows_dataset([row]))
    assert figures.bits_per_byte == pytest.approx(by_hand, rel=1e-6)
    assert figures.perplexity == pytest.approx(math.exp(nats_of_predicted_tokens(model, row) / (len(row) - 1)), rel=1e-6)


def test_windows_of_a_longer_text_each_lose_their_first_token(model_and_tokenizer):
    """A document cut into fixed-length windows (as the prepared splits are), more rows than a
    batch and only some of them read (max_samples): each window's first token is not predicted,
    and its bytes are those of the rest of the window as the tokenizer decodes it."""
    model, tokenizer = model_and_tokenizer
    ids = models.document_ids(tokenizer, tokenizer(" ".join([TEXT] * 4), add_special_tokens=False)["input_ids"])
    length = 24
    rows = [ids[start:start + length] for start in range(0, len(ids) - length + 1, length)]
    assert len(rows) >= 6
    read = rows[:5]
    nats = sum(nats_of_predicted_tokens(model, row) for row in read)
    text_bytes = sum(len(tokenizer.decode(row[1:], skip_special_tokens=True).encode("utf-8")) for row in read)
    figures = scoreboard.held_out_loss(model, tokenizer, rows_dataset(rows), batch_size=2, max_samples=5)
    assert figures.bits_per_byte == pytest.approx(nats / math.log(2) / text_bytes, rel=1e-6)
    assert figures.perplexity == pytest.approx(math.exp(nats / sum(len(row) - 1 for row in read)), rel=1e-6)
