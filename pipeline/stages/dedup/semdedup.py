"""SemDeDup (Abbas et al. 2023, arXiv:2303.09540) on L2-normalised vectors: numpy + faiss, no Loupe types.

The definition followed is the reference release's (facebookresearch/SemDeDup, ``semdedup.py``), as
ARCHITECTURE.md "Faithful definitions" states it:

1. spherical k-means (faiss) puts every vector in a cluster;
2. inside a cluster, members are ordered by cosine distance to the centroid, farthest first for the
   default ``keep="hard"`` (nearest first for ``"easy"``, shuffled for ``"random"``: Loupe seeds each
   cluster's shuffle from the recipe seed and the cluster's sorted uids, :func:`cluster_rng`, so it
   does not depend on the order clusters are visited and the Ray executor's per-group tasks give the
   local pass's order; before, one generator shuffled the clusters in turn);
3. with ``S`` the members' cosine-similarity matrix in that order, ``M[j] = max_{i<j} S[i, j]`` over
   **all** earlier members (removed or not; the release's ``triu(S, 1).max(0)``), and member ``j`` is
   removed when ``M[j] > 1 - eps``.

``M`` does not depend on eps, so one pass gives the kept set of every eps. ``S`` is never built
whole: column blocks of ``block_size`` members are compared with row blocks of earlier members, so
memory is ``O(block_size²)`` whatever the cluster size. ``variant="greedy"`` (compare only with
earlier *kept* members) is offered as an option and is not the paper's rule.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

Keep = Literal["hard", "easy", "random"]
Variant = Literal["paper", "greedy"]


@dataclass
class KMeansResult:
    centroids: np.ndarray  # (k, d) float32, unit rows
    labels: np.ndarray  # (n,) int64
    similarity: np.ndarray  # (n,) float32 cosine similarity to the own centroid
    gpu: bool = False


@dataclass
class SemDedupResult:
    labels: np.ndarray  # (n,) cluster of each vector
    similarity_to_centroid: np.ndarray  # (n,) float32
    max_similarity: np.ndarray  # (n,) M[j]; -inf for the first member of a cluster
    duplicate_of: np.ndarray  # (n,) index of the earlier member reaching M[j]; -1 for none
    removed: dict[float, np.ndarray] = field(default_factory=dict)  # eps -> (n,) bool
    representative: np.ndarray | None = None  # (k,) index nearest each centroid; -1 for empty

    def kept_count(self, eps: float) -> int:
        return int((~self.removed[eps]).sum())


def _as_unit(x: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"embeddings must be a 2-D (n, dim) array, got shape {x.shape}")
    n = np.linalg.norm(x, axis=1, keepdims=True)
    if not np.all(np.isfinite(x)):
        raise ValueError("embeddings contain NaN or inf")
    return x / np.maximum(n, 1e-12)


def faiss_gpus(use_gpu: Literal["auto", "yes", "no"] = "auto") -> bool:
    """Whether to put the k-means index on GPU: faiss built with GPUs and at least one visible."""
    import faiss

    n = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
    if use_gpu == "yes" and n == 0:
        raise RuntimeError("use_gpu: yes, but this faiss build sees no GPU (install faiss-gpu or use auto)")
    return use_gpu != "no" and n > 0


def spherical_kmeans(
    x: np.ndarray,
    k: int,
    iters: int = 100,
    seed: int = 1234,
    use_gpu: Literal["auto", "yes", "no"] = "auto",
    max_points_per_centroid: int | None = 256,
) -> KMeansResult:
    """faiss spherical k-means (centroids renormalised each step); ``k`` is capped at ``len(x)``.

    Defaults are the SemDeDup release's (facebookresearch/SemDeDup: ``clustering/configs/openclip/
    clustering_configs.yaml`` sets ``niter: 100``, ``seed: 1234``, ``Kmeans_with_cos_dist: True``;
    ``clustering/clustering.py`` builds ``faiss.Kmeans(..., niter, seed=seed, spherical=...)`` without
    touching faiss's sampling, which trains on at most ``max_points_per_centroid`` = 256 points per
    centroid; every point is then assigned). ``max_points_per_centroid=None`` trains on every point.
    """
    import faiss

    x = _as_unit(x)
    n, d = x.shape
    if n == 0:
        return KMeansResult(np.zeros((0, d), np.float32), np.zeros(0, np.int64), np.zeros(0, np.float32))
    k = max(1, min(k, n))
    gpu = faiss_gpus(use_gpu)
    km = faiss.Kmeans(
        d, k, niter=iters, seed=seed, spherical=True, gpu=gpu, verbose=False,
        max_points_per_centroid=max_points_per_centroid or max(256, -(-n // k)),
        min_points_per_centroid=1,  # stay quiet about small clusters (a warning, not the definition)
    )  # fmt: skip
    km.train(x)
    cent = _as_unit(km.centroids)
    index = faiss.IndexFlatIP(d)
    index.add(cent)
    _, lab = index.search(x, 1)
    labels = lab[:, 0].astype(np.int64)
    return KMeansResult(cent, labels, centroid_similarity(x, cent, labels), gpu)


def centroid_similarity(x: np.ndarray, centroids: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Cosine of each unit row to its own centroid, row by row (``einsum``, no BLAS blocking), so a
    row's value does not depend on which other rows share its batch: the Ray executor assigns shard
    by shard and must order cluster members exactly as the local pass does."""
    if len(x) == 0:
        return np.zeros(0, np.float32)
    return np.einsum("nd,nd->n", x, centroids[labels]).astype(np.float32)


def cluster_rng(seed: int, uids: Sequence[str]) -> np.random.Generator:
    """The ``keep: random`` generator of one cluster: seeded by the recipe seed and a digest of the
    cluster's sorted member uids, so the shuffle depends on the cluster's members only (not on the
    other clusters, their order, or which process visits them): the local and Ray executors agree."""
    digest = hashlib.sha256("\n".join(sorted(uids)).encode()).digest()
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, *np.frombuffer(digest[:16], np.uint32).tolist()])


def random_order(members: np.ndarray, uids: Sequence[str], seed: int) -> np.ndarray:
    """``members`` (with their ``uids``) shuffled for ``keep: random``: the members sorted by uid, then
    permuted by :func:`cluster_rng` (a function of the seed and the member set only)."""
    by_uid = np.argsort(np.asarray(uids, dtype=object).astype(str), kind="stable")
    return np.asarray(members)[by_uid][cluster_rng(seed, uids).permutation(len(members))]


def _cluster_order(
    members: np.ndarray,
    sim: np.ndarray,
    keep: Keep,
    rng: np.random.Generator,
    uids: Sequence[str] | None = None,
    seed: int = 0,
) -> np.ndarray:
    """Members in SemDeDup order. Cosine distance is 1 - sim; a stable sort keeps ties by index.
    ``keep="random"`` with ``uids`` (all rows') shuffles per cluster (:func:`random_order`); without,
    draws from the shared ``rng`` (the release's behaviour, used by :func:`semdedup_naive`)."""
    if keep == "hard":  # farthest from the centroid first: the paper's default
        return members[np.argsort(sim[members], kind="stable")]
    if keep == "easy":
        return members[np.argsort(-sim[members], kind="stable")]
    if keep == "random":
        if uids is not None:
            return random_order(members, [uids[int(i)] for i in members], seed)
        return rng.permutation(members)
    raise ValueError(f"keep={keep!r}; valid: hard, easy, random")


def _max_earlier(xc: np.ndarray, block: int) -> tuple[np.ndarray, np.ndarray]:
    """For ordered rows ``xc``: M[j] = max_{i<j} x_i·x_j and its argmax, O(block²) memory."""
    m = len(xc)
    best = np.full(m, -np.inf, np.float32)
    arg = np.full(m, -1, np.int64)
    for c0 in range(0, m, block):
        c1 = min(c0 + block, m)
        cols = xc[c0:c1]
        for r0 in range(0, c1, block):
            r1 = min(r0 + block, c1)
            s = xc[r0:r1] @ cols.T  # s[i, j] = S[r0 + i, c0 + j]
            if r1 > c0:  # the diagonal block: only i < j counts
                ii = np.arange(r0, r1)[:, None]
                jj = np.arange(c0, c1)[None, :]
                s = np.where(ii < jj, s, -np.inf)
            a = np.argmax(s, axis=0)
            v = s[a, np.arange(c1 - c0)]
            better = v > best[c0:c1]
            best[c0:c1] = np.where(better, v, best[c0:c1])
            arg[c0:c1] = np.where(better, a + r0, arg[c0:c1])
    return best, arg


def _greedy(
    xc: np.ndarray, threshold: float, block: int, protected: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Greedy variant: member j is compared with earlier *kept* members only."""
    m = len(xc)
    removed = np.zeros(m, bool)
    best = np.full(m, -np.inf, np.float32)
    arg = np.full(m, -1, np.int64)
    kept_idx: list[int] = []
    for c0 in range(0, m, block):
        c1 = min(c0 + block, m)
        cols = xc[c0:c1]
        for r0 in range(0, len(kept_idx), block):  # kept members of earlier blocks, block by block
            rows = np.asarray(kept_idx[r0 : r0 + block])
            s = xc[rows] @ cols.T
            a = np.argmax(s, axis=0)
            v = s[a, np.arange(c1 - c0)]
            better = v > best[c0:c1]
            best[c0:c1] = np.where(better, v, best[c0:c1])
            arg[c0:c1] = np.where(better, rows[a], arg[c0:c1])
        s_in = cols @ cols.T
        kept_in = np.zeros(c1 - c0, bool)
        for j in range(c1 - c0):  # inside the block the decision is sequential
            v = np.where(kept_in[:j], s_in[:j, j], -np.inf)
            if j:
                a = int(np.argmax(v))
                if v[a] > best[c0 + j]:
                    best[c0 + j], arg[c0 + j] = v[a], c0 + a
            drop = bool(best[c0 + j] > threshold) and not protected[c0 + j]
            kept_in[j] = not drop
            if drop:
                removed[c0 + j] = True
            else:
                kept_idx.append(c0 + j)
    return removed, best, arg


def _epsilons(epsilons: Sequence[float]) -> list[float]:
    eps = sorted(set(float(e) for e in epsilons))
    if not eps or any(not 0 < e < 1 for e in eps):
        raise ValueError(f"epsilons must be a non-empty list of values in (0, 1), got {list(epsilons)}")
    return eps


def semdedup_clusters(
    x: np.ndarray,
    labels: np.ndarray,
    similarity: np.ndarray,
    epsilons: Sequence[float],
    keep: Keep = "hard",
    variant: Variant = "paper",
    block_size: int = 4096,
    seed: int = 0,
    kept_before: np.ndarray | None = None,
    uids: Sequence[str] | None = None,
) -> SemDedupResult:
    """SemDeDup given a clustering (``labels`` and each vector's cosine similarity to its centroid).

    ``kept_before`` (bool mask) marks vectors kept by an earlier, committed run: they go first in
    their cluster's order and are never removed, so new vectors are judged against them.
    ``uids`` (one per row): with ``keep="random"`` each cluster is shuffled by its own generator
    (:func:`cluster_rng`: seed + the cluster's uids), not by one generator shared across clusters.
    """
    x = _as_unit(x)
    n = len(x)
    labels = np.asarray(labels, np.int64)
    similarity = np.asarray(similarity, np.float32)
    eps_list = _epsilons(epsilons)
    if block_size < 2:
        raise ValueError(f"block_size must be >= 2, got {block_size}")
    if variant not in ("paper", "greedy"):
        raise ValueError(f"variant={variant!r}; valid: paper, greedy")
    rng = np.random.default_rng(seed)
    best = np.full(n, -np.inf, np.float32)
    arg = np.full(n, -1, np.int64)
    removed = {e: np.zeros(n, bool) for e in eps_list}
    order = np.argsort(labels, kind="stable")
    bounds = np.flatnonzero(np.diff(labels[order])) + 1
    for members in np.split(order, bounds) if n else []:
        ordered = _cluster_order(members, similarity, keep, rng, uids, seed)
        if kept_before is not None:
            ordered = ordered[np.argsort(~kept_before[ordered], kind="stable")]
        xc = x[ordered]
        if variant == "paper":
            b, a = _max_earlier(xc, block_size)
            best[ordered] = b
            arg[ordered] = np.where(a >= 0, ordered[np.maximum(a, 0)], -1)
            for e in eps_list:
                removed[e][ordered] = b > 1 - e
        else:
            for e in eps_list:  # the greedy kept set depends on eps: one pass per eps
                protected = kept_before[ordered] if kept_before is not None else np.zeros(len(ordered), bool)
                r, b, a = _greedy(xc, 1 - e, block_size, protected)
                removed[e][ordered] = r
                if e == eps_list[0]:
                    best[ordered] = b
                    arg[ordered] = np.where(a >= 0, ordered[np.maximum(a, 0)], -1)
    if kept_before is not None:
        for e in eps_list:
            removed[e] &= ~kept_before
    return SemDedupResult(labels, similarity, best, arg, removed)


def representatives(labels: np.ndarray, similarity: np.ndarray, k: int) -> np.ndarray:
    """Index of the member nearest each centroid (highest similarity; ties: lowest index); -1 if empty."""
    rep = np.full(k, -1, np.int64)
    if len(labels) == 0:
        return rep
    order = np.lexsort((np.arange(len(labels)), -similarity, labels))  # by label, then best first
    first = np.ones(len(order), bool)
    first[1:] = labels[order][1:] != labels[order][:-1]
    rep[labels[order][first]] = order[first]
    return rep


def semdedup(
    x: np.ndarray,
    n_clusters: int,
    epsilons: Sequence[float],
    keep: Keep = "hard",
    variant: Variant = "paper",
    block_size: int = 4096,
    kmeans_iters: int = 20,
    seed: int = 0,
    use_gpu: Literal["auto", "yes", "no"] = "auto",
) -> SemDedupResult:
    """Spherical k-means then :func:`semdedup_clusters`; also fills ``representative``."""
    km = spherical_kmeans(x, n_clusters, kmeans_iters, seed, use_gpu)
    res = semdedup_clusters(x, km.labels, km.similarity, epsilons, keep, variant, block_size, seed)
    res.representative = representatives(km.labels, km.similarity, len(km.centroids))
    return res


def pick_epsilon(result: SemDedupResult, target_size: int) -> float:
    """The eps whose kept count is nearest ``target_size`` (ties: the smaller eps, i.e. fewer removed)."""
    return min(result.removed, key=lambda e: (abs(result.kept_count(e) - target_size), e))


def semdedup_naive(
    x: np.ndarray,
    epsilons: Sequence[float],
    labels: np.ndarray | None = None,
    similarity: np.ndarray | None = None,
    keep: Keep = "hard",
    seed: int = 0,
) -> dict[float, np.ndarray]:
    """Reference for tests and benchmarks: the release's code, literally, on the full ``S`` matrix.

    With ``labels=None`` all vectors form one cluster (global all-pairs, ordered by the normalised
    mean). Returns eps -> removed mask. Memory is O(m²) per cluster: for small inputs only.
    """
    x = _as_unit(x)
    n = len(x)
    if labels is None:
        labels = np.zeros(n, np.int64)
        c = x.mean(axis=0)
        similarity = x @ (c / max(float(np.linalg.norm(c)), 1e-12))
    rng = np.random.default_rng(seed)
    removed = {float(e): np.zeros(n, bool) for e in _epsilons(epsilons)}
    for lab in np.unique(labels):
        ordered = _cluster_order(np.flatnonzero(labels == lab), np.asarray(similarity, np.float32), keep, rng)
        xc = x[ordered]
        s = xc @ xc.T
        m = np.triu(s, k=1).max(axis=0)  # the release: torch.max(torch.triu(S, diagonal=1), dim=0)
        for e in removed:
            removed[e][ordered] = m > 1 - e
    return removed
