"""A stage's ``evidence``: other tables attached to its input as one ``list<struct>`` column per table.

The join is done **once per stage**, not once per batch: :func:`build_stage_input` runs one duckdb
query — the stage's ``samples`` columns for its todo uids, LEFT JOINed on ``uid`` with each evidence
table aggregated per uid — and streams the result into parquet files under
``_state/<stage>/input/``. Both executors then read their batches from those files (the local
executor in-process, the Ray executor with ``read_parquet``), so a batch costs the same at 10³ and
10⁶ samples. Attaching evidence per batch by scanning every evidence shard (the old way) cost
O(shards) per batch, i.e. O(N²) per stage (issue 19; ``benchmarks/bench_evidence.py``).

Lists are ordered as the stages expect them: OCR by ``line``, detections and tags by ``score``
descending. A sample without rows in a table gets an empty list.
"""

from __future__ import annotations

import shutil
import tempfile
import uuid
from collections.abc import Iterable
from pathlib import PurePath

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from loupe.pipeline.query import fetch_arrow
from loupe.pipeline.rundir import RunDir
from loupe.schemas.tables import TABLES

#: rows per parquet file of a stage input (Ray Data reads one block per file)
INPUT_ROWS_PER_FILE = 4096


def evidence_type(name: str) -> pa.DataType:
    """The ``list<struct>`` type of table ``name`` as a stage sees it (every column but ``uid``)."""
    return pa.list_(pa.struct([f for f in TABLES[name][1] if f.name != "uid"]))


def _order(schema: pa.Schema) -> str:
    if "line" in schema.names:
        return "line"
    if "score" in schema.names:
        return "score DESC"
    return "model"


def _quote(path: str) -> str:
    return "'" + path.replace("'", "''") + "'"


def _register(con: duckdb.DuckDBPyConnection, run: RunDir, table: str) -> str | None:
    """Register a table's committed shards (a pyarrow dataset: local or object store) as view
    ``t_<table>``; None when the run has none."""
    ds = run.dataset(table)
    if ds is None:
        return None
    con.register(f"t_{table}", ds)
    return f"t_{table}"


def _join_sql(
    con: duckdb.DuckDBPyConnection, run: RunDir, left: str, columns: Iterable[str], tables: tuple[str, ...]
) -> str:
    """SQL joining relation ``left`` (which has ``uid``) with each evidence table aggregated by uid."""
    select = [f'l."{c}"' for c in columns]
    joins = []
    for i, name in enumerate(tables):
        schema = TABLES[name][1]
        view = _register(con, run, name)
        if view is None:
            select.append(f'NULL AS "{name}"')
            continue
        fields = ", ".join(f'"{f.name}" := "{f.name}"' for f in schema if f.name != "uid")
        joins.append(
            f'LEFT JOIN (SELECT uid, list(struct_pack({fields}) ORDER BY {_order(schema)}) AS "{name}" '
            f"FROM {view} "
            f"WHERE uid IN (SELECT uid FROM {left}) GROUP BY uid) e{i} ON l.uid = e{i}.uid"
        )
        select.append(f'e{i}."{name}"')
    return f"SELECT {', '.join(select)} FROM {left} l {' '.join(joins)}"


def conform_evidence(batch: pa.Table, tables: tuple[str, ...]) -> pa.Table:
    """Evidence columns as the stage contract types them: exact ``list<struct>``, [] instead of null."""
    for name in tables:
        typ = evidence_type(name)
        if name in batch.column_names:
            col = batch[name]
            col = col.cast(typ) if col.type != typ else col
            if col.null_count:
                col = pc.if_else(pc.is_null(col), pa.scalar([], typ), col)
            batch = batch.set_column(batch.column_names.index(name), name, col)
        else:
            batch = batch.append_column(name, pa.array([[]] * batch.num_rows, typ))
    return batch


def attach_evidence(run: RunDir, batch: pa.Table, tables: tuple[str, ...]) -> pa.Table:
    """``batch`` with one evidence column per table: one join, for a global stage's single batch."""
    if not tables or batch.num_rows == 0:
        return batch
    batch = batch.drop_columns([t for t in tables if t in batch.column_names])
    con = duckdb.connect()
    try:
        con.register("batch_in", batch)
        joined = fetch_arrow(con.sql(_join_sql(con, run, "batch_in", batch.column_names, tables)))
    finally:
        con.close()
    # the join does not keep row order: put rows back in the batch's order
    pos = pc.index_in(batch["uid"], value_set=joined["uid"])
    return conform_evidence(joined.take(pos), tables)


def arrow_reader(result, rows: int) -> pa.RecordBatchReader:
    """duckdb 2.0 renamed ``fetch_record_batch`` to ``to_arrow_reader``; accept both."""
    fn = getattr(result, "to_arrow_reader", None) or result.fetch_record_batch
    return fn(rows)


def input_dir(stage_id: str) -> str:
    """The stage input's folder, relative to the run dir."""
    return f"_state/{stage_id}/input"


def build_stage_input(
    run: RunDir,
    stage_id: str,
    reads: tuple[str, ...],
    tables: tuple[str, ...],
    todo: set[str] | pa.Array,
    rows_per_file: int = INPUT_ROWS_PER_FILE,
) -> list[PurePath]:
    """Write the stage's input once — ``samples[reads]`` of the ``todo`` uids joined with its evidence
    tables — as parquet files under ``_state/<stage>/input/`` of the run dir (so every worker of the
    cluster reads them, from a shared folder or the object store); returns their paths inside
    ``run.fs`` (none when nothing to do).

    One streaming duckdb pass (it spills to a local temp dir when the join does not fit in memory).
    The files are rebuilt on every run of the stage (a resumed run has a smaller todo set) and removed
    by :func:`remove_stage_input` when the stage completes.
    """
    out = input_dir(stage_id)
    remove_stage_input(run, stage_id)
    if not len(todo) or run.dataset("samples") is None:
        return []
    con = duckdb.connect()
    spill = tempfile.mkdtemp(prefix="loupe-spill-")
    try:
        con.execute(f"SET temp_directory = {_quote(spill)}")
        uids = todo if isinstance(todo, pa.Array) else pa.array(sorted(todo), pa.string())
        con.register("todo_uids", pa.table({"uid": uids}))
        samples = _register(con, run, "samples")
        cols = ", ".join(f'"{c}"' for c in reads)
        con.execute(
            f"CREATE TEMP VIEW stage_in AS SELECT {cols} FROM {samples} "
            "WHERE uid IN (SELECT uid FROM todo_uids)"
        )
        reader = arrow_reader(con.sql(_join_sql(con, run, "stage_in", reads, tables)), rows_per_file)
        paths: list[PurePath] = []
        for rb in reader:
            if rb.num_rows == 0:
                continue
            t = conform_evidence(pa.Table.from_batches([rb]), tables)
            rel = f"{out}/part-{len(paths):06d}-{uuid.uuid4().hex[:6]}.parquet"
            run.write_parquet_file(rel, t)
            paths.append(PurePath(run.storage.key(rel)))
        return paths
    finally:
        con.close()
        shutil.rmtree(spill, ignore_errors=True)


def remove_stage_input(run: RunDir, stage_id: str) -> None:
    run.delete_dir(input_dir(stage_id))
