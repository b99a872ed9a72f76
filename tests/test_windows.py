"""Windows, splits and samples: pure functions."""
import numpy as np
import pytest

from chateau.windows import book_split, book_windows, novel_windows, strided_starts


def test_book_split_is_stable_and_balanced():
    ids = [f"bpt6k{i}" for i in range(4000)]
    splits = [book_split(i, 5) for i in ids]
    assert splits == [book_split(i, 5) for i in ids]  # deterministic
    steps = [s for s, _ in splits]
    assert 0.45 < steps.count("1a") / len(ids) < 0.55
    validation = sum(split == "validation" for _, split in splits) / len(ids)
    assert 0.035 < validation < 0.065


def test_book_windows_stay_in_the_book_and_respect_the_cap():
    ids = list(range(1000))
    windows = book_windows(ids, 64, 5)
    assert windows.shape == (5, 64)
    assert all(np.array_equal(w, np.arange(w[0], w[0] + 64)) for w in windows)  # contiguous
    assert windows[0][0] == 0 and windows[-1][-1] == 15 * 64 - 1  # spread from start to end
    assert book_windows(ids, 64, 100).shape == (15, 64)  # the short tail is dropped
    assert book_windows(ids[:10], 64, 5).shape == (0, 64)


def test_strided_starts_cover_the_tail():
    assert strided_starts(0, 100, 40, 20) == [0, 20, 40, 60]
    assert strided_starts(0, 105, 40, 20) == [0, 20, 40, 60, 65]
    assert strided_starts(10, 30, 40, 20) == []


@pytest.mark.parametrize("n, seq, stride, frac", [(200_000, 2048, 512, 0.05), (3000, 128, 32, 0.05), (5000, 64, 16, 0.0)])
def test_novel_windows_never_touch_validation(n, seq, stride, frac):
    train, val = novel_windows(n, seq, stride, frac)
    covered = np.zeros(n, dtype=int)
    for s in train:
        assert 0 <= s and s + seq <= n
        covered[s:s + seq] += 1
    for s in val:
        assert not covered[s:s + seq].any()  # no training window overlaps validation
    if frac:
        assert val and sum(seq for _ in val) >= frac * n * 0.9
        mid = (val[0] + val[-1] + seq) / 2
        assert abs(mid - n / 2) < seq  # from the middle
    else:
        assert val == []
    inner = covered[covered > 0]
    assert np.median(inner) == seq // stride  # each token seen ~seq/stride times (4 for 2048/512)
