"""The ``semdedup`` stage: SemDeDup over the run's image embeddings (see :mod:`.semdedup` for the rule).

Writes one ``dedup`` row per embedded sample (method ``semdedup``, its k-means ``cluster``, ``kept``,
``similarity`` = M[j], the highest cosine similarity to an earlier member of its cluster, and for a
removed sample ``duplicate_of`` = that earlier member), one ``clusters`` row per cluster (size and
the member nearest the centroid) and a ``drops`` row (reason ``semantic_duplicate``) per removed
sample. Metrics report the kept count for every epsilon in ``epsilon`` + ``epsilons``.

Samples without an image embedding (no ``embed`` stage ran on them) are kept and counted as
``missing_embedding``. The stage is global over the samples live when it runs. A resumed run that
brings new samples clusters them together with the samples this stage kept before; those come
first in their cluster's order and stay kept, so only new samples can be removed (as duplicates of
old or new ones). Cluster ids of such a run are offset past the earlier ones.

``keep: random`` shuffles each cluster with its own generator, seeded from the recipe ``seed`` and a
digest of the cluster's sorted member uids (:func:`~.semdedup.cluster_rng`): the order depends only
on the cluster's members, so the Ray executor's per-group tasks give the local result. (Until
2026-11 one generator shuffled the clusters in turn, so ``random`` results of older runs differ, and
``--executor ray`` refused ``random``.)
"""

from __future__ import annotations

import time

import numpy as np
import pyarrow as pa

from loupe.pipeline.stage import Stage, StageOutput
from loupe.pipeline.stages.dedup.semdedup import (
    pick_epsilon,
    representatives,
    semdedup_clusters,
    spherical_kmeans,
)
from loupe.pipeline.vectors import vectors_with_earlier, write_clusters
from loupe.schemas.tables import DEDUP, drops_table


def eps_key(eps: float) -> str:
    return f"kept_eps_{eps:g}"


class SemDedupStage(Stage):
    name = "semdedup"
    table = "dedup"
    reads = ("uid",)
    is_global = True

    def __call__(self, batch: pa.Table) -> StageOutput:
        cfg = self.config
        batch_uids = sorted(batch["uid"].to_pylist())  # same result whatever the shard order
        vec, prior, _ = vectors_with_earlier(self.ctx, self.table, batch_uids, self.name)
        new = ~prior
        t0 = time.time()
        km = spherical_kmeans(
            vec.matrix, cfg.n_clusters, cfg.kmeans_iters, cfg.seed, cfg.use_gpu, cfg.max_points_per_centroid
        )
        t1 = time.time()
        eps_all = sorted({cfg.epsilon, *cfg.epsilons})
        res = semdedup_clusters(
            vec.matrix, km.labels, km.similarity, eps_all, cfg.keep, cfg.variant, cfg.block_size, cfg.seed,
            kept_before=~new, uids=vec.uids,
        )  # fmt: skip
        t2 = time.time()
        eps = pick_epsilon(res, cfg.target_size) if cfg.target_size else cfg.epsilon
        rep = representatives(km.labels, km.similarity, len(km.centroids))
        offset = write_clusters(self.ctx, "semdedup", km.labels, rep, vec.uids, batch_uids)

        idx = np.flatnonzero(new)  # rows are written for this run's samples only
        uids = [vec.uids[i] for i in idx]
        removed = res.removed[eps][idx]
        cluster = km.labels[idx] + offset
        m = res.max_similarity[idx]
        dup_of = [
            vec.uids[a] if r else None for r, a in zip(removed.tolist(), res.duplicate_of[idx].tolist())
        ]
        rows = pa.Table.from_arrays(
            [
                pa.array(uids, pa.string()),
                pa.array(["semdedup"] * len(uids), pa.string()),
                pa.array(cluster, pa.int64()),
                pa.array(dup_of, pa.string()),
                _nan_to_null(m),
                pa.array(~removed, pa.bool_()),
            ],
            schema=DEDUP,
        )
        drops = drops_table(
            [
                self.drop(
                    uids[j],
                    "semantic_duplicate",
                    f"cosine {m[j]:.4f} > 1 - eps ({1 - eps:.4f}) in cluster {cluster[j]}",
                    dup_of[j],
                )
                for j in np.flatnonzero(removed)
            ]
        )
        metrics = {
            "epsilon": eps,
            **{eps_key(e): int((~res.removed[e][idx]).sum()) for e in eps_all},
            "clusters": len(km.centroids),
            "compared_with_earlier": int((~new).sum()),
            "embedding_model": vec.model,
            "missing_embedding": len(batch_uids) - len(uids),
            "kmeans_gpu": km.gpu,
            "kmeans_seconds": round(t1 - t0, 3),
            "semdedup_seconds": round(t2 - t1, 3),
        }
        return StageOutput(rows=rows, drops=drops, metrics=metrics)


def _nan_to_null(m: np.ndarray) -> pa.Array:
    """M[j] as float32, null for the first member of a cluster (no earlier member to compare)."""
    return pa.array(m.astype(np.float32), pa.float32(), mask=~np.isfinite(m))
