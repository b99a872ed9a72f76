"""How token streams become fixed-length training samples, and which book goes where: pure functions."""
import hashlib
import math
import random

import numpy as np


def book_hash(file_id):
    """A stable number per book: the split depends on the book alone, so reruns and added parquet
    files never move a book from one step, or one split, to another."""
    return int.from_bytes(hashlib.sha256(str(file_id).encode()).digest()[:8], "big")


def book_split(file_id, validation_percent):
    """("1a" | "1b", "train" | "validation") for a book. Half the books feed each step (both need
    ~512M tokens); `validation_percent` % of each half is held out whole for validation."""
    h = book_hash(file_id)
    step = "1a" if h % 2 == 0 else "1b"
    split = "validation" if (h // 2) % 10000 < validation_percent * 100 else "train"
    return step, split


def book_windows(token_ids, seq_len, max_windows):
    """Contiguous, non-overlapping `seq_len` windows of one book's tokens (BOS ... EOS), at most
    `max_windows` of them, spread evenly over the book. A sample never crosses a book boundary;
    the tail shorter than `seq_len` is dropped."""
    n = len(token_ids) // seq_len
    if n == 0:
        return np.zeros((0, seq_len), dtype=np.int32)
    chosen = np.unique(np.linspace(0, n - 1, min(n, max_windows)).round().astype(int))
    ids = np.asarray(token_ids, dtype=np.int32)
    return np.stack([ids[i * seq_len:(i + 1) * seq_len] for i in chosen])


def strided_starts(begin, end, seq_len, stride):
    """Window starts covering [begin, end) with overlap; the last window is aligned to `end` so the
    tail is trained on too. Empty when the range is shorter than one window."""
    if end - begin < seq_len:
        return []
    starts = list(range(begin, end - seq_len + 1, stride))
    if starts[-1] != end - seq_len:
        starts.append(end - seq_len)
    return starts


def novel_windows(n_tokens, seq_len, stride, validation_fraction):
    """(train_starts, validation_starts) for one long text.

    Validation is one contiguous slice from the middle of the book (`validation_fraction` of it,
    rounded up to whole windows, at least one when the fraction is > 0), cut into non-overlapping windows. Training
    windows (stride `stride`, so each token is seen ~seq_len/stride times) cover the text before
    and after that slice and never overlap it.
    """
    if validation_fraction <= 0:
        return strided_starts(0, n_tokens, seq_len, stride), []
    val_len = seq_len * max(1, math.ceil(n_tokens * validation_fraction / seq_len))  # whole windows
    val_begin = max(0, (n_tokens - val_len) // 2)
    val_end = val_begin + val_len
    val_starts = list(range(val_begin, val_end - seq_len + 1, seq_len))
    train = strided_starts(0, val_begin, seq_len, stride) + strided_starts(val_end, n_tokens, seq_len, stride)
    return train, val_starts


def novel_train_stream(rows, n_tokens, seq_len, stride, validation_fraction, seed):
    """The novel's training text as token ids (-1 where the held-out slice is), rebuilt from step
    1c's shuffled, overlapping windows: their starts are novel_windows' own, shuffled as 1c
    shuffled them. None when the rows do not match those settings (not 1c's windows)."""
    starts, _ = novel_windows(n_tokens, seq_len, stride, validation_fraction)
    random.Random(seed).shuffle(starts)
    rows = np.asarray(rows)
    if rows.shape != (len(starts), seq_len):
        return None
    stream = np.full(n_tokens, -1, dtype=np.int64)
    for start, row in zip(starts, rows):
        seen = stream[start:start + seq_len]
        if np.any((seen >= 0) & (seen != row)):
            return None
        stream[start:start + seq_len] = row
    return stream


def one_pass(stream, sample_tokens):
    """(n, sample_tokens) samples that hold every training token of the novel once: each
    contiguous part of `stream` (the text before and after the held-out slice) cut into
    consecutive samples, the last one of a part aligned to its end (it overlaps its neighbour by
    less than a sample, so that the tail is trained on too)."""
    covered = np.flatnonzero(np.diff(np.concatenate([[0], (stream >= 0).astype(np.int8), [0]])))
    samples = [stream[s:s + sample_tokens] for begin, end in zip(covered[::2], covered[1::2])
               for s in strided_starts(begin, end, sample_tokens, sample_tokens)]
    return np.stack(samples).astype(np.int32) if samples else np.zeros((0, sample_tokens), dtype=np.int32)
