"""duckdb over a run: every table directory becomes a view named after it (``samples``, ``ocr``, ...)."""

from __future__ import annotations

import warnings
from pathlib import Path

import duckdb
import pyarrow as pa

from loupe.pipeline.errors import LoupeError
from loupe.pipeline.rundir import RunDir
from loupe.schemas.tables import TABLES


def resolve_run(path: str | Path) -> RunDir:
    """Accept a run dir, or a recipe's runs folder (``runs/demo``): then the newest run inside."""
    p = Path(path)
    if (p / "manifest.json").exists():
        return RunDir(p)
    if p.is_dir():
        runs = sorted(
            (d for d in p.iterdir() if (d / "manifest.json").exists()), key=lambda d: d.stat().st_mtime
        )
        if runs:
            return RunDir(runs[-1])
    raise LoupeError(f"{str(path)!r} is not a run directory (no manifest.json); pass runs/<recipe>/<hash>")


def connect(run: RunDir) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    for name, (_, schema) in TABLES.items():
        files = [str(f) for f in run.shard_files(name)]
        if files:
            listing = ", ".join("'" + f.replace("'", "''") + "'" for f in files)
            con.execute(f"CREATE VIEW {name} AS SELECT * FROM read_parquet([{listing}], union_by_name=true)")
        else:
            con.register(f"_empty_{name}", schema.empty_table())
            con.execute(f"CREATE VIEW {name} AS SELECT * FROM _empty_{name}")
    # samples still in the dataset after every stage (ingest failures fixed by a retry don't count)
    con.execute(
        "CREATE VIEW live AS SELECT * FROM samples WHERE uid NOT IN "
        "(SELECT uid FROM drops WHERE stage <> 'ingest')"
    )
    return con


def query(run: RunDir, sql: str):
    con = connect(run)
    try:
        return fetch_arrow(con.sql(sql))
    except duckdb.Error as e:
        raise LoupeError(f"query failed: {e}".splitlines()[0]) from None
    finally:
        con.close()


def fetch_arrow(result) -> pa.Table:
    """duckdb renamed ``fetch_arrow_table`` to ``to_arrow_table`` in 2.0; accept both."""
    fn = getattr(result, "to_arrow_table", None) or result.fetch_arrow_table
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "extra copy" notice for parameterised queries: batches are small
        return fn()
