"""Band LSH finds exactly the pairs an exhaustive Hamming range search finds (issue 15)."""

from __future__ import annotations

import numpy as np
import pytest

from loupe.pipeline.stages.dedup.lsh import band_keys, band_pairs, lsh_neighbours
from loupe.pipeline.stages.dedup.phash import claim, neighbours


def hashes(n: int, bits: int = 64, seed: int = 0, dup_frac: float = 0.3, max_flip: int = 8) -> np.ndarray:
    """Random hashes plus near copies with 0..max_flip bits flipped (some in the same band)."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 2, (n, bits), dtype=np.uint8).astype(bool)
    k = int(n * dup_frac)
    src = rng.integers(0, n - k, k)
    for r, s in zip(range(n - k, n), src):
        row = base[s].copy()
        flips = rng.choice(bits, rng.integers(0, max_flip + 1), replace=False)
        row[flips] ^= True
        base[r] = row
    base[5] = base[4]  # an identical pair
    return np.packbits(base, axis=1)


def brute_pairs(codes: np.ndarray, d: int) -> set[tuple[int, int, int]]:
    idx, dist = neighbours(codes, d)
    return {(i, int(j), int(k)) for i, (js, ks) in enumerate(zip(idx, dist)) for j, k in zip(js, ks) if j > i}


@pytest.mark.parametrize("max_distance", [0, 3, 6, 10])
def test_lsh_pairs_equal_the_exhaustive_search(max_distance):
    codes = hashes(3000)
    i, j, d = band_pairs(codes, max_distance)
    got = set(zip(i.tolist(), j.tolist(), d.tolist()))
    assert len(got) == len(i)  # each pair once, although near pairs share several bands
    assert got == brute_pairs(codes, max_distance)
    assert (4, 5, 0) in got


def test_lsh_neighbours_match_faiss_lists_and_claims():
    codes = hashes(2000, bits=144, seed=1, max_flip=12)  # hash_size 12: 144-bit hashes
    a, b = lsh_neighbours(codes, 9), neighbours(codes, 9)
    for x, y, dx, dy in zip(a[0], b[0], a[1], b[1]):
        o = np.argsort(y)
        assert x.tolist() == y[o].tolist() and dx.tolist() == dy[o].tolist()
    assert np.array_equal(claim(a, 6)[0], claim(b, 6)[0])


def test_large_buckets_and_too_few_bands():
    codes = np.packbits(np.zeros((200, 64), bool), axis=1)  # one bucket of 200 identical hashes
    i, _, d = band_pairs(codes, 2)
    assert len(i) == 200 * 199 // 2 and not d.any()
    with pytest.raises(ValueError, match="must exceed max_distance"):
        band_pairs(codes, 6, bands=6)
    assert len(band_keys(codes, 7)) == 7
