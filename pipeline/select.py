"""DenseFusion selection: cluster the image embeddings and keep a fixed number per cluster.

DenseFusion-1M (Li et al. 2024, sec. 3.1) chose its 1M images from LAION-2B by semantic
clustering + SemDeDup and then kept a fixed quota per cluster, so every concept is represented
about equally. Here: spherical k-means (faiss) into ``n_clusters``, then per cluster the top
``per_cluster`` by ``score`` (higher first; ties by uid):

* ``centroid_similarity`` - most prototypical first (cosine to the centroid);
* ``centroid_distance`` - most atypical first (1 - cosine);
* ``clip_score`` - best image-text agreement first (needs text vectors: ``embed`` with ``text: true``;
  samples without alt-text rank last).

Writes ``dedup`` rows (method ``select``, cluster, kept, similarity = cosine to the centroid),
``clusters`` rows and ``not_selected`` drops. Samples without an image vector cannot be ranked and
are dropped as ``no_embedding``. A resumed run with new samples re-clusters them with the samples
selected before, which keep their places; new samples compete for what is left of each quota.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from loupe.pipeline.dedup.semdedup import representatives, spherical_kmeans
from loupe.pipeline.errors import RecipeError
from loupe.pipeline.stage import Stage, StageOutput
from loupe.pipeline.vectors import load_vectors, vectors_with_earlier, write_clusters
from loupe.schemas.tables import DEDUP, drops_table


def select_per_cluster(
    labels: np.ndarray,
    score: np.ndarray,
    uids: list[str],
    per_cluster: int,
    kept_before: np.ndarray | None = None,
) -> np.ndarray:
    """Bool mask: the ``per_cluster`` highest scores of each cluster (ties: smaller uid first).

    ``kept_before`` marks samples selected by an earlier run: they fill their cluster's quota first
    and always stay.
    """
    prior = np.zeros(len(labels), bool) if kept_before is None else kept_before
    order = np.lexsort((np.asarray(uids), -score, ~prior, labels))  # by cluster, best first
    rank = np.empty(len(order), np.int64)
    sorted_labels = labels[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_labels)) + 1] if len(order) else np.zeros(0, np.int64)
    first = np.zeros(len(order), np.int64)
    first[starts] = starts
    first = np.maximum.accumulate(first) if len(order) else first
    rank[order] = np.arange(len(order)) - first
    return (rank < per_cluster) | prior


class Select(Stage):
    name = "select"
    table = "dedup"
    reads = ("uid",)
    is_global = True

    def _score(self, uids: list[str], x: np.ndarray, sim: np.ndarray, model: str | None) -> np.ndarray:
        kind = self.config.score
        if kind == "centroid_similarity":
            return sim
        if kind == "centroid_distance":
            return 1.0 - sim
        text = load_vectors(self.ctx.run, uids, "text", model=model)
        if not text.uids:
            raise RecipeError(
                f"{self.ctx.stage_name}: score: clip_score needs text embeddings of {model!r}; add "
                "`text: true` to the embed stage (backend: open_clip) or use score: centroid_similarity"
            )
        pos = {u: i for i, u in enumerate(uids)}
        out = np.full(len(uids), -np.inf, np.float32)
        rows = np.array([pos[u] for u in text.uids])
        out[rows] = np.einsum("ij,ij->i", x[rows], text.matrix)
        return out

    def __call__(self, batch: pa.Table) -> StageOutput:
        cfg = self.config
        batch_uids = sorted(batch["uid"].to_pylist())  # same result whatever the shard order
        vec, prior, earlier = vectors_with_earlier(self.ctx, self.table, batch_uids, self.name)
        old = set(earlier)
        km = spherical_kmeans(vec.matrix, cfg.n_clusters, 20, cfg.seed, "auto")
        score = self._score(vec.uids, vec.matrix, km.similarity, vec.model)
        keep_all = select_per_cluster(km.labels, score, vec.uids, cfg.per_cluster, prior)
        rep = representatives(km.labels, km.similarity, len(km.centroids))
        offset = write_clusters(self.ctx, "select", km.labels, rep, vec.uids, batch_uids)

        idx = np.flatnonzero(~prior)  # rows are written for this run's samples only
        uids = [vec.uids[i] for i in idx]
        keep, cluster, score = keep_all[idx], km.labels[idx] + offset, score[idx]
        rows = pa.Table.from_arrays(
            [
                pa.array(uids, pa.string()),
                pa.array(["select"] * len(uids), pa.string()),
                pa.array(cluster, pa.int64()),
                pa.nulls(len(uids), pa.string()),
                pa.array(km.similarity[idx], pa.float32()),
                pa.array(keep, pa.bool_()),
            ],
            schema=DEDUP,
        )
        drops = [
            self.drop(u, "no_embedding", "no image vector to cluster") for u in vec.missing if u not in old
        ]
        drops += [
            self.drop(
                uids[j],
                "not_selected",
                f"cluster {cluster[j]}: {cfg.score} {score[j]:.4f} below the top {cfg.per_cluster}",
            )
            for j in np.flatnonzero(~keep)
        ]
        return StageOutput(
            rows=rows,
            drops=drops_table(drops),
            metrics={
                "selected": int(keep.sum()),
                "clusters": len(km.centroids),
                "compared_with_earlier": len(earlier),
                "embedding_model": vec.model,
            },
        )
