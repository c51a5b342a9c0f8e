"""SemDeDup on Ray Data, as the release and NeMo Curator run it at scale: no process holds all vectors.

Three steps over a Ray ``Dataset`` with columns ``idx`` (int64, the vector's position in the
input order) and ``vector`` (``dim`` floats), plus an optional bool ``prior`` (kept by an earlier run):

1. **k-means on a sample, in one task.** faiss trains on at most ``max_points_per_centroid`` (256)
   points per centroid (the release's ``clustering/clustering.py`` keeps faiss's default sampling);
   faiss draws them as the first ``k * 256`` of ``rand_perm(n, seed)`` (faiss
   ``Clustering.cpp``, ``subsample_training_set``). We draw the same indices on the driver, pull only
   those rows out of the shards with a filter map, and train in one task on them *in that order*,
   so faiss sees exactly the input it sees in :func:`~.semdedup.spherical_kmeans`: same centroids.
2. **Assignment** of every vector to its nearest centroid: a ``map_batches`` over the shards
   (NeMo Curator's ``KMeans`` predict step), with the centroids broadcast once.
3. **The within-cluster rule** (:func:`~.semdedup.semdedup_clusters`, ARCHITECTURE.md's
   definition: ``M[j]`` over all earlier members) as ``groupby("cluster").map_groups``: each
   cluster in its own task, members sorted by ``idx`` first so ties in the order break as locally.

Result: one row per vector (``idx``, ``cluster``, ``similarity``, ``max_similarity``,
``duplicate_of`` as an ``idx`` or -1, and ``removed`` as a list of bools, one per sorted epsilon).
``keep="random"`` is refused: the local rule shuffles with one generator across clusters in order,
which a per-cluster task cannot reproduce.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import pyarrow as pa

from loupe.pipeline.stages.dedup.semdedup import (
    Keep,
    Variant,
    _as_unit,
    _epsilons,
    centroid_similarity,
    faiss_gpus,
    semdedup_clusters,
)

#: faiss's ``IndexFlatIP.search`` uses BLAS from this many queries on (``distance_compute_blas_threshold``)
#: and a per-row kernel below it; a batch is padded to it so every row is scored by the same kernel.
_BLAS_MIN = 20


def sample_indices(n: int, k: int, seed: int, max_points_per_centroid: int | None) -> np.ndarray:
    """The input positions faiss k-means trains on, in faiss's order (all of them when n <= k * max)."""
    import faiss

    k = max(1, min(k, n))
    cap = max_points_per_centroid or max(256, -(-n // k))
    if n <= k * cap:
        return np.arange(n, dtype=np.int64)
    perm = np.zeros(n, np.int32)
    faiss.rand_perm(faiss.swig_ptr(perm), n, seed)  # faiss Clustering.cpp subsample_training_set
    return perm[: k * cap].astype(np.int64)


def _matrix(col: Any) -> np.ndarray:
    """A ``vector`` column of a numpy batch (2-D, or an object array of rows) as float32 (b, d)."""
    arr = np.asarray(col)
    if arr.dtype == object:
        arr = np.stack([np.asarray(v, np.float32) for v in arr]) if len(arr) else np.zeros((0, 0), np.float32)
    return np.ascontiguousarray(arr, dtype=np.float32)


def _train(blocks: list[Any], sample: np.ndarray, k: int, iters: int, seed: int, use_gpu: str) -> np.ndarray:
    """Train spherical k-means on the sample rows (Arrow block refs), in ``sample`` order."""
    import faiss
    import ray

    tables = [t for t in ray.get(blocks) if t.num_rows]
    t = pa.concat_tables(tables) if tables else None
    idx = t["idx"].to_numpy() if t is not None else np.zeros(0, np.int64)
    pos = {int(i): p for p, i in enumerate(sample.tolist())}
    order = np.argsort([pos[int(i)] for i in idx], kind="stable")
    x = _as_unit(_matrix(t.column("vector").to_numpy(zero_copy_only=False))[order])
    n, d = x.shape
    k = max(1, min(k, n))
    km = faiss.Kmeans(
        d, k, niter=iters, seed=seed, spherical=True, gpu=faiss_gpus(use_gpu), verbose=False,
        max_points_per_centroid=max(1, -(-n // k)), min_points_per_centroid=1,
    )  # fmt: skip
    km.train(x)  # n <= k * max_points_per_centroid here: faiss trains on every row given, as ordered
    return _as_unit(km.centroids)


def _keep_sample(batch: dict[str, np.ndarray], sample: np.ndarray) -> dict[str, np.ndarray]:
    keep = np.isin(batch["idx"], sample)
    return {c: v[keep] for c, v in batch.items()}


def _assign(batch: dict[str, np.ndarray], centroids: Any) -> dict[str, np.ndarray]:
    """Nearest centroid (inner product of unit vectors) and the cosine to it, per row."""
    import faiss
    import ray

    cent = ray.get(centroids) if isinstance(centroids, ray.ObjectRef) else centroids
    x = _as_unit(_matrix(batch["vector"]))
    b = len(x)
    q = np.vstack([x, np.repeat(x[:1], _BLAS_MIN - b, axis=0)]) if 0 < b < _BLAS_MIN else x
    index = faiss.IndexFlatIP(cent.shape[1])
    index.add(cent)
    _, lab = index.search(q, 1) if b else (None, np.zeros((0, 1), np.int64))
    labels = lab[:b, 0].astype(np.int64)
    return {**batch, "cluster": labels, "similarity": centroid_similarity(x, cent, labels)}


def _cluster_rule(
    batch: dict[str, np.ndarray], eps: list[float], keep: Keep, variant: Variant, block_size: int
) -> dict[str, np.ndarray]:
    """SemDeDup inside one cluster; members ordered by ``idx`` first, as the local pass has them."""
    order = np.argsort(batch["idx"], kind="stable")
    idx = batch["idx"][order]
    x = _matrix(batch["vector"])[order]
    sim = np.asarray(batch["similarity"], np.float32)[order]
    prior = np.asarray(batch["prior"], bool)[order] if "prior" in batch else None
    res = semdedup_clusters(
        x, np.zeros(len(idx), np.int64), sim, eps, keep, variant, block_size, kept_before=prior
    )
    dup = np.where(res.duplicate_of >= 0, idx[np.maximum(res.duplicate_of, 0)], -1)
    return {
        "idx": idx,
        "cluster": np.asarray(batch["cluster"])[order],
        "similarity": sim,
        "max_similarity": res.max_similarity,
        "duplicate_of": dup.astype(np.int64),
        "removed": np.stack([res.removed[e] for e in eps], axis=1),
    }


def semdedup_ray(
    ds: Any,
    n: int,
    n_clusters: int,
    epsilons: Sequence[float],
    keep: Keep = "hard",
    variant: Variant = "paper",
    block_size: int = 4096,
    kmeans_iters: int = 100,
    seed: int = 1234,
    use_gpu: Literal["auto", "yes", "no"] = "auto",
    max_points_per_centroid: int | None = 256,
    num_cpus: float = 1,
    num_gpus: float = 0,
    num_partitions: int | None = None,
) -> tuple[Any, np.ndarray]:
    """SemDeDup of the ``n`` vectors of ``ds`` (``idx`` = 0..n-1); returns (result dataset, centroids).

    The kept sets equal :func:`~.semdedup.spherical_kmeans` + :func:`~.semdedup.semdedup_clusters` on
    the same vectors in ``idx`` order. The result is lazy: the caller writes or iterates it.
    ``num_partitions`` of the cluster shuffle defaults to ``min(n_clusters, 200)``.
    """
    import ray

    if keep == "random":
        raise ValueError(
            "keep: random is not supported under Ray (its shuffle spans clusters); use hard or easy"
        )
    eps = _epsilons(epsilons)
    if n == 0:
        raise ValueError("semdedup_ray: no vectors")
    sample = sample_indices(n, n_clusters, seed, max_points_per_centroid)
    picked = ds.map_batches(_keep_sample, fn_kwargs={"sample": sample}, batch_format="numpy").materialize()
    train = ray.remote(_train).options(num_cpus=num_cpus, num_gpus=num_gpus)
    centroids = ray.get(train.remote(picked.to_arrow_refs(), sample, n_clusters, kmeans_iters, seed, use_gpu))
    cref = ray.put(centroids)
    assigned = ds.map_batches(_assign, fn_kwargs={"centroids": cref}, batch_format="numpy")
    out = assigned.groupby(
        "cluster", num_partitions=num_partitions or max(1, min(n_clusters, 200))
    ).map_groups(
        _cluster_rule,
        fn_kwargs={"eps": eps, "keep": keep, "variant": variant, "block_size": block_size},
        batch_format="numpy",
    )
    return out, centroids
