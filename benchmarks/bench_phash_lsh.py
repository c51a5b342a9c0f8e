"""pHash near-duplicate pairs: band LSH vs the exhaustive faiss range search (issue 15).

    .venv/bin/python benchmarks/bench_phash_lsh.py                        # 1M hashes, max_distance 6
    .venv/bin/python benchmarks/bench_phash_lsh.py --n 100000 --full      # also the whole all-pairs run

Data: uniformly random 64-bit hashes (the worst case for LSH: no structure to exploit, each
band's buckets hold n / 2^9 rows) plus 1 % planted near copies with 0-8 bits flipped. LSH
(``loupe.pipeline.stages.dedup.lsh``) runs on all ``--n``. The exhaustive search (faiss
``IndexBinaryFlat.range_search``, what ``phash_dedup`` used before) is timed for ``--queries`` query
rows against the full index and extrapolated linearly to n queries (each query scans all n
rows); its pairs among those queries must equal LSH's exactly. ``--full`` runs it on every row.

Times are process CPU-seconds and wall seconds on a shared 2-core box: use the ratio.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np


def make_hashes(n: int, seed: int = 0, dup_frac: float = 0.01) -> np.ndarray:
    rng = np.random.default_rng(seed)
    bits = rng.integers(0, 2, (n, 64), dtype=np.uint8).astype(bool)
    k = int(n * dup_frac)
    src = rng.integers(0, n - k, k)
    for r, s in zip(range(n - k, n), src):
        row = bits[s].copy()
        row[rng.choice(64, rng.integers(0, 9), replace=False)] ^= True
        bits[r] = row
    return np.packbits(bits, axis=1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--max-distance", type=int, default=6)
    ap.add_argument("--queries", type=int, default=20_000, help="exhaustive-search queries timed")
    ap.add_argument("--full", action="store_true", help="run the exhaustive search on every row")
    a = ap.parse_args()

    import faiss

    from loupe.pipeline.stages.dedup.lsh import band_pairs

    codes = make_hashes(a.n)
    print(
        f"n = {a.n:,}, max_distance {a.max_distance}, load average {os.getloadavg()[0]:.1f} (2-core shared box)"
    )
    w0, c0 = time.perf_counter(), time.process_time()
    i, j, d = band_pairs(codes, a.max_distance)
    lsh_wall, lsh_cpu = time.perf_counter() - w0, time.process_time() - c0
    lsh = set(zip(i.tolist(), j.tolist()))

    q = a.n if a.full else min(a.queries, a.n)
    index = faiss.IndexBinaryFlat(64)
    index.add(codes)
    w0, c0 = time.perf_counter(), time.process_time()
    brute: set[tuple[int, int]] = set()
    for q0 in range(0, q, 4096):
        lims, _, idx = index.range_search(codes[q0 : min(q0 + 4096, q)], a.max_distance + 1)
        for r in range(len(lims) - 1):
            brute.update((q0 + r, int(x)) for x in idx[lims[r] : lims[r + 1]] if x > q0 + r)
    bw, bc = time.perf_counter() - w0, time.process_time() - c0
    scale = a.n / q
    mine = {p for p in lsh if p[0] < q}
    print("| method | pairs within max_distance | wall s | CPU s |")
    print("|---|---|---|---|")
    print(
        f"| band LSH, {a.max_distance + 1} bands, all {a.n:,} rows | {len(lsh):,} | {lsh_wall:.1f} | {lsh_cpu:.1f} |"
    )
    tag = "measured" if q == a.n else f"estimated: {q:,} queries measured x {scale:.0f}"
    print(f"| exhaustive range search, all rows ({tag}) | | {bw * scale:.1f} | {bc * scale:.1f} |")
    print(
        f"\nCPU ratio exhaustive / LSH: {bc * scale / lsh_cpu:.1f}x; wall ratio {bw * scale / lsh_wall:.1f}x"
    )
    print(
        f"pairs with first row among the {q:,} queried: LSH {len(mine):,}, exhaustive {len(brute):,}, "
        f"identical: {mine == brute}"
    )


if __name__ == "__main__":
    main()
