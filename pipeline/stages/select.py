"""DenseFusion selection: cluster the image embeddings and keep a fixed number per cluster.

DenseFusion-1M (Li et al. 2024, sec. 3.1) chose its 1M images from LAION-2B by semantic
clustering + SemDeDup and then kept a fixed quota per cluster, so every concept is represented
about equally. §3.1: "we employ k-means clustering on images features extracted via EVA-CLIP to
create 50,000 clusters. We set the threshold ε = 0.4 to remove semantic duplicated images within each
cluster ... Finally, we select the top 20 images from each cluster": the quota is taken from the
*same* clusters SemDeDup used. ``clusters: semdedup`` does that (and ``auto``, the default, does it
whenever a ``semdedup`` stage clustered the samples, falling back to ``kmeans`` otherwise): it reads each
sample's cluster from the ``semdedup`` rows of the ``dedup`` table and recomputes the cluster's
centroid as the normalised mean of all its members (removed duplicates included), which is what a
spherical k-means update step computes. ``clusters: kmeans`` runs a second spherical k-means
(faiss) into ``n_clusters`` on the survivors instead (a Loupe addition). Then per cluster the top
``per_cluster`` by ``score`` (higher first; ties by uid); the paper does not say how "top" ranks:

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
import pyarrow.compute as pc

from loupe.pipeline.errors import RecipeError
from loupe.pipeline.stage import Stage, StageOutput
from loupe.pipeline.stages.dedup.semdedup import representatives, spherical_kmeans
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

    def _semdedup_cluster_of(self) -> dict[str, int | None]:
        t = self.ctx.run.read_table("dedup", ["uid", "method", "cluster"])
        t = t.filter(pc.equal(t["method"], "semdedup"))
        return dict(zip(t["uid"].to_pylist(), t["cluster"].to_pylist()))

    def _semdedup_clusters(
        self, uids: list[str], model: str | None, cluster_of: dict[str, int | None]
    ) -> tuple[np.ndarray, np.ndarray, int]:
        """Labels and cosine-to-centroid of ``uids`` in the clusters the ``semdedup`` stage made."""
        missing = [u for u in uids if cluster_of.get(u) is None]
        if missing:
            raise RecipeError(
                f"{self.ctx.stage_name}: clusters: semdedup needs a semdedup stage before select "
                f"({len(missing)} samples have no SemDeDup cluster, e.g. {missing[0]}); or set clusters: kmeans"
            )
        members = sorted(u for u, c in cluster_of.items() if c is not None)
        allvec = load_vectors(self.ctx.run, members, "image", model=model)
        ids = sorted({cluster_of[u] for u in allvec.uids})
        index = {c: i for i, c in enumerate(ids)}
        lab_all = np.array([index[cluster_of[u]] for u in allvec.uids], np.int64)
        cent = np.zeros((len(ids), allvec.matrix.shape[1]), np.float32)
        np.add.at(cent, lab_all, allvec.matrix)
        cent /= np.maximum(np.linalg.norm(cent, axis=1, keepdims=True), 1e-12)
        pos = {u: i for i, u in enumerate(allvec.uids)}
        rows = np.array([pos[u] for u in uids], np.int64)
        labels = lab_all[rows]
        sim = np.einsum("ij,ij->i", allvec.matrix[rows], cent[labels]).astype(np.float32)
        return np.array([ids[i] for i in labels], np.int64), sim, len(ids)

    def __call__(self, batch: pa.Table) -> StageOutput:
        cfg = self.config
        batch_uids = sorted(batch["uid"].to_pylist())  # same result whatever the shard order
        vec, prior, earlier = vectors_with_earlier(self.ctx, self.table, batch_uids, self.name)
        old = set(earlier)
        cluster_of = self._semdedup_cluster_of() if cfg.clusters != "kmeans" else {}
        source = cfg.clusters
        if source == "auto":
            source = (
                "semdedup"
                if cluster_of and all(cluster_of.get(u) is not None for u in vec.uids)
                else "kmeans"
            )
        if source == "semdedup":
            labels, similarity, n_clusters = self._semdedup_clusters(vec.uids, vec.model, cluster_of)
            offset = 0  # the semdedup stage's cluster ids (and its clusters rows) stand
        else:
            km = spherical_kmeans(vec.matrix, cfg.n_clusters, cfg.kmeans_iters, cfg.seed, "auto")
            labels, similarity, n_clusters = km.labels, km.similarity, len(km.centroids)
            rep = representatives(labels, similarity, n_clusters)
            offset = write_clusters(self.ctx, "select", labels, rep, vec.uids, batch_uids)
        score = self._score(vec.uids, vec.matrix, similarity, vec.model)
        keep_all = select_per_cluster(labels, score, vec.uids, cfg.per_cluster, prior)

        idx = np.flatnonzero(~prior)  # rows are written for this run's samples only
        uids = [vec.uids[i] for i in idx]
        keep, cluster, score = keep_all[idx], labels[idx] + offset, score[idx]
        rows = pa.Table.from_arrays(
            [
                pa.array(uids, pa.string()),
                pa.array(["select"] * len(uids), pa.string()),
                pa.array(cluster, pa.int64()),
                pa.nulls(len(uids), pa.string()),
                pa.array(similarity[idx], pa.float32()),
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
                "clusters": n_clusters,
                "cluster_source": source,
                "compared_with_earlier": len(earlier),
                "embedding_model": vec.model,
            },
        )
