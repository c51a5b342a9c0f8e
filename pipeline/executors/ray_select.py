"""``select`` under ``--executor ray``: one task per group of clusters, for every cluster source and score.

The cluster-group machinery is SemDeDup's (:mod:`loupe.pipeline.stages.dedup.semdedup_ray`): vectors
spilled by cluster to Arrow IPC files through the run's storage, one task per group of consecutive
clusters reading only its clusters' record batches. What differs by configuration:

* ``clusters: semdedup`` (:func:`~loupe.pipeline.executors.ray_semdedup.run_select`): each sample's
  cluster is the one SemDeDup recorded; a group task recomputes each centroid as the normalised mean
  of all its members (removed duplicates included), as :meth:`Select._semdedup_clusters` does;
* ``clusters: kmeans`` (:func:`run_select_kmeans`, and ``auto`` without SemDeDup clusters): spherical
  k-means into ``n_clusters`` on faiss's own sample in one task
  (:func:`~loupe.pipeline.stages.dedup.semdedup_ray.train_centroids`: the local
  :func:`~loupe.pipeline.stages.dedup.semdedup.spherical_kmeans`'s centroids), every vector assigned
  by the spill map (cluster + cosine to its centroid, the local values row by row), which also
  reports each block's member nearest each centroid: the driver merges them (O(k)) and writes the
  ``clusters`` rows (size, representative: highest cosine, ties by input position) before any group
  commits, as the local stage writes them before its rows;
* ``score: clip_score``: the group task reads its members' text vectors of the image vectors' model
  (:func:`~loupe.pipeline.vectors.load_vectors`, a filtered read of the ``embeddings`` shards) and
  scores image · text per row, as :meth:`Select._score` does; samples without text rank last.

:func:`select_group` is the one rule for all of them: :func:`~loupe.pipeline.stages.select.select_per_cluster`
per cluster (independent across clusters, ties by uid, earlier selections first), so a group's rows
are the local stage's rows for those clusters (tests/test_ray_select.py compares every source and score).
"""

from __future__ import annotations

import time
from contextlib import closing

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from loupe.pipeline.errors import RecipeError
from loupe.pipeline.executors.plan import Plan, StagePlan, stage_metrics
from loupe.pipeline.rundir import RunDir
from loupe.pipeline.stages.dedup import semdedup_ray as sr
from loupe.pipeline.storage import Storage
from loupe.pipeline.vectors import batch_digest
from loupe.schemas.tables import CLUSTERS, DEDUP, drops_table


def _score(kind: str, run: RunDir, uids: list[str], x: np.ndarray, sim: np.ndarray, model: str) -> np.ndarray:
    """As :meth:`loupe.pipeline.stages.select.Select._score`, for the rows ``uids`` (vectors ``x``)."""
    if kind == "centroid_similarity":
        return sim
    if kind == "centroid_distance":
        return 1.0 - sim
    from loupe.pipeline.vectors import load_vectors

    text = load_vectors(run, uids, "text", model=model)
    out = np.full(len(uids), -np.inf, np.float32)
    if text.uids:
        pos = {u: i for i, u in enumerate(uids)}
        rows = np.array([pos[u] for u in text.uids])
        out[rows] = np.einsum("ij,ij->i", x[rows], text.matrix)
    return out


def check_text(run: RunDir, stage_id: str, score: str, model: str) -> None:
    """``score: clip_score`` without any text vector of ``model``: the local stage's recipe error."""
    if score != "clip_score":
        return
    t = run.read_table("embeddings", ["model", "kind"])
    if not pc.any(pc.and_(pc.equal(t["kind"], "text"), pc.equal(t["model"], model))).as_py():
        raise RecipeError(
            f"{stage_id}: score: clip_score needs text embeddings of {model!r}; add "
            "`text: true` to the embed stage (backend: open_clip) or use score: centroid_similarity"
        )


def select_group(
    c0: int, c1: int, files: list[str], st: Storage, run: RunDir, stage_id: str, stage_name: str, cfg: dict
) -> dict:
    """The quota of clusters [c0, c1), committed by this task: ``dedup`` rows and ``not_selected``
    drops of this run's samples. Spill rows carry ``role`` (0: member only, 1: this run's sample, 2:
    selected by an earlier run) and, from k-means, ``similarity`` (else the centroids are the members'
    normalised means). Returns the counts and the task's peak RSS."""
    from loupe.pipeline.stages.select import select_per_cluster

    sr.reset_peak_rss()
    t, order = sr.read_group(st, files, c0, c1)
    t = t.take(pa.array(order))  # sorted by (cluster, idx): the local order (sums, ties)
    cl = t["cluster"].to_numpy()
    role = t["role"].to_numpy()
    x = sr._matrix(t["vector"])
    rows = np.flatnonzero(role > 0)
    if "similarity" in t.column_names:  # k-means: the assignment's cosine to the centroid
        sim = t["similarity"].to_numpy().astype(np.float32, copy=False)[rows]
    else:  # SemDeDup's clusters: centroid = normalised mean of every member
        ids, lab = np.unique(cl, return_inverse=True)
        cent = np.zeros((len(ids), x.shape[1]), np.float32)
        np.add.at(cent, lab, x)
        cent /= np.maximum(np.linalg.norm(cent, axis=1, keepdims=True), 1e-12)
        sim = np.einsum("ij,ij->i", x[rows], cent[lab[rows]]).astype(np.float32)
    uids = t["uid"].take(pa.array(rows)).to_pylist()
    score = _score(cfg["score"], run, uids, x[rows], sim, cfg["model"])
    prior = role[rows] == 2
    keep = select_per_cluster(cl[rows], score, uids, cfg["per_cluster"], prior)
    off = cfg.get("offset", 0)
    j = np.flatnonzero(~prior)  # rows are written for this run's samples only
    if cfg.get("done") is not None:  # a resumed batch: the killed run committed these (whole groups)
        import ray

        done = cfg["done"]
        done = ray.get(done) if isinstance(done, ray.ObjectRef) else done
        j = j[
            ~pc.is_in(pa.array([uids[i] for i in j], pa.string()), value_set=done).to_numpy(
                zero_copy_only=False
            )
        ]
    out = {"rows": 0, "drops": 0, "selected": 0, "peak_rss_mb": 0.0}
    if len(j):
        cluster = cl[rows][j] + off
        dedup = pa.Table.from_arrays(
            [
                pa.array([uids[i] for i in j], pa.string()),
                pa.array(["select"] * len(j), pa.string()),
                pa.array(cluster, pa.int64()),
                pa.nulls(len(j), pa.string()),
                pa.array(sim[j], pa.float32()),
                pa.array(keep[j], pa.bool_()),
            ],
            schema=DEDUP,
        )
        drops = drops_table(
            [
                {
                    "uid": uids[i],
                    "stage": stage_name,
                    "reason": "not_selected",
                    "detail": f"cluster {c}: {cfg['score']} {score[i]:.4f} below the top {cfg['per_cluster']}",
                }
                for i, c in zip(j.tolist(), cluster.tolist())
                if not keep[i]
            ]
        )
        run.commit(stage_id, "dedup", dedup, drops, [uids[i] for i in j])
        out.update(rows=dedup.num_rows, drops=drops.num_rows, selected=int(keep[j].sum()))
    out["peak_rss_mb"] = sr.peak_rss_mb()
    return out


def run_groups(sp: StagePlan, groups: list[tuple[int, int]], args: tuple) -> dict:
    """:func:`select_group` over every group (tasks that commit: no retry); the summed counts."""
    from loupe.pipeline.executors import ray_semdedup

    tot: dict = {"rows": 0, "drops": 0, "selected": 0, "peak_rss_mb": 0.0}
    with closing(
        sr.map_groups(select_group, groups, args, sp.config.resources.num_cpus or 1, retries=0)
    ) as it:
        for _, r in it:
            for k in ("rows", "drops", "selected"):
                tot[k] += r[k]
            tot["peak_rss_mb"] = max(tot["peak_rss_mb"], r["peak_rss_mb"])
            ray_semdedup.checkpoint("group_committed", stage=sp.id)
    return tot


def drop_missing(run: RunDir, sp: StagePlan, batch: list[str], rows: pa.Table) -> int:
    """Samples of ``batch`` without an image vector (not in ``rows``): dropped as ``no_embedding``,
    as the local stage does. Returns how many."""
    have = set(rows["uid"].to_pylist())
    missing = [u for u in batch if u not in have]
    if missing:
        drops = drops_table(
            [{"uid": u, "stage": sp.cls.name, "reason": "no_embedding", "detail": "no image vector to cluster"}
             for u in missing]
        )  # fmt: skip
        run.commit(sp.id, "dedup", None, drops, missing)
    return len(missing)


class NothingToDo(Exception):
    """Every live sample is already covered by the stage's committed shards: a driver killed after the
    last group's commit, before the stage was marked complete, left nothing to compute."""

    def __init__(self, skipped: int):
        super().__init__(f"nothing to do: {skipped} samples already done")
        self.skipped = skipped

    def finish(self, plan: Plan, sp: StagePlan, t0: float) -> dict:
        """Mark the stage complete with 0 new samples (what the local executor records for an empty todo),
        the killed run's spill removed."""
        from loupe.pipeline.executors.ray_semdedup import _drop_scratch, scratch_dir

        _drop_scratch(plan.run, scratch_dir(plan.run, sp.id), sp.id)
        res = sp.config.resources
        m = stage_metrics(0, 0, 0, time.time() - t0, self.skipped, table=sp.table, executor="ray",
                          num_cpus=res.num_cpus, num_gpus=res.num_gpus)  # fmt: skip
        plan.run.update_stage(sp.id, status="complete", **m)
        return m


def select_input(plan: Plan, sp: StagePlan) -> tuple:
    """The live, done and todo uids, the batch (todo sorted), the samples selected before, and the
    ordered ``(uid, prior)`` rows with an image vector of the chosen model (the local stage's input).
    Raises :class:`NothingToDo` when every live sample is done."""
    from loupe.pipeline.executors.ray_semdedup import ordered_input
    from loupe.pipeline.vectors import kept_before

    run = plan.run
    live = run.live_uids()
    done = run.done_uids(sp.id, sp.table)
    todo = live - done
    if not todo:
        raise NothingToDo(len(live & done))
    batch = sorted(todo)
    earlier = kept_before(plan.context(sp.id), sp.table, batch)
    rows, model = ordered_input(run, earlier, batch, sp.id)
    if model is None or rows.num_rows == int(pc.sum(rows["prior"].cast(pa.int64())).as_py() or 0):
        raise RecipeError(
            f"{sp.id}: no image embeddings for the {len(batch)} live samples; add an `embed` stage before `select`"
        )
    return live, done, todo, batch, earlier, rows, model


def _with_role(batch: pa.Table, n_prior: int) -> pa.Table:
    """Vector rows (``_vectors_of``) with ``role`` 2 for earlier selections, 1 for this run's samples."""
    role = pc.if_else(pc.less(batch["idx"], pa.scalar(n_prior, pa.int64())), 2, 1).cast(pa.int8())
    return batch.drop_columns(["prior"]).append_column("role", role)


def run_select_kmeans(plan: Plan, sp: StagePlan) -> dict:
    """``select`` with a k-means of its own on Ray (see the module docstring); the stage's metrics."""
    import ray

    from loupe.pipeline.executors.ray_semdedup import (
        Scratch,
        _cluster_offset,
        _start,
        checkpoint,
        ordered_input,
        vector_dataset,
    )

    cfg = sp.config
    run = plan.run
    t0 = time.time()
    live, done, todo, batch, earlier, rows, model = select_input(plan, sp)
    # A killed run's batch is finished with its own uids (the groups it committed included), so the
    # k-means and the quotas are those of the uninterrupted run: re-clustering only the rest would
    # change the clusters and write a second set of ``clusters`` rows.
    s = None
    todo_arr = pa.array(sorted(todo), pa.string())
    for x in Scratch.inflight(run, sp.id):
        ordered = x.batch()
        # resumed only when nothing new arrived since (else the whole todo is clustered afresh)
        if s is None and pc.all(pc.is_in(todo_arr, value_set=ordered["uid"])).as_py():
            s = x
            earlier = ordered["uid"].filter(ordered["prior"]).to_pylist()
            batch = ordered["uid"].filter(pc.invert(ordered["prior"])).to_pylist()
            rows, model = ordered_input(run, earlier, batch, sp.id)
        else:
            x.remove()
    s = s or _start(run, sp.id, batch, earlier)
    done_here = sorted(done & set(batch))  # committed by the killed run: not committed again
    n = rows.num_rows
    n_prior = int(pc.sum(rows["prior"].cast(pa.int64())).as_py() or 0)
    check_text(run, sp.id, cfg.score, model)
    run.update_stage(sp.id, status="running", table=sp.table)
    ds = vector_dataset(run, rows, model)
    res = cfg.resources
    cent = sr.train_centroids(ds, n, cfg.n_clusters, cfg.kmeans_iters, cfg.seed, "auto", 256,
                              res.num_cpus, res.num_gpus)  # fmt: skip
    t1 = time.time()
    ds = ds.map_batches(_with_role, fn_kwargs={"n_prior": n_prior}, batch_format="pyarrow")
    st = s.st
    st.delete_dir("assign")  # a killed run's spill is redone (the same centroids: the same spill)
    nearest: dict[int, tuple[float, int, str]] = {}
    files, sizes = sr.spill_by_cluster(ds, st, "assign", len(cent), centroids=cent, nearest=nearest)
    checkpoint("assigned", stage=sp.id)
    groups = sr.cluster_groups(sizes, sr.group_rows(sizes))
    prefix = f"{sp.id}-{batch_digest(batch)}"
    offset = _cluster_offset(run, sp.id, prefix)
    opts = {"score": cfg.score, "per_cluster": cfg.per_cluster, "model": model, "offset": offset,
            "done": ray.put(pa.array(done_here, pa.string())) if done_here else None}  # fmt: skip
    # the clusters rows first, as the local stage writes them before its rows are committed
    run.write_table(
        "clusters",
        pa.Table.from_pylist(
            [{"method": "select", "cluster": offset + c, "size": int(sizes[c]), "representative": nearest[c][2]}
             for c in np.flatnonzero(sizes)],
            schema=CLUSTERS,
        ),
        stage=prefix,
    )  # fmt: skip
    # before the groups: their last commit ends the stage
    n_missing = drop_missing(run, sp, [u for u in batch if u not in done], rows)
    tot = run_groups(sp, groups, (files, st, run, sp.id, sp.cls.name, opts))
    n_drops = tot["drops"] + n_missing
    s.remove()
    m = stage_metrics(
        len(todo), tot["rows"], n_drops, time.time() - t0, len(done & live), table=sp.table, executor="ray",
        num_cpus=res.num_cpus, num_gpus=res.num_gpus, selected=tot["selected"], clusters=len(cent),
        cluster_source="kmeans", compared_with_earlier=len(earlier), embedding_model=model,
        kmeans_seconds=round(t1 - t0, 3), cluster_tasks=len(groups), largest_cluster=int(sizes.max()),
        largest_task_peak_rss_mb=tot["peak_rss_mb"],
    )  # fmt: skip
    run.update_stage(sp.id, status="complete", **m)
    return m
