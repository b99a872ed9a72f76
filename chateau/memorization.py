"""How much of its training text a causal LM can recite: the measure behind "the imprint dial".

Training on the novel in passes, each pass is measured twice on the same footing: on the
training split (text the model was trained on) and on the held-out slice (text it never saw, the
control). A pass that recites the training split much better than the control has started to
memorize instead of imitate. Three measures, over the same positions:

    extracted       share of positions where greedy decoding from the 50-token prefix reproduces
                    the true 50-token suffix exactly (discoverable extraction, Carlini et al. 2021)
    agreed_tokens   mean number of suffix tokens the greedy continuation gets right before its
                    first difference (0 to `suffix`): the graded version of `extracted`
    suffix_probability, suffix_logprob_per_token
                    the teacher-forced probability of the true suffix given the prefix,
                    exp(sum of its tokens' log-probs), averaged over positions, and the mean
                    log-prob per suffix token (probabilistic extraction, Cooper et al. 2025): it
                    moves long before greedy decoding recites anything

Positions (`choose_positions`): a position is a row of the split and a start inside it; its span
is the `prefix` + `suffix` tokens from there, never crossing the row's end. Each row is cut into
`row_len // span` equal segments (slots); the `n` slots are taken evenly spread over all slots
(np.linspace over the slot numbers: every part of the split, first and last slot included, and
different places inside the rows), and each slot's span starts at a seeded offset inside its
segment. Prepared windows may overlap in the underlying text (1c's training windows: 2048 long,
stride 512, shuffled), and a split does not store where its rows came from, so the chooser tells
it from the tokens: two rows are windows of one text, d tokens apart, when the end of one equals
the start of the other, all of their common part, at least 32 tokens long (SAME_TEXT_TOKENS:
chance does not repeat ~20 words exactly at a window's edge in prose). A slot whose span would
overlap an already chosen span in the text so told is skipped, and slots from the rest, in a
seeded order, replace it; only overlaps of fewer than 32 tokens (between windows sharing fewer)
can go untold. The same data, arguments and seed give the same positions.

Cost, per batch of `batch_size` positions: one teacher-forced forward over prefix + suffix (the
probabilities), one forward over the prefix, then `suffix - 1` one-token steps on the KV cache
(the greedy continuation): about 50 small forwards per batch, no padding (every row is
prefix + suffix long). It prints nothing; it runs under torch.no_grad with the model in eval
mode and gives the model back in the training mode it found it in (it is called from a Trainer
callback at the end of each pass).
"""
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from chateau.cli import StageError
from chateau.prepared import INPUT_IDS

POSITIONS = 64
PREFIX = 50
SUFFIX = 50
BATCH_SIZE = 16
SAME_TEXT_TOKENS = 32  # rows whose edges agree over this many tokens are windows of one text


class Position(NamedTuple):
    row: int    # row of the split
    start: int  # first token of the prefix in that row


@dataclass
class Memorization:
    """One split's measure (dataclasses.asdict gives the plain dict)."""
    positions: int
    extracted: float                  # share of positions whose suffix greedy decoding reproduces exactly
    agreed_tokens: float              # mean greedy tokens equal to the suffix before the first difference
    suffix_probability: float         # mean over positions of P(true suffix | prefix), teacher-forced
    suffix_logprob_per_token: float   # mean log-prob of a true suffix token, teacher-forced


# --- positions -------------------------------------------------------------------------------
def _rows(dataset, indices):
    """The rows `indices` of a prepared split (a datasets.Dataset with `input_ids`) or of a 2-D
    array of token ids, as an (len(indices), row_len) int64 array."""
    indices = [int(i) for i in indices]
    if hasattr(dataset, "column_names"):
        return np.asarray(dataset[indices][INPUT_IDS], dtype=np.int64).reshape(len(indices), -1)
    return np.asarray(dataset, dtype=np.int64)[indices].reshape(len(indices), -1)


def _check_lengths(n, prefix, suffix):
    for name, value in (("n", n), ("prefix", prefix), ("suffix", suffix)):
        if int(value) != value or value < 1:
            raise StageError(f"memorization: {name} must be a whole number >= 1 (got {value})")


def _shifts(a, b, min_common):
    """Every d such that row `b` is row `a`'s text moved by d tokens (a[i + d] == b[i] wherever
    both rows have token i + d and i) over at least `min_common` tokens: one is a window of the
    same text as the other, d tokens later."""
    length = len(a)
    found = set()
    if length < min_common:
        return found
    for x, y, sign in ((a, b, 1), (b, a, -1)):  # y starts inside x (sign 1: b later in the text than a)
        head = y[:min_common]
        starts = np.flatnonzero(x[:length - min_common + 1] == head[0])
        if len(starts):
            windows = np.lib.stride_tricks.sliding_window_view(x, min_common)[starts]
            for p in starts[(windows == head).all(axis=1)]:
                if np.array_equal(x[p:], y[:length - p]):
                    found.add(sign * int(p))
    return found


def choose_positions(dataset, n=POSITIONS, prefix=PREFIX, suffix=SUFFIX, seed=0):
    """`n` positions (sorted by row, then start) whose prefix + suffix spans lie inside one row
    and do not overlap one another in the underlying text as far as the tokens tell: see the
    module's docstring for how. Raises StageError when the split has no room for `n` such spans."""
    _check_lengths(n, prefix, suffix)
    span = prefix + suffix
    n_rows = len(dataset)
    if not n_rows:
        raise StageError("memorization: the split has no rows to measure")
    row_len = _rows(dataset, [0]).shape[1]
    if row_len < span:
        raise StageError(f"memorization: the split's rows hold {row_len} tokens, fewer than one "
                         f"{prefix}-token prefix + {suffix}-token suffix: measure with a shorter prefix or suffix")
    per_row = row_len // span
    segment = row_len // per_row
    n_slots = n_rows * per_row
    if n > n_slots:
        raise StageError(f"memorization: the split has room for {n_slots} spans of {span} tokens "
                         f"({n_rows} rows of {row_len}), not {n}: measure fewer positions")

    def position(slot):  # the slot's span starts at a seeded offset of its segment, the same in every call
        jitter = int(np.random.default_rng([seed, slot]).integers(0, segment - span + 1))
        return Position(slot // per_row, (slot % per_row) * segment + jitter)

    spread = np.unique(np.linspace(0, n_slots - 1, n).round().astype(np.int64))
    spread_rows = sorted({int(slot) // per_row for slot in spread})
    rows = dict(zip(spread_rows, _rows(dataset, spread_rows)))  # one read for the evenly spread slots
    shifts = {}
    chosen = []

    def overlaps(candidate):
        for other in chosen:
            key = (other.row, candidate.row)
            if key not in shifts:
                shifts[key] = _shifts(rows[other.row], rows[candidate.row], min(SAME_TEXT_TOKENS, span))
            # token c of the candidate's row is token c + d of the other's row
            if any(abs(candidate.start + d - other.start) < span for d in shifts[key]):
                return True
        return False

    def slots():
        yield from spread
        used = set(spread.tolist())
        for slot in np.random.default_rng(seed).permutation(n_slots):
            if int(slot) not in used:
                yield slot

    for slot in slots():
        candidate = position(int(slot))
        if candidate.row not in rows:
            rows[candidate.row] = _rows(dataset, [candidate.row])[0]
        if not overlaps(candidate):
            chosen.append(candidate)
            if len(chosen) == n:
                return sorted(chosen)
    raise StageError(f"memorization: only {len(chosen)} spans of {span} tokens that do not overlap in the "
                     f"split's text could be chosen, not {n}: measure fewer positions or shorter spans")


def spans_at(dataset, positions, length):
    """The `length` tokens at each position, as an (n, length) int64 torch tensor."""
    import torch
    used = sorted({p.row for p in positions})
    rows = dict(zip(used, _rows(dataset, used)))
    return torch.from_numpy(np.stack([rows[p.row][p.start:p.start + length] for p in positions]))


# --- the measure -----------------------------------------------------------------------------
def greedy_continuation(model, prefixes, length):
    """The `length` tokens greedy decoding appends to each prefix ((b, p) ids, no padding): a
    forward over the prefixes, then one-token steps on the KV cache. Equal to
    model.generate(do_sample=False, max_new_tokens=length) without its stopping at EOS or its
    generation-config handling."""
    import torch
    out = model(input_ids=prefixes, use_cache=True)
    past, token = out.past_key_values, out.logits[:, -1].argmax(-1)
    tokens = [token]
    for _ in range(length - 1):
        out = model(input_ids=token[:, None], past_key_values=past, use_cache=True)
        past, token = out.past_key_values, out.logits[:, -1].argmax(-1)
        tokens.append(token)
    return torch.stack(tokens, dim=1)


def suffix_logprobs(model, spans, prefix):
    """(b, suffix) log-probabilities of each true suffix token given everything before it, from
    one teacher-forced forward over the (b, prefix + suffix) spans."""
    import torch
    suffix = spans.shape[1] - prefix
    logits = model(input_ids=spans, use_cache=False, logits_to_keep=suffix + 1).logits[:, :-1]
    logprobs = torch.log_softmax(logits.float(), dim=-1)  # bf16 log-probs of a 50-token sum would blur
    return logprobs.gather(-1, spans[:, prefix:, None]).squeeze(-1)


def measure_spans(model, spans, prefix=PREFIX, batch_size=BATCH_SIZE):
    """The Memorization of (n, prefix + suffix) token spans: each span's first `prefix` tokens are
    the prompt, the rest the suffix to recite."""
    import torch
    spans = torch.as_tensor(spans, dtype=torch.long)
    if spans.ndim != 2 or not 0 < prefix < spans.shape[1]:
        raise StageError(f"memorization: spans must be (n, prefix + suffix) with a suffix (got shape "
                         f"{tuple(spans.shape)}, prefix {prefix})")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    exact, agreed, probability, logprob = [], [], [], []
    try:
        with torch.no_grad():
            for batch in spans.split(batch_size):
                batch = batch.to(device)
                truth = batch[:, prefix:]
                same = greedy_continuation(model, batch[:, :prefix], truth.shape[1]) == truth
                exact.append(same.all(dim=1).cpu())
                agreed.append(same.long().cumprod(dim=1).sum(dim=1).cpu())  # tokens before the first difference
                token_logprobs = suffix_logprobs(model, batch, prefix).double()
                probability.append(token_logprobs.sum(dim=1).exp().cpu())
                logprob.append(token_logprobs.mean(dim=1).cpu())
    finally:
        model.train(was_training)
    mean = lambda parts: float(torch.cat(parts).double().mean())
    return Memorization(positions=len(spans), extracted=mean(exact), agreed_tokens=mean(agreed),
                        suffix_probability=mean(probability), suffix_logprob_per_token=mean(logprob))


def measure_split(model, dataset, n=POSITIONS, prefix=PREFIX, suffix=SUFFIX, batch_size=BATCH_SIZE, seed=0):
    """The Memorization of one split at its `n` chosen positions (choose_positions)."""
    positions = choose_positions(dataset, n, prefix, suffix, seed)
    return measure_spans(model, spans_at(dataset, positions, prefix + suffix), prefix, batch_size)


def measure(model, dataset_train, dataset_heldout, n=POSITIONS, prefix=PREFIX, suffix=SUFFIX, batch_size=BATCH_SIZE, seed=0):
    """{"train": Memorization, "heldout": Memorization}: the training split and its control, the
    held-out slice, measured at the same number of positions with the same settings."""
    return {name: measure_split(model, data, n, prefix, suffix, batch_size, seed)
            for name, data in (("train", dataset_train), ("heldout", dataset_heldout))}
