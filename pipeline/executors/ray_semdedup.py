"""The ``semdedup`` and ``select`` stages under ``--executor ray``: no process holds every vector.

The local executor hands a global stage every live uid in one batch and the stage loads all
vectors (:mod:`loupe.pipeline.stages.dedup.semdedup_stage`, :mod:`loupe.pipeline.stages.select`).
Here the driver handles only uids (as for every Ray stage) and the vectors stay in Ray tasks
(:mod:`loupe.pipeline.stages.dedup.semdedup_ray`):

1. the driver fixes the input order exactly as the stage does (samples kept by an earlier run of the
   stage first, then this run's, each sorted by uid; only those with an image vector of the model
   covering most of them) from the ``embeddings`` table's ``uid``/``model``/``kind`` columns;
2. k-means on faiss's own sample in one task; every vector assigned by a ``map_batches`` over the
   embeddings shards and spilled, sorted by cluster, to scratch files;
3. one task per group of consecutive clusters computes the rule (or, for ``select``, the cluster's
   centroid and its top ``per_cluster``) and writes a small result file; the driver sums their counts
   (``target_size`` picks epsilon from the totals), writes the ``clusters`` rows, and then one task
   per group **commits** its ``dedup`` rows and ``drops`` itself (:meth:`RunDir.commit`).

Same rows as the local executor (tests/test_ray_semdedup.py): the order, the sample, the tie-breaks
and the float arithmetic per row are the local pass's.

Scratch through the storage layer: everything a batch computes lives under
``_scratch/<stage>/<batch digest>/`` *in the run dir, on whatever backend holds it* (a local folder or
an object store), written by the workers themselves through :class:`~loupe.pipeline.storage.Storage`
(a local folder: temp name + rename; an object store: one upload per file, which S3 and GCS publish
whole), so a multi-node run on ``s3://``/``gs://`` needs no shared POSIX mount. Group tasks read only
the record batches of their clusters (ranged GETs on an object store, memory maps locally). Only the
``.npy`` map of a cluster too big for memory is node-local (``$LOUPE_SCRATCH_DIR`` or the temp dir,
:func:`~loupe.pipeline.stages.dedup.semdedup_ray.node_scratch`); it lives as long as its task.

Resume (nothing lost, nothing twice): the batch's scratch folder holds ``batch.arrow`` (its ordered
uids), then ``centroids.npy``, ``assign.json`` (spill files and cluster sizes) and one result file
per group, each published atomically once complete. A rerun after a kill finds the in-flight batch, reuses what
landed, and commits only the groups whose uids are not done yet; the commits are the run dir's
exactly-once ones, so a group is either committed whole or redone. Because the in-flight batch keeps
its original uids and order, the resumed result is the one an uninterrupted run gives. New samples
that arrived meanwhile are handled after it, as a second (incremental) batch, as the local stage
would on a later run. The scratch dir of a batch is removed once its last group committed.
"""

from __future__ import annotations

import io
import json
import time
from collections import Counter
from contextlib import closing
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from loupe.pipeline.errors import LoupeError, RecipeError
from loupe.pipeline.executors.plan import Plan, StagePlan, stage_metrics
from loupe.pipeline.rundir import RunDir
from loupe.pipeline.stages.dedup import semdedup_ray as sr
from loupe.pipeline.stages.dedup.semdedup import _epsilons
from loupe.pipeline.stages.dedup.semdedup_stage import _nan_to_null, eps_key
from loupe.pipeline.storage import Storage
from loupe.pipeline.vectors import batch_digest
from loupe.schemas.tables import CLUSTERS, DEDUP, drops_table

SCRATCH = "_scratch"


def checkpoint(event: str, **info: Any) -> None:
    """Called on the driver after each durable step (tests replace it to kill a run there)."""


# ---------------------------------------------------------------------------------------- the input
def _read_embeddings(run: RunDir) -> Any:
    """The embeddings shards as a Ray dataset, read by the workers (from the run's filesystem)."""
    import ray.data

    files = [str(f) for f in run.shard_files("embeddings")]
    return ray.data.read_parquet(files, filesystem=run.fs).select_columns(["uid", "model", "kind", "vector"])


def scratch_dir(run: RunDir, stage: str) -> str:
    """A stage's scratch folder, relative to the run dir (on the run's own backend)."""
    return f"{SCRATCH}/{stage}"


def _drop_scratch(run: RunDir, rel: str, stage: str) -> None:
    """Remove ``rel`` (a scratch folder), then ``_scratch/<stage>`` and ``_scratch`` once empty."""
    run.storage.delete_dir(rel)
    for d in (scratch_dir(run, stage), SCRATCH):
        if d != rel and run.storage.empty(d):
            run.storage.delete_dir(d)


def ordered_input(
    run: RunDir, earlier: list[str], batch: list[str], stage: str
) -> tuple[pa.Table, str | None]:
    """The rows the stage would load (``load_vectors(earlier + batch, "image")``) as ``(uid, prior)``
    in its order, and the embedding model chosen; read without the vectors."""
    want = pa.array(earlier + batch, pa.string())
    t = run.read_table("embeddings", ["uid", "model", "kind"], filter_uids=want.to_pylist())
    t = t.filter(pc.equal(t["kind"], "image"))
    model = None
    if t.num_rows:
        counts = Counter(t["model"].to_pylist())
        model = min(counts, key=lambda m: (-counts[m], m))
        t = t.filter(pc.equal(t["model"], model))
    have = pc.is_in(want, value_set=t["uid"])
    if t.num_rows != len(pc.unique(t["uid"])):
        raise LoupeError(
            f"{stage}: the embeddings table holds some uid twice for model {model!r}; "
            "run it with --executor local, or remove the duplicate embed stage"
        )
    prior = pa.array(np.arange(len(want)) < len(earlier))
    rows = pa.table({"uid": want, "prior": prior}).filter(have)
    return rows, model


def _vectors_of(batch: pa.Table, order: Any, model: str) -> pa.Table:
    """Embeddings rows of ``model`` (image) among the ordered uids, as ``idx``, ``uid``, ``vector``, ``prior``."""
    import ray

    uids, n_prior = ray.get(order) if isinstance(order, ray.ObjectRef) else order
    keep = pc.and_(pc.equal(batch["kind"], "image"), pc.equal(batch["model"], model))
    batch = batch.filter(keep)
    pos = pc.index_in(batch["uid"], value_set=uids)
    batch = batch.filter(pc.is_valid(pos))
    idx = pos.drop_null().cast(pa.int64())
    return pa.table(
        {
            "idx": idx,
            "uid": batch["uid"],
            "vector": batch["vector"],
            "prior": pc.less(idx, pa.scalar(n_prior, pa.int64())),
        }
    )


def vector_dataset(run: RunDir, rows: pa.Table, model: str) -> Any:
    """A Ray dataset of the ordered rows' vectors, read from the embeddings shards by the workers."""
    import ray

    n_prior = int(pc.sum(rows["prior"].cast(pa.int64())).as_py() or 0)
    order = ray.put((rows["uid"].combine_chunks(), n_prior))
    return _read_embeddings(run).map_batches(
        _vectors_of, fn_kwargs={"order": order, "model": model}, batch_format="pyarrow"
    )


# ---------------------------------------------------------------------------------------- scratch
class Scratch:
    """One in-flight batch's scratch folder ``_scratch/<stage>/<digest>`` in the run dir; every file
    in it is published atomically once complete. :attr:`st` is the folder's own storage (what the
    tasks get: it pickles without its filesystem, which each worker rebuilds from the URI)."""

    def __init__(self, run: RunDir, stage: str, digest: str):
        self.run, self.stage = run, stage
        self.rel = f"{scratch_dir(run, stage)}/{digest}"
        self.st: Storage = run.storage.child(self.rel)

    @classmethod
    def inflight(cls, run: RunDir, stage: str) -> list[Scratch]:
        """The stage's batches in flight; a folder without ``batch.arrow`` (a start or a removal
        that was killed) is deleted."""
        d = scratch_dir(run, stage)
        out = []
        for x in run.storage.subdirs(d):
            if run.storage.exists(f"{d}/{x}/batch.arrow"):
                out.append(cls(run, stage, x))
            else:
                _drop_scratch(run, f"{d}/{x}", stage)
        return out

    def batch(self) -> pa.Table:
        return sr.read_ipc(self.st, "batch.arrow")

    def json(self, name: str) -> Any:
        return json.loads(self.st.read_text(name)) if self.st.exists(name) else None

    def put_json(self, name: str, value: Any) -> None:
        self.st.write_text(name, json.dumps(value))

    def remove(self) -> None:
        self.st.delete("batch.arrow")  # first: a half-removed folder is not in flight
        _drop_scratch(self.run, self.rel, self.stage)


def _start(run: RunDir, stage: str, batch: list[str], earlier: list[str]) -> Scratch:
    s = Scratch(run, stage, batch_digest(batch))
    s.remove()  # a folder without batch.arrow is a start that never completed
    t = pa.table(
        {
            "uid": pa.array(earlier + batch, pa.string()),
            "prior": pa.array(np.arange(len(earlier) + len(batch)) < len(earlier)),
        }
    )
    sr.write_ipc(t, s.st, "batch.arrow")
    return s


def _centroids(s: Scratch, ds: Any, n: int, cfg: Any, sp: StagePlan) -> np.ndarray:
    if s.st.exists("centroids.npy"):
        return np.load(io.BytesIO(s.st.read_bytes("centroids.npy")))
    res = sp.config.resources
    cent = sr.train_centroids(
        ds, n, cfg.n_clusters, cfg.kmeans_iters, cfg.seed, cfg.use_gpu, cfg.max_points_per_centroid,
        res.num_cpus, res.num_gpus,
    )  # fmt: skip
    buf = io.BytesIO()
    np.save(buf, cent)
    s.st.write_bytes("centroids.npy", buf.getvalue())
    checkpoint("centroids", stage=sp.id)
    return cent


def _spill(s: Scratch, ds: Any, k: int, stage: str, **how: Any) -> tuple[list[str], np.ndarray]:
    done = s.json("assign.json")
    if done is not None:
        return done["files"], np.asarray(done["sizes"], np.int64)
    s.st.delete_dir("assign")  # files of a killed assignment: partial
    files, sizes = sr.spill_by_cluster(ds, s.st, "assign", k, **how)
    s.put_json("assign.json", {"files": files, "sizes": sizes.tolist()})
    checkpoint("assigned", stage=stage)
    return files, sizes


# ---------------------------------------------------------------------------------------- group tasks
def _result_path(g: tuple[int, int]) -> str:
    return f"results/{g[0]:09d}-{g[1]:09d}.arrow"


def _semdedup_group(c0: int, c1: int, files: list[str], st: Storage, eps: list[float], cfg: dict) -> dict:
    """Rule for clusters [c0, c1): writes the group's result file (no vectors) to the scratch
    storage ``st`` and returns its summary."""
    out = _result_path((c0, c1))
    if st.exists(out):
        return json.loads(sr.ipc_schema(st, out).metadata[b"loupe.summary"])
    sr.reset_peak_rss()
    t, order = sr.read_group(st, files, c0, c1)
    r = sr.semdedup_group(
        t, eps, cfg["keep"], cfg["variant"], cfg["block_size"], sr.node_scratch(), cfg["spill_bytes"], order,
        cfg["seed"],
    )  # fmt: skip
    idx = r["idx"].to_numpy()
    uid = r["uid"]
    dup = r["duplicate_of"].to_numpy()
    o = np.argsort(idx)  # a duplicate's source is an earlier member of its cluster: in this group
    src = o[np.minimum(np.searchsorted(idx[o], dup), len(idx) - 1)]
    dup_uid = pc.if_else(pa.array(dup >= 0), uid.take(pa.array(src)), pa.nulls(len(idx), pa.string()))
    removed = np.asarray(r["removed"].combine_chunks().flatten().to_numpy(zero_copy_only=False)).reshape(
        len(idx), len(eps)
    )
    prior = r["prior"].to_numpy(zero_copy_only=False).astype(bool)
    cl = r["cluster"].to_numpy()
    rep = r["representative"].to_numpy(zero_copy_only=False).astype(bool)
    uniq, sizes = np.unique(cl, return_counts=True)
    reps = dict(zip(cl[rep].tolist(), pc.filter(uid, pa.array(rep)).to_pylist()))
    summary = {
        "rows": t.num_rows,
        "peak_rss_mb": sr.peak_rss_mb(),
        "kept_all": (~removed).sum(axis=0).tolist(),
        "kept_new": (~removed[~prior]).sum(axis=0).tolist(),
        "clusters": [[int(c), int(m), reps[int(c)]] for c, m in zip(uniq.tolist(), sizes.tolist())],
    }
    res = pa.table(
        {
            "uid": uid,
            "prior": r["prior"],
            "cluster": r["cluster"],
            "duplicate_of": dup_uid,
            "max_similarity": r["max_similarity"],
            "removed": r["removed"],
        }
    ).replace_schema_metadata({b"loupe.summary": json.dumps(summary).encode()})
    sr.write_ipc(res, st, out)
    return summary


def _commit_group(
    c0: int, c1: int, st: Storage, run: RunDir, stage_id: str, stage_name: str, eps_i: int, eps: float,
    offset: int, done: Any,
) -> tuple[int, int]:  # fmt: skip
    """Commit one group's ``dedup`` rows and drops (this run's samples only); skipped when done."""
    import ray

    t = sr.read_ipc(st, _result_path((c0, c1)))
    t = t.filter(pc.invert(t["prior"]))
    done = ray.get(done) if isinstance(done, ray.ObjectRef) else done
    if len(done):
        t = t.filter(pc.invert(pc.is_in(t["uid"], value_set=done)))
    if not t.num_rows:
        return 0, 0
    removed = t["removed"].combine_chunks().flatten().to_numpy(zero_copy_only=False).reshape(t.num_rows, -1)
    removed = removed[:, eps_i].astype(bool)
    m = t["max_similarity"].to_numpy()
    cluster = t["cluster"].to_numpy() + offset
    dup = pc.if_else(pa.array(removed), t["duplicate_of"], pa.nulls(t.num_rows, pa.string()))
    rows = pa.Table.from_arrays(
        [
            t["uid"],
            pa.array(["semdedup"] * t.num_rows, pa.string()),
            pa.array(cluster, pa.int64()),
            dup,
            _nan_to_null(m),
            pa.array(~removed, pa.bool_()),
        ],
        schema=DEDUP,
    )
    uids = t["uid"].to_pylist()
    dups = dup.to_pylist()
    drops = drops_table(
        [
            {
                "uid": uids[j],
                "stage": stage_name,
                "reason": "semantic_duplicate",
                "detail": f"cosine {m[j]:.4f} > 1 - eps ({1 - eps:.4f}) in cluster {cluster[j]}",
                "duplicate_of": dups[j],
            }
            for j in np.flatnonzero(removed)
        ]
    )
    run.commit(stage_id, "dedup", rows, drops, uids)
    return rows.num_rows, drops.num_rows


def _cluster_offset(run: RunDir, stage_id: str, prefix: str) -> int:
    """As :func:`loupe.pipeline.vectors.write_clusters`: past every cluster id of earlier batches."""
    offset = 0
    for f in run.shard_files("clusters", stage_id):
        if not f.name.startswith(f"{prefix}-"):
            col = pq.read_table(str(f), columns=["cluster"], filesystem=run.fs)["cluster"]
            offset = max(offset, (pc.max(col).as_py() or -1) + 1 if len(col) else 0)
    return offset


# ---------------------------------------------------------------------------------------- semdedup
def _semdedup_batch(plan: Plan, sp: StagePlan, s: Scratch, done: set[str]) -> dict:
    """One batch (fresh or in flight) from its scratch dir to committed shards; returns its metrics."""
    import ray

    run, cfg = plan.run, sp.config
    ordered = s.batch()
    earlier = ordered["uid"].filter(ordered["prior"]).to_pylist()
    batch = ordered["uid"].filter(pc.invert(ordered["prior"])).to_pylist()
    rows, model = ordered_input(run, earlier, batch, sp.id)
    n = rows.num_rows
    n_new = n - int(pc.sum(rows["prior"].cast(pa.int64())).as_py() or 0)
    if n_new == 0 or model is None:
        raise RecipeError(
            f"{sp.id}: no image embeddings for the {len(batch)} live samples; "
            f"add an `embed` stage before `semdedup`"
        )
    eps_all = _epsilons([cfg.epsilon, *cfg.epsilons])
    t0 = time.time()
    ds = vector_dataset(run, rows, model)
    cent = _centroids(s, ds, n, cfg, sp)
    t1 = time.time()
    files, sizes = _spill(s, ds, len(cent), sp.id, centroids=cent)
    groups = sr.cluster_groups(sizes, sr.group_rows(sizes, cfg.block_size))
    opts = {
        "keep": cfg.keep,
        "variant": cfg.variant,
        "block_size": cfg.block_size,
        "spill_bytes": sr.SPILL_BYTES,
        "seed": cfg.seed,  # keep: random shuffles each cluster by seed + its uids, as the local pass
    }
    num_cpus = sp.config.resources.num_cpus or 1
    summaries = []
    with closing(sr.map_groups(_semdedup_group, groups, (files, s.st, eps_all, opts), num_cpus)) as it:
        for _, summ in it:
            summaries.append(summ)
            checkpoint("group_computed", stage=sp.id)
    t2 = time.time()
    kept_all = np.sum([x["kept_all"] for x in summaries], axis=0)
    kept_new = np.sum([x["kept_new"] for x in summaries], axis=0)
    if cfg.target_size:  # pick_epsilon: nearest kept count, ties to the smaller eps
        eps = min(eps_all, key=lambda e: (abs(int(kept_all[eps_all.index(e)]) - cfg.target_size), e))
    else:
        eps = cfg.epsilon
    prefix = f"{sp.id}-{batch_digest(batch)}"
    offset = _cluster_offset(run, sp.id, prefix)
    clusters = sorted(c for x in summaries for c in x["clusters"])
    run.write_table(
        "clusters",
        pa.Table.from_pylist(
            [
                {"method": "semdedup", "cluster": offset + c, "size": m, "representative": u}
                for c, m, u in clusters
            ],
            schema=CLUSTERS,
        ),
        stage=prefix,
    )
    missing = sorted(set(batch) - set(rows["uid"].to_pylist()) - done)
    if missing:  # samples without a vector are covered (kept, no row), as the local stage does; committed
        run.commit(sp.id, "dedup", None, None, missing)  # before the groups: their last commit ends the batch
    done_ref = ray.put(pa.array(sorted(done & set(batch)), pa.string()))
    args = (s.st, run, sp.id, sp.cls.name, eps_all.index(eps), eps, offset, done_ref)
    n_rows = n_drops = 0
    with closing(sr.map_groups(_commit_group, groups, args, 0.25, retries=0, fresh=False)) as it:
        for _, (r, d) in it:
            n_rows, n_drops = n_rows + r, n_drops + d
            checkpoint("group_committed", stage=sp.id)
    s.remove()
    return {
        "rows": n_rows,
        "drops": n_drops,
        "epsilon": eps,
        **{eps_key(e): int(kept_new[i]) for i, e in enumerate(eps_all)},
        "clusters": len(cent),
        "compared_with_earlier": len(earlier),
        "embedding_model": model,
        "missing_embedding": len(batch) - n_new,
        "kmeans_seconds": round(t1 - t0, 3),
        "semdedup_seconds": round(t2 - t1, 3),
        "cluster_tasks": len(groups),
        "largest_cluster": int(sizes.max()),
        "largest_task_rows": max(x["rows"] for x in summaries),
        "largest_task_peak_rss_mb": max(x["peak_rss_mb"] for x in summaries),
    }


def run_semdedup(plan: Plan, sp: StagePlan) -> dict:
    """The ``semdedup`` stage on Ray (see the module docstring); returns the stage's metrics."""
    from loupe.pipeline.vectors import kept_before

    run = plan.run
    t0 = time.time()
    live = run.live_uids()
    done = run.done_uids(sp.id, sp.table)
    todo = live - done
    n_todo = len(todo)
    run.update_stage(sp.id, status="running", table=sp.table)
    parts: list[dict] = []
    for s in Scratch.inflight(run, sp.id):  # a killed run's batch first, with its own uids and order
        uids = set(s.batch()["uid"].filter(pc.invert(s.batch()["prior"])).to_pylist())
        if uids & todo:
            parts.append(_semdedup_batch(plan, sp, s, done))
            todo -= uids
        else:
            s.remove()
    if todo:
        batch = sorted(todo)
        earlier = kept_before(plan.context(sp.id), sp.table, batch)
        parts.append(_semdedup_batch(plan, sp, _start(run, sp.id, batch, earlier), done))
    extra = _merge(parts)
    rows, drops = extra.pop("rows", 0), extra.pop("drops", 0)
    res = sp.config.resources
    m = stage_metrics(
        n_todo, rows, drops, time.time() - t0, len(done & live), table=sp.table, executor="ray",
        num_cpus=res.num_cpus, num_gpus=res.num_gpus, **extra,
    )  # fmt: skip
    run.update_stage(sp.id, status="complete", **m)
    return m


def _merge(parts: list[dict]) -> dict:
    """Batch metrics summed (counts) or taken from the last batch (settings, names)."""
    out: dict = {}
    for p in parts:
        for k, v in p.items():
            summable = (
                isinstance(v, (int, float)) and not isinstance(v, bool) and k not in ("epsilon", "clusters")
            )
            out[k] = out.get(k, 0) + v if summable and k in out else v
    return out


# ---------------------------------------------------------------------------------------- select
def _members(batch: pa.Table, lookup: Any, model: str) -> pa.Table:
    """Embeddings rows of the clustered samples: ``idx`` (rank of the uid), ``uid``, ``vector``,
    ``cluster`` and ``role`` (0: member only, 1: this run's sample, 2: selected by an earlier run)."""
    import ray

    uids, clusters, roles = ray.get(lookup) if isinstance(lookup, ray.ObjectRef) else lookup
    batch = batch.filter(pc.and_(pc.equal(batch["kind"], "image"), pc.equal(batch["model"], model)))
    pos = pc.index_in(batch["uid"], value_set=uids)
    batch = batch.filter(pc.is_valid(pos))
    pos = pos.drop_null()
    return pa.table(
        {
            "idx": pos.cast(pa.int64()),
            "uid": batch["uid"],
            "vector": batch["vector"],
            "cluster": clusters.take(pos),
            "role": roles.take(pos),
        }
    )


def run_select(plan: Plan, sp: StagePlan) -> dict | None:
    """``select`` with SemDeDup's clusters on Ray: one task per group of clusters computes their
    centroids (over every member, removed duplicates included) and quota and commits
    (:func:`~loupe.pipeline.executors.ray_select.select_group`). ``clusters: kmeans``, and ``auto``
    without SemDeDup clusters for every sample, run :func:`~loupe.pipeline.executors.ray_select.run_select_kmeans`."""
    import ray

    from loupe.pipeline.executors.ray_select import (
        check_text,
        drop_missing,
        run_groups,
        run_select_kmeans,
        select_input,
    )

    cfg = sp.config
    if cfg.clusters == "kmeans":
        return run_select_kmeans(plan, sp)
    run = plan.run
    t0 = time.time()
    live, done, todo, batch, earlier, rows, model = select_input(plan, sp)
    d = run.read_table("dedup", ["uid", "method", "cluster"])
    d = d.filter(pc.and_(pc.equal(d["method"], "semdedup"), pc.is_valid(d["cluster"])))
    has = pc.is_in(rows["uid"], value_set=d["uid"])
    if not pc.all(has).as_py():
        if cfg.clusters == "auto":
            return run_select_kmeans(plan, sp)
        missing = rows["uid"].filter(pc.invert(has))
        raise RecipeError(
            f"{sp.id}: clusters: semdedup needs a semdedup stage before select ({len(missing)} samples have "
            f"no SemDeDup cluster, e.g. {missing[0]}); or set clusters: kmeans"
        )
    check_text(run, sp.id, cfg.score, model)
    d = d.take(pc.sort_indices(d["uid"]))  # members in uid order: the order the local sums run in
    pos = pc.index_in(rows["uid"], value_set=d["uid"]).to_numpy(zero_copy_only=False)
    r = np.zeros(d.num_rows, np.int8)
    r[pos] = np.where(rows["prior"].to_numpy(zero_copy_only=False), 2, 1)
    role = pa.array(r)
    k = int(pc.max(d["cluster"]).as_py()) + 1
    lookup = ray.put((d["uid"].combine_chunks(), d["cluster"].combine_chunks(), role))
    ds = _read_embeddings(run).map_batches(
        _members, fn_kwargs={"lookup": lookup, "model": model}, batch_format="pyarrow"
    )
    scratch = scratch_dir(run, sp.id)
    st = run.storage.child(scratch)
    st.delete_dir("assign")  # a killed run's spill: select keeps no state across runs
    run.update_stage(sp.id, status="running", table=sp.table)
    files, sizes = sr.spill_by_cluster(ds, st, "assign", k)
    checkpoint("assigned", stage=sp.id)
    groups = sr.cluster_groups(sizes, sr.group_rows(sizes))
    opts = {"score": cfg.score, "per_cluster": cfg.per_cluster, "model": model}
    args = (files, st, run, sp.id, sp.cls.name, opts)
    n_missing = drop_missing(run, sp, batch, rows)  # before the groups: their last commit ends the stage
    tot = run_groups(sp, groups, args)
    n_drops = tot["drops"] + n_missing
    _drop_scratch(run, scratch, sp.id)
    res = sp.config.resources
    m = stage_metrics(
        len(todo), tot["rows"], n_drops, time.time() - t0, len(done & live), table=sp.table, executor="ray",
        num_cpus=res.num_cpus, num_gpus=res.num_gpus, selected=tot["selected"], clusters=int((sizes > 0).sum()),
        cluster_source="semdedup", compared_with_earlier=len(earlier), embedding_model=model,
        cluster_tasks=len(groups), largest_cluster=int(sizes.max()), largest_task_peak_rss_mb=tot["peak_rss_mb"],
    )  # fmt: skip
    run.update_stage(sp.id, status="complete", **m)
    return m


def run_vector_stage(plan: Plan, sp: StagePlan) -> dict | None:
    """The stage's metrics when it has a distributed form here, else ``None`` (run it as one task)."""
    if sp.cls.name == "semdedup":
        return run_semdedup(plan, sp)
    if sp.cls.name == "select":
        from loupe.pipeline.executors.ray_select import NothingToDo

        t0 = time.time()
        try:
            return run_select(plan, sp)
        except NothingToDo as e:  # killed after its last commit, before it was marked complete
            return e.finish(plan, sp, t0)
    return None
