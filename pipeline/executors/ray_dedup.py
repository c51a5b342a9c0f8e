"""Exact and pHash dedup on Ray Data: shuffles, so no process holds every row.

* **exact_dedup** — the ``samples`` shards' ``(uid, sha256, source, source_id)`` columns are read by
  Ray Data, kept to the live uids, and hash-partitioned on sha256 (``groupby(part)`` with ``part`` =
  sha256 mod P): every row with a given sha256 lands in one task, which applies
  :func:`~loupe.pipeline.stages.dedup.exact.exact_rule` (the local executor's rule) and commits its
  own shard. The driver sees one count row per partition.
* **phash_dedup** — reads the ``phash`` table only (the per-row ``phash`` stage wrote it, in parallel).
  Band LSH as a shuffle: each row is emitted once per band with its band value, and the shuffle by
  (band, value) puts every bucket in one task, which pairs its rows within the distance
  (:func:`~loupe.pipeline.stages.dedup.lsh.bucket_pairs`, each pair once: in its first shared band).
  The candidate pairs (only near pairs: a small fraction of the rows) are labelled with their
  connected components by star contraction over partitions of the pairs
  (:func:`~loupe.pipeline.executors.ray_components.components`: O(log n) rounds of tasks, no task
  holding every pair); rows in no pair are kept as they are, by a map. The rows of each group
  of components, with the confirmation thumbnails of their images (a map over the ``samples`` shards
  reading only those images), meet in one task (``groupby(bucket)``) that runs
  :func:`~loupe.pipeline.stages.dedup.phash.decide`, the local executor's rule: rows of different
  components never claim each other, so the decisions equal the local run's.

Exactly once: each task commits its own shard with the run-dir protocol, covering whole sha256
groups / whole components, so a killed driver's rerun redoes only the uncommitted groups and gets the
same decisions (a committed group's kept rows come back as ``earlier`` rows, alone in their group).
A task retried by Ray after its commit landed finds its uids committed and does not write them again.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from rich.progress import Progress

from loupe.pipeline.errors import LoupeError, RecipeError
from loupe.pipeline.executors.local import _commit, _rate, finish_task
from loupe.pipeline.executors.oom import merge_metrics
from loupe.pipeline.executors.plan import Plan, StagePlan, stage_metrics
from loupe.pipeline.executors.ray_components import components
from loupe.pipeline.stage import StageOutput
from loupe.schemas.tables import DEDUP, PHASH, drops_table

#: most shuffle partitions of one stage (a partition holds about N / P rows)
MAX_PARTITIONS = 256
#: Read tasks are I/O bound (as in loupe.pipeline.executors.ray)
_IO_CPUS = 0.25
_SUMMARY = pa.schema(
    [("n", pa.int64()), ("rows", pa.int64()), ("drops", pa.int64()), ("metrics", pa.string())]
)


def partitions(n: int, sp: StagePlan) -> int:
    """Shuffle partitions for ``n`` rows: about ``batch_size`` rows each, at most :data:`MAX_PARTITIONS`."""
    return max(1, min(MAX_PARTITIONS, math.ceil(n / sp.config.batch_size)))


def read_columns(plan: Plan, files: list[str], columns: list[str]) -> Any:
    """A Ray Dataset of ``columns`` of the run's parquet ``files`` (projection pushed into the read)."""
    import ray.data

    return ray.data.read_parquet(files, filesystem=plan.run.fs, num_cpus=_IO_CPUS).select_columns(columns)


def _summary(n: int = 0, rows: int = 0, drops: int = 0, metrics: dict | None = None) -> pa.Table:
    return pa.table(
        {"n": [n], "rows": [rows], "drops": [drops], "metrics": [json.dumps(metrics or {})]}, schema=_SUMMARY
    )


def _live(batch: pa.Table, live: Any, todo: Any) -> pa.Table:
    """Rows of live uids, with ``earlier`` = live but not to do (kept by an earlier run of the stage)."""
    import ray

    live, todo = (ray.get(x) if isinstance(x, ray.ObjectRef) else x for x in (live, todo))
    batch = batch.filter(pc.is_in(batch["uid"], value_set=live))
    return batch.append_column("earlier", pc.invert(pc.is_in(batch["uid"], value_set=todo)))


def _stage_of(plan: Plan, stage_id: str):
    from loupe.pipeline.executors.ray import _apply_env

    _apply_env()
    sp = next(s for s in plan.stages if s.id == stage_id)
    return sp, sp.cls(sp.config, plan.context(stage_id))


def _commit_once(
    plan: Plan, sp: StagePlan, baseline: frozenset[str], out: StageOutput, todo: list[str]
) -> tuple:
    """Commit a group's output unless a retried attempt of this task already did (then count nothing)."""
    from loupe.pipeline.executors.ray import committed_since

    if set(todo) & committed_since(plan.run, sp, baseline):
        return 0, 0
    return _commit(plan, sp.id, sp.table, out, todo)


# ------------------------------------------------------------------------------------------ exact
def _sha_part(batch: pa.Table, parts: int) -> pa.Table:
    part = [int(s[:12], 16) % parts if s else 0 for s in batch["sha256"].to_pylist()]
    return batch.append_column("part", pa.array(part, pa.int64()))


def _exact_group(batch: pa.Table, plan: Plan, stage_id: str, baseline: frozenset[str]) -> pa.Table:
    from loupe.pipeline.stages.dedup.exact import exact_rule

    sp, stage = _stage_of(plan, stage_id)
    rows = batch.drop_columns(["part"]).to_pylist()
    todo = [r["uid"] for r in rows if not r["earlier"]]
    if not todo:
        return _summary()
    out, drops, groups = exact_rule(rows, stage)
    res = StageOutput(rows=pa.Table.from_pylist(out, schema=DEDUP), drops=drops_table(drops))
    n_rows, n_drops = _commit_once(plan, sp, baseline, res, todo)
    return _summary(len(todo), n_rows, n_drops, {"duplicate_groups": groups} if n_rows or n_drops else {})


def exact_ray(
    plan: Plan, sp: StagePlan, live_ref: Any, todo_ref: Any, n: int, baseline
) -> Iterator[pa.Table]:

    files = [str(f) for f in plan.run.shard_files("samples")]
    parts = partitions(n, sp)
    ds = read_columns(plan, files, list(sp.cls.reads))
    ds = ds.map_batches(
        _live, fn_kwargs={"live": live_ref, "todo": todo_ref}, batch_format="pyarrow", batch_size=None
    )
    ds = ds.map_batches(_sha_part, fn_kwargs={"parts": parts}, batch_format="pyarrow", batch_size=None)
    out = ds.groupby("part", num_partitions=parts).map_groups(
        _exact_group,
        fn_kwargs={"plan": plan, "stage_id": sp.id, "baseline": baseline},
        batch_format="pyarrow",
        num_cpus=sp.config.resources.num_cpus,
    )
    yield from out.iter_batches(batch_size=None, batch_format="pyarrow")


# ------------------------------------------------------------------------------------------ phash
def _phash_rows(batch: pa.Table, live: Any, todo: Any, bits: int) -> pa.Table:
    batch = _live(batch, live, todo)
    return batch.filter(pc.equal(batch["bits"], bits))


def _band_rows(batch: pa.Table, bands: int, parts: int, min_contrast: float) -> pa.Table:
    """One row per (row, band): partition of its (band, value) bucket, the band, the uid and the hash.
    Low-information rows never pair (they neither claim nor are claimed) and are left out."""
    from loupe.pipeline.stages.dedup.lsh import band_keys

    batch = batch.filter(pc.greater_equal(batch["contrast"], min_contrast))
    n = batch.num_rows
    if not n:
        return pa.table({"part": pa.array([], pa.int64()), "band": pa.array([], pa.int64()),
                         "uid": pa.array([], pa.string()), "hash": pa.array([], pa.binary())})  # fmt: skip
    codes = np.frombuffer(b"".join(batch["hash"].to_pylist()), np.uint8).reshape(n, -1)
    keys = band_keys(codes, bands)
    part = [
        ((k.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)) + np.uint64(b)) % np.uint64(parts)
        for b, k in enumerate(keys)
    ]
    return pa.table(
        {
            "part": pa.array(np.concatenate(part).astype(np.int64)),
            "band": pa.array(np.repeat(np.arange(bands), n).astype(np.int64)),
            "uid": pa.concat_arrays([batch["uid"].combine_chunks()] * bands),
            "hash": pa.concat_arrays([batch["hash"].combine_chunks()] * bands),
        }
    )


def _pairs_in_part(batch: pa.Table, bands: int, radius: int) -> pa.Table:
    """Candidate pairs (a, b: uids, a < b by position) of the buckets in one partition of the shuffle."""
    from loupe.pipeline.stages.dedup.lsh import as_words, band_keys, bucket_pairs

    out_a, out_b = [], []
    band_col = batch["band"].to_numpy()
    for band in np.unique(band_col):
        rows = batch.filter(pc.equal(batch["band"], int(band)))
        codes = np.frombuffer(b"".join(rows["hash"].to_pylist()), np.uint8).reshape(rows.num_rows, -1)
        i, j, _ = bucket_pairs(as_words(codes), band_keys(codes, bands), int(band), radius)
        uids = rows["uid"].combine_chunks()
        out_a.append(uids.take(pa.array(i)))
        out_b.append(uids.take(pa.array(j)))
    if not out_a:
        return pa.table({"a": pa.array([], pa.string()), "b": pa.array([], pa.string())})
    return pa.table({"a": pa.concat_arrays(out_a), "b": pa.concat_arrays(out_b)})


def _near(labels: Any) -> tuple[pa.Array, pa.Array]:
    """The uids in some candidate pair and their component group's bucket (compact Arrow arrays, looked
    up with ``index_in``: ~uid bytes + 12 per near row, not a Python dict)."""
    import ray

    tables = [t for t in ray.get(list(labels)) if t.num_rows]
    if not tables:
        return pa.array([], pa.string()), pa.array([], pa.int64())
    t = pa.concat_tables(tables)
    return t["uid"].combine_chunks(), t["bucket"].combine_chunks()


def _buckets_of(batch: pa.Table, labels: Any) -> tuple[pa.Table, pa.Array]:
    """The rows of ``batch`` in some candidate pair, and their buckets."""
    uids, buckets = _near(labels)
    at = pc.index_in(batch["uid"].combine_chunks(), value_set=uids)
    found = pc.is_valid(at)
    return batch.filter(found), buckets.take(at.filter(found))


def _with_bucket(batch: pa.Table, components: Any) -> pa.Table:
    """The rows in some candidate pair, with their component group's bucket and no thumbnail yet."""
    batch, bucket = _buckets_of(batch, components)
    batch = batch.append_column("bucket", bucket)
    return batch.append_column("sig", pa.nulls(batch.num_rows, pa.binary()))


def _thumbnails(batch: pa.Table, components: Any, schema: pa.Schema) -> pa.Table:
    """Confirmation thumbnails of the images in some candidate pair, as rows of the group schema."""
    from loupe.pipeline.images import DecodeError, decode
    from loupe.pipeline.stages.dedup.confirm import signature

    batch, bucket = _buckets_of(batch, components)
    uids, sigs, buckets = [], [], []
    for uid, data, b in zip(batch["uid"].to_pylist(), batch["image"].to_pylist(), bucket.to_pylist()):
        try:
            sigs.append(signature(decode(data)).astype(np.float32).tobytes())
            uids.append(uid)
            buckets.append(b)
        except (DecodeError, OSError, ValueError):
            continue  # no thumbnail: its pairs are not confirmed, as in the local executor
    cols = {
        f.name: pa.nulls(len(uids), f.type)
        for f in schema
        if f.name not in ("uid", "bucket", "sig", "earlier")
    }
    t = pa.table(
        {
            **cols,
            "uid": pa.array(uids, pa.string()),
            "earlier": pa.array([False] * len(uids)),
            "bucket": pa.array(buckets, pa.int64()),
            "sig": pa.array(sigs, pa.binary()),
        }  # fmt: skip
    )
    return t.select(schema.names).cast(schema)


def _phash_component_group(batch: pa.Table, plan: Plan, stage_id: str, baseline: frozenset[str]) -> pa.Table:
    """Whole components: :func:`decide` on their rows, committed as one shard."""
    from loupe.pipeline.stages.dedup.confirm import THUMB
    from loupe.pipeline.stages.dedup.phash import decide

    sp, stage = _stage_of(plan, stage_id)
    has_sig = pc.is_valid(batch["sig"])
    thumbs = batch.filter(has_sig)
    sigs = {
        u: np.frombuffer(s, np.float32).reshape(THUMB, THUMB)
        for u, s in zip(thumbs["uid"].to_pylist(), thumbs["sig"].to_pylist())
    }
    rows = batch.filter(pc.invert(has_sig)).drop_columns(["bucket", "sig"])
    todo = [u for u, e in zip(rows["uid"].to_pylist(), rows["earlier"].to_pylist()) if not e]
    if not todo:
        return _summary()
    out, drops, metrics = decide(rows, sp.config, lambda uids: {u: sigs[u] for u in uids if u in sigs}, stage)
    res = StageOutput(rows=pa.Table.from_pylist(out, schema=DEDUP), drops=drops_table(drops))
    n_rows, n_drops = _commit_once(plan, sp, baseline, res, todo)
    return _summary(len(todo), n_rows, n_drops, metrics if n_rows or n_drops else {})


def _phash_singletons(batch: pa.Table, components: Any, plan: Plan, stage_id: str, baseline) -> pa.Table:
    """Rows in no candidate pair: kept, no group. Committed per batch."""
    sp, _ = _stage_of(plan, stage_id)
    cfg = sp.config
    batch = batch.filter(pc.invert(pc.is_in(batch["uid"], value_set=_near(components)[0])))
    sweep = sorted({cfg.max_distance, *cfg.max_distances})
    metrics = {
        "low_information": int(pc.sum(pc.less(batch["contrast"], cfg.min_contrast)).as_py() or 0),
        **{f"kept_max_distance_{d}": batch.num_rows for d in sweep},
    }
    todo = batch.filter(pc.invert(batch["earlier"]))["uid"].to_pylist()
    if not todo:
        return _summary(0, 0, 0, metrics)
    rows = [{"uid": u, "method": "phash", "cluster": None, "duplicate_of": None, "similarity": None, "kept": True}
            for u in todo]  # fmt: skip
    res = StageOutput(rows=pa.Table.from_pylist(rows, schema=DEDUP), drops=drops_table([]))
    n_rows, n_drops = _commit_once(plan, sp, baseline, res, todo)
    return _summary(len(todo), n_rows, n_drops, metrics if n_rows else {})


def phash_ray(
    plan: Plan, sp: StagePlan, live_ref: Any, todo_ref: Any, n: int, baseline
) -> Iterator[pa.Table]:
    import ray
    import ray.data

    cfg = sp.config
    files = [str(f) for f in plan.run.shard_files("phash")]
    if not files:
        raise RecipeError(f"{sp.id}: no phash table in the run; add `- stage: phash` before it")
    radius = max({cfg.max_distance, *cfg.max_distances})
    bands = radius + 1
    parts = partitions(n, sp)
    kw = {"batch_format": "pyarrow", "batch_size": None}
    rows = read_columns(plan, files, list(PHASH.names))
    rows = rows.map_batches(
        _phash_rows, fn_kwargs={"live": live_ref, "todo": todo_ref, "bits": cfg.hash_size**2}, **kw
    )
    rows = rows.materialize()
    if rows.count() < n:
        raise RecipeError(
            f"{sp.id}: {n - rows.count()} live samples have no phash of hash_size {cfg.hash_size}; "
            "add `- stage: phash` before it"
        )
    # 1. band LSH as a shuffle: every (band, value) bucket in one task, which emits its near pairs
    banded = rows.map_batches(
        _band_rows, fn_kwargs={"bands": bands, "parts": parts, "min_contrast": cfg.min_contrast}, **kw
    )
    pairs = banded.groupby("part", num_partitions=parts).map_groups(
        _pairs_in_part, fn_kwargs={"bands": bands, "radius": radius}, batch_format="pyarrow"
    )
    pairs = pairs.materialize()
    n_pairs = pairs.count()
    # 2. components of the pairs by star contraction over partitions of the pairs (ray_components);
    # the driver keeps only references to the labels
    comp_parts = max(1, min(MAX_PARTITIONS, math.ceil(2 * n_pairs / cfg.batch_size)))
    comp_ref, counts, rounds = components(pairs.to_arrow_refs(), comp_parts, parts)
    nodes = sum(ray.get(counts))
    yield _summary(0, 0, 0, {"candidate_pairs": n_pairs, "rows_in_pairs": nodes, "component_rounds": rounds})
    # 3. rows in no pair: kept
    single = rows.map_batches(
        _phash_singletons,
        fn_kwargs={"components": comp_ref, "plan": plan, "stage_id": sp.id, "baseline": baseline},
        **kw,
    )
    yield from single.iter_batches(batch_size=None, batch_format="pyarrow")
    if not nodes:
        return
    # 4. the rows of each group of components meet their thumbnails in one task, which decides
    grouped = rows.map_batches(_with_bucket, fn_kwargs={"components": comp_ref}, **kw)
    if cfg.confirm:
        schema = PHASH.append(pa.field("earlier", pa.bool_())).append(pa.field("bucket", pa.int64()))
        schema = schema.append(pa.field("sig", pa.binary()))
        samples = [str(f) for f in plan.run.shard_files("samples")]
        thumbs = read_columns(plan, samples, ["uid", "image"])
        thumbs = thumbs.map_batches(_thumbnails, fn_kwargs={"components": comp_ref, "schema": schema}, **kw)
        grouped = grouped.union(thumbs)
    out = grouped.groupby("bucket", num_partitions=parts).map_groups(
        _phash_component_group,
        fn_kwargs={"plan": plan, "stage_id": sp.id, "baseline": baseline},
        batch_format="pyarrow",
        num_cpus=cfg.resources.num_cpus,
    )
    yield from out.iter_batches(batch_size=None, batch_format="pyarrow")


# ------------------------------------------------------------------------------------------ driver
Build = Callable[[Plan, StagePlan, Any, Any, int, frozenset], Iterator[pa.Table]]

#: global stages (by stage name) that run as Ray Data shuffles instead of one task
DISTRIBUTED: dict[str, Build] = {"exact_dedup": exact_ray, "phash_dedup": phash_ray}


def distributed_build(sp: StagePlan) -> Build | None:
    """The Ray Data pipeline of a global stage, or None to run it as one task."""
    if sp.cls.name == "export":
        from loupe.pipeline.executors.ray_export import export_ray, parallel

        return export_ray if parallel(sp) else None
    return DISTRIBUTED.get(sp.cls.name)


def run_distributed(plan: Plan, sp: StagePlan, build: Build, progress: Progress) -> dict:
    """Run a global stage as ``build``'s Ray Data pipeline; the driver only sums its count rows."""
    import ray

    from loupe.pipeline.executors.ray import start_stage

    run = plan.run
    t0 = time.time()
    live, todo, skipped, baseline, task = start_stage(run, sp, progress)
    n = rows = drops = 0
    extra: dict[str, Any] = {}
    if todo:
        import ray.data
        from ray.data.context import ShuffleStrategy

        # The sort-based shuffle runs as plain tasks; Ray 2.60's default hash shuffle starts a pool of
        # aggregator actors per shuffle (~20 s on a 2-CPU node, measured), for groups we already bound.
        ctx = ray.data.DataContext.get_current()
        saved, ctx.shuffle_strategy = ctx.shuffle_strategy, ShuffleStrategy.SORT_SHUFFLE_PULL_BASED
        live_ref = ray.put(live)  # Arrow arrays (RunDir.todo_uids): value sets of pc.is_in in the tasks
        todo_ref = ray.put(todo)
        try:
            for part in build(plan, sp, live_ref, todo_ref, len(live), baseline):
                for r in part.to_pylist():
                    n, rows, drops = n + r["n"], rows + r["rows"], drops + r["drops"]
                    merge_metrics(extra, json.loads(r["metrics"]))
                    progress.update(task, advance=r["n"], drops=drops, rate=_rate(n, time.time() - t0))
        finally:
            ctx.shuffle_strategy = saved
    m = stage_metrics(
        len(todo), rows, drops, time.time() - t0, skipped, table=sp.table, executor="ray",
        distributed=True, num_cpus=sp.config.resources.num_cpus, **extra,
    )  # fmt: skip
    if n != len(todo):
        raise LoupeError(f"stage {sp.id}: {n} of {len(todo)} samples were processed; rerun to resume")
    run.update_stage(sp.id, status="complete", **m)
    finish_task(progress, task, sp.id, m)
    return m
