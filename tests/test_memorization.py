"""The memorization measure: a tiny Llama trained until it recites its rows is caught, an
untrained one and unseen rows are not; the positions are deterministic, spread, inside their rows
and apart in the text."""
import dataclasses
import math
import random

import numpy as np
import pytest
import torch

from chateau import prepared
from chateau.cli import StageError
from chateau.memorization import (Memorization, _shifts, choose_positions, greedy_continuation, measure,
                                  measure_spans, spans_at, suffix_logprobs)
from chateau.windows import novel_windows

VOCAB = 256
ROWS, ROW_LEN = 8, 100  # one 50 + 50 span per row


def tiny_llama(seed):
    """TinyLlama's architecture (GQA, SwiGLU, RMSNorm, RoPE, untied head) shrunk, as dev/fixtures.py
    builds it, with a small vocabulary."""
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2))


def random_rows(seed, rows=ROWS, length=ROW_LEN):
    """Random token ids (no special ids): text that has no pattern to learn but itself."""
    return torch.randint(3, VOCAB, (rows, length), generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread: the tiny model's matrices are too small to share, and two threads on a
    busy 2-core machine wait on each other (one thread: ~3 s to train below; two: up to ~30 s)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def trained():
    """(model, its training rows, rows it never saw): trained with plain AdamW until its loss is
    near zero (~55 steps, ~2 s on CPU)."""
    model, rows = tiny_llama(0), random_rows(1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-3)
    for step in range(400):
        loss = model(input_ids=rows, labels=rows).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if loss.item() < 0.01:
            break
    assert loss.item() < 0.01, f"the tiny model did not learn its rows in {step + 1} steps (loss {loss.item():.3f})"
    return model, rows, random_rows(2)


# --- the measure -----------------------------------------------------------------------------
def test_a_model_that_memorized_its_rows_recites_them_and_not_unseen_ones(trained):
    model, rows, unseen = trained
    result = measure(model, rows, unseen, n=ROWS)
    train, heldout = result["train"], result["heldout"]
    assert train.positions == heldout.positions == ROWS
    assert train.extracted >= 0.9
    assert train.agreed_tokens >= 45
    assert train.suffix_probability >= 0.5 and train.suffix_logprob_per_token > -0.02
    assert heldout.extracted <= 0.05
    assert heldout.agreed_tokens <= 1
    assert heldout.suffix_probability < 1e-6 and heldout.suffix_logprob_per_token < -2
    assert set(dataclasses.asdict(train)) == {"positions", "extracted", "agreed_tokens", "suffix_probability",
                                              "suffix_logprob_per_token"}


def test_an_untrained_model_recites_nothing():
    model = tiny_llama(0)
    result = measure(model, random_rows(1), random_rows(2), n=ROWS)
    for split in result.values():
        assert split.extracted <= 0.05
        assert split.agreed_tokens <= 1
        assert split.suffix_probability < 1e-6
        assert split.suffix_logprob_per_token < math.log(10 / VOCAB)  # about uniform: log(1/256) = -5.5


def test_agreed_tokens_count_up_to_the_first_difference(trained):
    """The greedy continuation is compared with the suffix (not the prefix), token by token, and
    counting stops at the first difference: a suffix changed at its 20th token agrees on 20."""
    model, rows, _ = trained
    changed = rows.clone()
    changed[:, 50 + 20] = (changed[:, 50 + 20] - 3 + 1) % (VOCAB - 3) + 3  # another non-special token
    changed[:, 50 + 30] = (changed[:, 50 + 30] - 3 + 1) % (VOCAB - 3) + 3  # a later difference does not count
    result = measure_spans(model, changed, prefix=50)
    exact = measure_spans(model, rows, prefix=50)
    assert exact.agreed_tokens == 50 and exact.extracted == 1
    assert result.agreed_tokens == 20 and result.extracted == 0
    assert result.suffix_probability < exact.suffix_probability * 1e-3  # two unlikely tokens now


def test_the_suffix_probability_is_the_teacher_forced_product(trained):
    model, rows, _ = trained
    spans = torch.cat([rows[:2], random_rows(3, 1)])
    with torch.no_grad():
        logprobs = torch.log_softmax(model(input_ids=spans).logits.double(), dim=-1)
    expected = torch.stack([torch.stack([logprobs[i, t - 1, spans[i, t]] for t in range(60, 100)]) for i in range(3)])
    with torch.no_grad():
        got = suffix_logprobs(model, spans, prefix=60).double()
    assert torch.allclose(got, expected, atol=1e-4)
    result = measure_spans(model, spans, prefix=60, batch_size=2)  # two batches, one of 2, one of 1
    assert result.positions == 3
    assert result.suffix_probability == pytest.approx(expected.sum(1).exp().mean().item(), rel=1e-3)
    assert result.suffix_logprob_per_token == pytest.approx(expected.mean().item(), rel=1e-4)
    assert result.agreed_tokens == pytest.approx((40 + 40 + 0) / 3, abs=1 / 3 + 1e-9)  # the random row: ~0


@pytest.mark.parametrize("which", ["trained", "untrained"])
def test_greedy_continuation_equals_generate(trained, which):
    model = trained[0] if which == "trained" else tiny_llama(5)
    prefixes = torch.cat([trained[1][:4, :50], random_rows(4, 4)[:, :50]])
    with torch.no_grad():  # no stop at EOS: the untrained model writes some
        generated = model.generate(input_ids=prefixes, attention_mask=torch.ones_like(prefixes), do_sample=False,
                                   max_new_tokens=30, eos_token_id=None, pad_token_id=0)
        assert torch.equal(greedy_continuation(model, prefixes, 30), generated[:, 50:])


def test_the_model_is_given_back_as_found(trained):
    model, rows, unseen = trained
    model.train()
    measure(model, rows, unseen, n=4, prefix=10, suffix=5)
    assert model.training and all(p.grad is None for p in model.parameters())
    model.eval()
    measure(model, rows, unseen, n=4, prefix=10, suffix=5)
    assert not model.training


def test_batches_do_not_change_the_result(trained):
    model, rows, _ = trained
    spans = torch.cat([rows[:3], random_rows(6, 3)])
    one, many = measure_spans(model, spans, batch_size=6), measure_spans(model, spans, batch_size=4)
    assert one.extracted == many.extracted == 0.5 and one.agreed_tokens == many.agreed_tokens
    assert one.suffix_logprob_per_token == pytest.approx(many.suffix_logprob_per_token, rel=1e-4)
    assert isinstance(one, Memorization)


# --- the positions ---------------------------------------------------------------------------
def stream(n_tokens, seed=0):
    return np.random.default_rng(seed).integers(3, 32000, n_tokens).astype(np.int32)


def as_dataset(windows):
    from datasets import Dataset
    return Dataset(prepared.windows_table(windows))


def test_positions_are_deterministic_counted_in_bounds_and_spread():
    rows = stream(200 * 256).reshape(200, 256)  # non-overlapping windows, two slots per row
    positions = choose_positions(rows, n=64, prefix=50, suffix=50, seed=0)
    assert len(positions) == len(set(positions)) == 64
    assert positions == choose_positions(rows, n=64, prefix=50, suffix=50, seed=0) == sorted(positions)
    assert all(0 <= p.row < 200 and 0 <= p.start and p.start + 100 <= 256 for p in positions)
    used = sorted({p.row for p in positions})
    assert len(used) == 64 and used[0] == 0 and used[-1] == 199  # the whole split, first and last rows included
    assert set(np.diff(used)) <= {3, 4}  # 199 / 63 = 3.2 rows apart
    halves = [p.start >= 128 for p in positions]
    assert 0.3 < np.mean(halves) < 0.7  # both slots of the rows: not always the start of a row
    other = choose_positions(rows, n=64, prefix=50, suffix=50, seed=1)
    assert [p.row for p in other] == [p.row for p in positions] and other != positions  # the seed moves offsets
    assert choose_positions(as_dataset(rows), n=64, seed=0) == positions  # a prepared split reads the same
    spans = spans_at(as_dataset(rows), positions, 100)
    assert spans.shape == (64, 100) and spans.dtype == torch.int64
    assert all(np.array_equal(spans[i].numpy(), rows[p.row, p.start:p.start + 100]) for i, p in enumerate(positions))


def test_several_positions_per_row_when_rows_are_few():
    rows = stream(4 * 1000).reshape(4, 1000)  # ten 100-token slots per row
    positions = choose_positions(rows, n=16, prefix=50, suffix=50, seed=0)
    assert len(positions) == 16 and {p.row for p in positions} == {0, 1, 2, 3}
    for a, b in zip(positions, positions[1:]):
        assert a.row != b.row or b.start - a.start >= 100  # never overlapping inside a row
    assert all(p.start + 100 <= 1000 for p in positions)


def text_offsets(positions, starts):
    return sorted(starts[p.row] + p.start for p in positions)


@pytest.mark.parametrize("n_tokens, seq_len, stride, n", [(3000, 128, 32, 12), (40_000, 512, 128, 64)])
def test_positions_do_not_overlap_in_the_text_of_overlapping_windows(n_tokens, seq_len, stride, n, monkeypatch):
    """1c's training split in small: shuffled windows with stride < length. Evenly spread slots
    hold overlapping text; the chooser tells it from the tokens and takes other slots."""
    ids = stream(n_tokens)
    starts, _ = novel_windows(n_tokens, seq_len, stride, 0.05)
    random.Random(0).shuffle(starts)
    rows = as_dataset(np.stack([ids[s:s + seq_len] for s in starts]))
    for seed in (0, 1, 2):
        positions = choose_positions(rows, n=n, prefix=50, suffix=50, seed=seed)
        assert len(positions) == n and min(np.diff(text_offsets(positions, starts))) >= 100  # no shared token
        spans = spans_at(rows, positions, 100)
        assert all(np.array_equal(spans[i].numpy(), ids[starts[p.row] + p.start:][:100]) for i, p in enumerate(positions))
    with monkeypatch.context() as blind:  # the premise: a chooser that cannot tell takes overlapping spans here
        blind.setattr("chateau.memorization._shifts", lambda a, b, min_common: set())
        assert min(np.diff(text_offsets(choose_positions(rows, n=n, prefix=50, suffix=50, seed=0), starts))) < 100


def test_shifts_find_windows_of_one_text():
    ids = stream(400)
    assert _shifts(ids[0:128], ids[32:160], 32) == {32}
    assert _shifts(ids[32:160], ids[0:128], 32) == {-32}
    assert _shifts(ids[0:128], ids[0:128], 32) == {0}
    assert _shifts(ids[0:128], ids[96:224], 32) == {96}  # 32 tokens in common: still told
    assert _shifts(ids[0:128], ids[97:225], 32) == set()  # 31: not
    assert _shifts(ids[0:128], stream(128, seed=9), 32) == set()


def test_impossible_positions_are_refused():
    rows = stream(10 * 100).reshape(10, 100)
    with pytest.raises(StageError, match="fewer than one 60-token prefix"):
        choose_positions(rows, n=4, prefix=60, suffix=50)
    with pytest.raises(StageError, match="room for 10 spans"):
        choose_positions(rows, n=11)
    with pytest.raises(StageError, match="no rows"):
        choose_positions(rows[:0], n=4)
    with pytest.raises(StageError, match="prefix must be a whole number >= 1"):
        choose_positions(rows, n=4, prefix=0)
    windows = np.stack([stream(200)[s:s + 128] for s in range(0, 73, 4)])  # 19 windows of 200 tokens of text
    with pytest.raises(StageError, match="do not overlap in the split's text"):
        choose_positions(windows, n=3)
