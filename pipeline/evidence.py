"""Attach other tables to a batch as one ``list<struct>`` column per table (a stage's ``evidence``)."""

from __future__ import annotations

import duckdb
import pyarrow as pa

from loupe.pipeline.query import fetch_arrow
from loupe.pipeline.rundir import RunDir
from loupe.schemas.tables import TABLES


def attach_evidence(run: RunDir, batch: pa.Table, tables: tuple[str, ...]) -> pa.Table:
    if not tables or batch.num_rows == 0:
        return batch
    con = duckdb.connect()
    try:
        con.register("batch_uids", batch.select(["uid"]))
        for name in tables:
            schema = TABLES[name][1]
            fields = [f for f in schema if f.name != "uid"]
            struct_type = pa.struct(fields)
            files = [str(f) for f in run.shard_files(name)]
            by_uid: dict[str, list] = {}
            if files:
                cols = ", ".join(f'"{f.name}"' for f in fields)
                order = "line" if "line" in schema.names else "score DESC" if "score" in schema.names else "1"
                rel = con.execute(
                    f"SELECT uid, {cols} FROM read_parquet(?, union_by_name=true) "
                    f"WHERE uid IN (SELECT uid FROM batch_uids) ORDER BY uid, {order}",
                    [files],
                )
                rel = fetch_arrow(rel)
                for row in rel.to_pylist():
                    uid = row.pop("uid")
                    by_uid.setdefault(uid, []).append(row)
            col = pa.array([by_uid.get(u, []) for u in batch["uid"].to_pylist()], pa.list_(struct_type))
            if name in batch.column_names:
                batch = batch.drop_columns([name])
            batch = batch.append_column(name, col)
    finally:
        con.close()
    return batch
