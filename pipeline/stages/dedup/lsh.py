"""Hamming-radius neighbours of binary hashes by band LSH (pigeonhole), instead of all pairs.

Split the ``b``-bit hash into ``bands = max_distance + 1`` contiguous bands. Two hashes within
``max_distance`` bits differ in at most ``max_distance`` bands, so at least one band is *identical*:
bucketing the rows by each band's value and comparing only rows that share a bucket finds every
pair within the distance, exactly (no false negatives; candidates are then checked with the real
Hamming distance). This is the exact special case of multi-index hashing (Norouzi, Punjani & Fleet,
"Fast Search in Hamming Space with Multi-Index Hashing", CVPR 2012, §3: with m substrings, a pair
within r bits has some substring within ⌊r/m⌋ bits — 0 when m > r).

A pair sharing several bands is counted only in the first band it shares. Small buckets are paired
with a vectorised sweep over sorted positions, large ones with one XOR/popcount matrix each, so the
work is the number of candidate pairs, ~n²/2^(b/bands) per band, not n².
"""

from __future__ import annotations

import numpy as np

#: buckets up to this size are paired by the sorted-position sweep; larger ones as one matrix each
SMALL_BUCKET = 32
#: candidate pairs built at once for one large bucket
MATRIX_CELLS = 1 << 22


def as_words(codes: np.ndarray) -> np.ndarray:
    """(n, nbytes) packed uint8 hashes -> (n, words) uint64 (zero padded; distances unchanged)."""
    n, nbytes = codes.shape
    words = -(-nbytes // 8)
    padded = np.zeros((n, words * 8), np.uint8)
    padded[:, :nbytes] = codes
    return padded.view(">u8").astype(np.uint64)


def band_keys(codes: np.ndarray, bands: int) -> list[np.ndarray]:
    """Per band, each row's band value as uint64 (bands are contiguous, near-equal bit ranges)."""
    bits = np.unpackbits(codes, axis=1)
    edges = np.linspace(0, bits.shape[1], bands + 1).round().astype(int)
    keys = []
    for a, b in zip(edges[:-1], edges[1:]):
        if b - a > 64:
            raise ValueError(
                f"band of {b - a} bits: use more bands than {bands} for a {bits.shape[1]}-bit hash"
            )
        weights = (np.uint64(1) << np.arange(b - a, dtype=np.uint64))[::-1]
        keys.append((bits[:, a:b].astype(np.uint64) * weights).sum(axis=1, dtype=np.uint64))
    return keys


def _hamming(words: np.ndarray, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    return np.bitwise_count(words[i] ^ words[j]).sum(axis=1, dtype=np.int64)


def _first_shared(keys: list[np.ndarray], band: int, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Mask of pairs whose first identical band is ``band`` (not found again in a later band)."""
    keep = np.ones(len(i), bool)
    for k in range(band):
        keep &= keys[k][i] != keys[k][j]
    return keep


def bucket_pairs(
    words: np.ndarray, keys: list[np.ndarray], band: int, max_distance: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs (i < j, distance) within ``max_distance`` among rows sharing their ``band`` value, each
    kept only when ``band`` is the first band the two share (so over all bands every pair comes once).

    ``words`` are the rows' hashes (:func:`as_words`), ``keys`` their values of every band
    (:func:`band_keys`). The rows may be any subset holding whole buckets of ``band`` (under Ray, one
    partition of the shuffle by band value): the result depends only on the rows of each bucket."""
    n = len(words)
    key = keys[band]
    out_i, out_j, out_d = [], [], []

    def emit(i: np.ndarray, j: np.ndarray, d: np.ndarray) -> None:
        """Keep candidate pairs within the distance whose first identical band is this one."""
        m = d <= max_distance
        i, j, d = i[m], j[m], d[m]
        m = _first_shared(keys, band, i, j)  # on the few hits only: cheap
        out_i.append(np.minimum(i[m], j[m]))
        out_j.append(np.maximum(i[m], j[m]))
        out_d.append(d[m])

    order = np.argsort(key, kind="stable")
    sk = key[order]
    starts = np.flatnonzero(np.r_[True, sk[1:] != sk[:-1]]) if n else np.zeros(0, np.int64)
    sizes = np.diff(np.r_[starts, n])
    bucket_of = np.repeat(np.arange(len(starts)), sizes)
    size_at = sizes[bucket_of]
    # small buckets: pair position p with p + g for g = 1 .. size-1, all buckets at once
    small = np.flatnonzero((size_at >= 2) & (size_at <= SMALL_BUCKET))
    for g in range(1, SMALL_BUCKET):
        small = small[small + g < n]
        small = small[bucket_of[small + g] == bucket_of[small]]
        if not len(small):
            break
        a, c = order[small], order[small + g]
        emit(a, c, _hamming(words, a, c))
    # large buckets: XOR/popcount matrices of (rows block x bucket), upper triangle only
    for b in np.flatnonzero(sizes > SMALL_BUCKET):
        members = order[starts[b] : starts[b] + sizes[b]]
        w = words[members]
        s = len(members)
        step = max(1, MATRIX_CELLS // s)  # rows per block: bounded memory even for huge buckets
        for r0 in range(0, s - 1, step):
            r1 = min(r0 + step, s - 1)
            dist = np.bitwise_count(w[r0:r1, None, :] ^ w[None, :, :]).sum(axis=2, dtype=np.int64)
            a, c = np.nonzero(dist <= max_distance)
            later = c > a + r0  # the upper triangle: each pair once, never a row with itself
            a, c = a[later], c[later]
            emit(members[a + r0], members[c], dist[a, c])
    if not out_i:
        empty = np.zeros(0, np.int64)
        return empty, empty, empty
    return np.concatenate(out_i), np.concatenate(out_j), np.concatenate(out_d)


def band_pairs(codes: np.ndarray, max_distance: int, bands: int | None = None):
    """Every pair (i < j) of rows within ``max_distance`` bits, once: arrays (i, j, distance)."""
    bands = bands or max_distance + 1
    if bands <= max_distance:
        raise ValueError(f"bands={bands} must exceed max_distance={max_distance} to find every pair")
    words = as_words(codes)
    keys = band_keys(codes, bands)
    parts = [bucket_pairs(words, keys, band, max_distance) for band in range(bands)]
    return tuple(np.concatenate([p[k] for p in parts]) for k in range(3))


def lsh_neighbours(codes: np.ndarray, radius: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per row: indices and Hamming distances of every row within ``radius`` bits, itself included
    (the same lists as an exhaustive range search, in index order)."""
    n = len(codes)
    i, j, d = band_pairs(codes, radius)
    src = np.concatenate([i, j, np.arange(n)])
    dst = np.concatenate([j, i, np.arange(n)])
    dist = np.concatenate([d, d, np.zeros(n, np.int64)])
    order = np.lexsort((dst, src))
    src, dst, dist = src[order], dst[order], dist[order]
    cuts = np.searchsorted(src, np.arange(1, n))
    return np.split(dst, cuts), np.split(dist, cuts)
