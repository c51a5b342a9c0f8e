"""The ``semdedup`` stage: SemDeDup over the run's image embeddings (see :mod:`.semdedup` for the rule).

Writes one ``dedup`` row per embedded sample (method ``semdedup``, its k-means ``cluster``, ``kept``,
``similarity`` = M[j], the highest cosine similarity to an earlier member of its cluster, and for a
removed sample ``duplicate_of`` = that earlier member), one ``clusters`` row per cluster (size and
the member nearest the centroid) and a ``drops`` row (reason ``semantic_duplicate``) per removed
sample. Metrics report the kept count for every epsilon in ``epsilon`` + ``epsilons``.

Samples without an image embedding (no ``embed`` stage ran on them) are kept and counted as
``missing_embedding``. The stage is global over the samples live when it runs; a later run that
adds samples deduplicates the new ones among themselves.
"""

from __future__ import annotations

import time

import numpy as np
import pyarrow as pa

from loupe.pipeline.dedup.semdedup import (
    pick_epsilon,
    representatives,
    semdedup_clusters,
    spherical_kmeans,
)
from loupe.pipeline.errors import RecipeError
from loupe.pipeline.stage import Stage, StageOutput
from loupe.pipeline.vectors import load_vectors, write_clusters
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
        batch_uids = batch["uid"].to_pylist()
        vec = load_vectors(self.ctx.run, batch_uids, "image")
        if not vec.uids:
            raise RecipeError(
                f"{self.ctx.stage_name}: no image embeddings for the {len(batch_uids)} live samples; "
                "add an `embed` stage before `semdedup`"
            )
        t0 = time.time()
        km = spherical_kmeans(vec.matrix, cfg.n_clusters, cfg.kmeans_iters, cfg.seed, cfg.use_gpu)
        t1 = time.time()
        eps_all = sorted({cfg.epsilon, *cfg.epsilons})
        res = semdedup_clusters(
            vec.matrix, km.labels, km.similarity, eps_all, cfg.keep, cfg.variant, cfg.block_size, cfg.seed
        )
        t2 = time.time()
        eps = pick_epsilon(res, cfg.target_size) if cfg.target_size else cfg.epsilon
        removed = res.removed[eps]
        uids = vec.uids
        rep = representatives(km.labels, km.similarity, len(km.centroids))
        n_clusters = write_clusters(self.ctx, "semdedup", km.labels, rep, uids, batch_uids)

        dup_of = [
            uids[a] if r and a >= 0 else None for r, a in zip(removed.tolist(), res.duplicate_of.tolist())
        ]
        m = res.max_similarity
        rows = pa.Table.from_arrays(
            [
                pa.array(uids, pa.string()),
                pa.array(["semdedup"] * len(uids), pa.string()),
                pa.array(km.labels, pa.int64()),
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
                    f"cosine {m[j]:.4f} > 1 - eps ({1 - eps:.4f}) in cluster {km.labels[j]}",
                    dup_of[j],
                )
                for j in np.flatnonzero(removed)
            ]
        )
        metrics = {
            "epsilon": eps,
            **{eps_key(e): res.kept_count(e) for e in eps_all},
            "clusters": n_clusters,
            "embedding_model": vec.model,
            "missing_embedding": len(vec.missing),
            "kmeans_gpu": km.gpu,
            "kmeans_seconds": round(t1 - t0, 3),
            "semdedup_seconds": round(t2 - t1, 3),
        }
        return StageOutput(rows=rows, drops=drops, metrics=metrics)


def _nan_to_null(m: np.ndarray) -> pa.Array:
    """M[j] as float32, null for the first member of a cluster (no earlier member to compare)."""
    return pa.array(m.astype(np.float32), pa.float32(), mask=~np.isfinite(m))
