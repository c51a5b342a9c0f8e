"""SemDeDup vs naive all-pairs dedup, and faiss spherical k-means time vs N (CPU or GPU faiss).

    .venv/bin/python benchmarks/bench_semdedup.py                 # 100k x 512, k-means at 10k/100k/1M
    .venv/bin/python benchmarks/bench_semdedup.py --n 20000 --kmeans-n 10000   # quick

Data: unit vectors around 200 "topics" (cosine ~0.6 to the topic, like real embeddings) with 1 %
planted near-duplicates (cosine >= 0.95 to their source). "Naive" is the release's rule applied to
the whole set as one cluster: M[j] = max over ALL earlier vectors, i.e. an n x n similarity matrix.
At 100k that is 40 GB and ~5e12 flops, so by default it is timed on a subset (--naive-n) and
extrapolated quadratically; the output says when it did so.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np

from loupe.pipeline.stages.dedup.semdedup import faiss_gpus, semdedup, semdedup_naive, spherical_kmeans


def make_data(n: int, d: int, seed: int = 0, dup_frac: float = 0.01) -> tuple[np.ndarray, int]:
    rng = np.random.default_rng(seed)
    n_dup = int(n * dup_frac)
    n_base = n - n_dup
    topics = rng.standard_normal((200, d)).astype(np.float32)
    topics /= np.linalg.norm(topics, axis=1, keepdims=True)
    x = np.empty((n, d), np.float32)
    for s in range(0, n_base, 100_000):  # chunked so 1M x 512 needs no float64 temporaries
        e = min(s + 100_000, n_base)
        noise = rng.standard_normal((e - s, d)).astype(np.float32)
        noise *= 1.3 / np.linalg.norm(noise, axis=1, keepdims=True)
        x[s:e] = topics[rng.integers(0, 200, e - s)] + noise
    x[:n_base] /= np.linalg.norm(x[:n_base], axis=1, keepdims=True)
    src = rng.integers(0, n_base, n_dup)
    noise = rng.standard_normal((n_dup, d)).astype(np.float32) * (0.2 / np.sqrt(d))
    x[n_base:] = x[src] + noise
    x[n_base:] /= np.linalg.norm(x[n_base:], axis=1, keepdims=True)
    return x, n_dup


def timed(fn, *a, **kw):
    t = time.perf_counter()
    out = fn(*a, **kw)
    return out, time.perf_counter() - t


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=100_000)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--clusters", type=int, default=100, help="SemDeDup k-means clusters")
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--eps", type=float, default=0.05)
    p.add_argument("--naive-n", type=int, default=10_000, help="largest naive run (quadratic extrapolation)")
    p.add_argument("--kmeans-n", type=int, nargs="*", default=[10_000, 100_000, 1_000_000])
    p.add_argument("--kmeans-k", type=int, default=1000)
    p.add_argument("--kmeans-iters", type=int, default=10)
    p.add_argument("--max-gib", type=float, default=8.0, help="skip k-means sizes whose data exceeds this")
    a = p.parse_args()

    gpu = faiss_gpus("auto")
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, faiss GPU: {gpu}")
    x, n_dup = make_data(a.n, a.dim)
    print(f"data: {a.n} x {a.dim} float32, {n_dup} planted near-duplicates")

    res, t_sem = timed(semdedup, x, a.clusters, [a.eps, 0.1, 0.2], kmeans_iters=a.iters, seed=0)
    removed = int(res.removed[a.eps].sum())
    print(f"semdedup: {t_sem:.2f} s (k={a.clusters}, {a.iters} iters, eps={a.eps}: removed {removed})")

    if a.n <= a.naive_n:
        naive, t_naive = timed(semdedup_naive, x, [a.eps])
        how = "measured"
        print(f"naive all-pairs: {t_naive:.2f} s measured, removed {int(naive[a.eps].sum())}")
    else:
        sub = x[: a.naive_n]
        naive, t_sub = timed(semdedup_naive, sub, [a.eps])
        t_naive = t_sub * (a.n / a.naive_n) ** 2
        how = f"estimated from {a.naive_n} rows ({t_sub:.2f} s) x ({a.n}/{a.naive_n})^2"
        print(f"naive all-pairs: {t_naive:.1f} s ESTIMATED ({how}); the full n x n matrix is not built")
    print(f"speed-up: {t_naive / t_sem:.1f}x  (goal >= 20x)  [naive {how}]")

    print(f"k-means time vs N (k={a.kmeans_k}, {a.kmeans_iters} iters, dim {a.dim}):")
    for n in a.kmeans_n:
        gib = n * a.dim * 4 / 2**30
        if gib > a.max_gib:
            print(f"  N={n:>9}: skipped ({gib:.1f} GiB > --max-gib {a.max_gib})")
            continue
        xk = x[:n] if n <= len(x) else make_data(n, a.dim, seed=1)[0]
        _, t = timed(spherical_kmeans, xk, a.kmeans_k, a.kmeans_iters, 0)
        print(f"  N={n:>9}: {t:7.2f} s")
        del xk


if __name__ == "__main__":
    main()
