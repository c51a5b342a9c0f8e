"""Export on Ray: slices of the run built in parallel, then the shard files written in parallel.

1. The live samples' ``(source, source_id, uid)`` are sorted by Ray Data (the order of the local
   export); each block of the sorted dataset is one **slice**, and one task per slice reads its rows
   with their evidence, builds the records (:meth:`Export.build`, the local code), writes their
   images, commits its drop rows and writes its records as a part file under ``export/_parts/``.
2. From the per-slice record counts alone the driver cuts the output into files with the local
   rules: ``conversations.jsonl`` when there are at most ``shard_size`` records (or no shard_size),
   else ``conversations-NNNNN.jsonl`` of ``shard_size`` records each, and Dragonfly parquet parts of
   ``dragonfly_rows_per_file`` rows; one task writes each file from the part files it spans. The index
   (``conversations.index.json``), ``records.parquet`` and ``stats.json`` are written once, last.

3. The formats that are ONE JSON array (llava_json, llava_plain_json, mg_llava_boxes: LLaVA's loader
   ``json.load``s one file) stay one file: each slice task also writes, per such format, its items as
   a JSON-array *fragment* (``export/_parts/<k>.<format>.json``, the items without brackets:
   :func:`~loupe.pipeline.stages.export.formats.json_fragment`), and one task per file streams
   ``[`` + the non-empty fragments in slice order joined by the separator + ``]`` into it
   (:func:`~loupe.pipeline.stages.export.formats.write_json_array`): a fragment at a time, published
   at once (temp file + rename; one upload, multipart when large, on an object store). No process
   holds every record.

So the files are byte-for-byte the local executor's. Resume: ``export/_parts/`` is emptied when the
export starts and deleted when it ends, and every output file is published whole, so a driver killed
between the fragments and the concatenation leaves the previous complete file (or none), never half
of one (a concatenation failing with an error on an object store leaves none: the storage layer
deletes what pyarrow published on close); the rerun (export is ``rerun_all``) rebuilds every fragment, and the concatenation reads the
fragments of this run's slices by name, so no record is written twice.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from loupe.pipeline.executors.plan import Plan, StagePlan
from loupe.pipeline.executors.ray_dedup import (
    _IO_CPUS,
    _commit_once,
    _live,
    _stage_of,
    _summary,
    read_columns,
)
from loupe.pipeline.stage import StageOutput
from loupe.pipeline.stages.export.formats import json_fragment, write_json_array
from loupe.pipeline.stages.export.stage import JSON_ARRAYS
from loupe.pipeline.storage import Storage
from loupe.schemas.conversation import CONVERSATIONS, CONVERSATIONS_INDEX, shard_name
from loupe.schemas.tables import drops_table

#: formats the parallel export writes; a recipe asking for another one exports in one task
PARALLEL_FORMATS = frozenset({"llama3_jsonl", "dragonfly_parquet", *JSON_ARRAYS})
#: formats written from the per-slice JSONL part files
_FROM_LINES = frozenset({"llama3_jsonl", "dragonfly_parquet"})
PARTS = "_parts"


def parallel(sp: StagePlan) -> bool:
    return set(sp.config.formats) <= PARALLEL_FORMATS


def _keyed(batch: pa.Table, live: Any, todo: Any) -> pa.Table:
    batch = _live(batch, live, todo).drop_columns(["earlier"])
    return pa.table(
        {
            "k_source": pc.fill_null(batch["source"], ""),
            "k_source_id": pc.fill_null(batch["source_id"], ""),
            "uid": batch["uid"],
        }
    )


def _export_slice(block: pa.Table, k: int, plan: Plan, stage_id: str, baseline: frozenset[str]) -> dict:
    """Build one slice's records, write its images and part files, commit its drops."""
    from loupe.pipeline.evidence import attach_evidence
    from loupe.pipeline.stages.export.stage import RECORD_STATS

    sp, stage = _stage_of(plan, stage_id)
    uids = block["uid"].to_pylist()
    ds = plan.run.dataset("samples")
    batch = ds.to_table(columns=list(sp.reads), filter=pads.field("uid").isin(pa.array(uids, pa.string())))
    batch = attach_evidence(plan.run, batch, sp.evidence)
    records, drops, per_record, tasks, rows = stage.build(batch)
    parts = stage.out.child(PARTS)
    if _FROM_LINES & set(sp.config.formats):
        lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
        parts.write_text(f"{k:05d}.jsonl", lines)
    arrays = {}  # format -> (items in this slice's fragment, what they add to stats.json)
    for fmt, (items, counts) in stage.json_arrays(records, rows).items():
        if items:
            parts.write_text(_fragment(k, fmt), json_fragment(items, JSON_ARRAYS[fmt][1]))
        arrays[fmt] = (len(items), counts)
    sink = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pylist(per_record, schema=RECORD_STATS), sink)
    parts.write_bytes(f"{k:05d}.parquet", sink.getvalue().to_pybytes())
    n_drops = _commit_once(plan, sp, baseline, StageOutput(drops=drops_table(drops)), uids)[1] if uids else 0
    return {
        "k": k,
        "n": len(uids),
        "records": len(records),
        "drops": n_drops,
        "tasks": dict(tasks),
        "arrays": arrays,
    }


def _fragment(k: int, fmt: str) -> str:
    return f"{k:05d}.{fmt}.json"


def _spans(counts: list[int], start: int, stop: int) -> list[tuple[int, int, int]]:
    """``(slice, first line, end line)`` covering records [start, stop) of the concatenated slices."""
    out, offset = [], 0
    for k, c in enumerate(counts):
        a, b = max(start, offset), min(stop, offset + c)
        if a < b:
            out.append((k, a - offset, b - offset))
        offset += c
    return out


def _lines(parts: Storage, spans: list[tuple[int, int, int]]) -> list[str]:
    got: list[str] = []
    for k, a, b in spans:
        got += parts.read_text(f"{k:05d}.jsonl").splitlines(keepends=True)[a:b]
    return got


def _write_jsonl(out: Storage, name: str, spans: list[tuple[int, int, int]]) -> None:
    out.write_text(name, "".join(_lines(out.child(PARTS), spans)))


def _write_dragonfly(out: Storage, name: str, spans: list[tuple[int, int, int]]) -> None:
    from loupe.pipeline.stages.export.formats import DRAGONFLY_SCHEMA, dragonfly_text

    recs = [json.loads(line) for line in _lines(out.child(PARTS), spans)]
    rows = [
        {
            "image_url": r["image_url"],
            "source": r["source"],
            "conversations": dragonfly_text(r["conversations"]),
        }
        for r in recs
    ]
    sink = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pylist(rows, schema=DRAGONFLY_SCHEMA), sink)
    out.write_bytes(f"dragonfly/{name}", sink.getvalue().to_pybytes())


def _write_stats(plan: Plan, stage_id: str, n_slices: int, tasks: dict, extra: dict) -> None:
    _, stage = _stage_of(plan, stage_id)
    parts = stage.out.child(PARTS)
    per_record = pa.concat_tables(
        [pq.read_table(pa.BufferReader(parts.read_bytes(f"{k:05d}.parquet"))) for k in range(n_slices)]
    )
    stage.write_stats(per_record, Counter(tasks), extra)


def _call(fn: Any, *args: Any) -> Any:
    return fn(*args)


def export_ray(
    plan: Plan, sp: StagePlan, live_ref: Any, todo_ref: Any, n: int, baseline
) -> Iterator[pa.Table]:
    import ray
    import ray.data

    cfg = sp.config
    out = plan.run.storage.child("export")
    out.delete_dir(PARTS)  # a killed export's slices are rebuilt
    files = [str(f) for f in plan.run.shard_files("samples")]
    ds = read_columns(plan, files, ["uid", "source", "source_id"])
    ds = ds.map_batches(
        _keyed, fn_kwargs={"live": live_ref, "todo": todo_ref}, batch_format="pyarrow", batch_size=None
    )
    ds = ds.repartition(target_num_rows_per_block=cfg.batch_size).sort(["k_source", "k_source_id", "uid"])
    blocks = ds.materialize().to_arrow_refs()
    task = ray.remote(_export_slice).options(num_cpus=cfg.resources.num_cpus)
    pending = [task.remote(b, k, plan, sp.id, baseline) for k, b in enumerate(blocks)]
    counts = [0] * len(blocks)
    arrays: list[dict[str, tuple[int, dict]]] = [{} for _ in blocks]
    tasks: Counter = Counter()
    while pending:
        ready, pending = ray.wait(pending, num_returns=1)
        r = ray.get(ready[0])
        counts[r["k"]] = r["records"]
        arrays[r["k"]] = r["arrays"]
        tasks.update(r["tasks"])
        yield _summary(r["n"], 0, r["drops"], {"records": r["records"]})
    total = sum(counts)
    fmts = set(cfg.formats)
    extra: dict[str, int] = {}
    writes = []
    write = ray.remote(_call).options(num_cpus=_IO_CPUS)
    if "dragonfly_parquet" in fmts:  # as write_dragonfly_parquet: old parts go first, one file at least
        for old in out.sizes("dragonfly"):
            if old.startswith(f"{cfg.dragonfly_prefix}_") and old.endswith(".parquet"):
                out.delete(f"dragonfly/{old}")
        starts = range(0, max(total, 1), cfg.dragonfly_rows_per_file)
        for k, start in enumerate(starts):
            span = _spans(counts, start, start + cfg.dragonfly_rows_per_file)
            writes.append(
                write.remote(_write_dragonfly, out, f"{cfg.dragonfly_prefix}_{k:05d}.parquet", span)
            )
        extra["dragonfly_files"] = len(starts)
    for fmt, (name, indent) in JSON_ARRAYS.items():  # stats.json keys in the local executor's order
        if fmt in fmts:
            frags = [_fragment(k, fmt) for k, a in enumerate(arrays) if a[fmt][0]]
            writes.append(write.remote(write_json_array, out, name, out.child(PARTS), frags, indent))
            summed: Counter = Counter()
            for a in arrays:
                summed.update(a[fmt][1])
            extra.update(summed)
    shards: list[dict] = []
    if "llama3_jsonl" in fmts:
        if cfg.shard_size is None or total <= cfg.shard_size:
            writes.append(write.remote(_write_jsonl, out, CONVERSATIONS, _spans(counts, 0, total)))
        else:
            for k, start in enumerate(range(0, total, cfg.shard_size)):
                stop = min(start + cfg.shard_size, total)
                writes.append(write.remote(_write_jsonl, out, shard_name(k), _spans(counts, start, stop)))
                shards.append({"path": shard_name(k), "records": stop - start})
        extra["conversation_files"] = max(len(shards), 1)
    ray.get(writes)
    if "llama3_jsonl" in fmts:  # as write_conversations: the index after its shards, stale files last
        if shards:
            index = {"format": "llama3_jsonl", "records": total, "shards": shards}
            out.write_text(CONVERSATIONS_INDEX, json.dumps(index, indent=1))
            out.delete(CONVERSATIONS)
        else:
            out.delete(CONVERSATIONS_INDEX)
        old = {f for f in out.sizes("") if f.startswith("conversations-") and f.endswith(".jsonl")}
        for f in old - {s["path"] for s in shards}:
            out.delete(f)
    stats = ray.remote(_write_stats).options(num_cpus=_IO_CPUS)
    ray.get(stats.remote(plan, sp.id, len(blocks), dict(tasks), extra))
    out.delete_dir(PARTS)
