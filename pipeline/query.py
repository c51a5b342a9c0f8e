"""duckdb over a run: every table directory becomes a view named after it (``samples``, ``ocr``, ...).

Read-only by construction: each table is registered as a pyarrow dataset of its committed shards
(checksum-verified reads, ``RunDir.dataset``; on an object store the datasets read through
``pyarrow.fs``, so no duckdb extension such as httpfs is needed), then the connection is opened up to nothing else: ``enable_external_access``
is off (no ``read_csv('/etc/passwd')``, ``COPY ... TO``, ``ATTACH``, ``INSTALL``, ``EXPORT DATABASE``)
and ``lock_configuration`` stops a query from turning it back on. A query can create temporary
in-memory tables and views; nothing it does reaches a file.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.fs as pafs

from loupe.pipeline.errors import LoupeError
from loupe.pipeline.rundir import RunDir
from loupe.pipeline.storage import first_line, open_storage
from loupe.schemas.tables import TABLES


def resolve_run(path: str | Path) -> RunDir:
    """Accept a run dir, or a recipe's runs folder (``runs/demo``): then the newest run inside.
    Either may be a local path or an object-store URI (``s3://bucket/runs/demo/<hash>``)."""
    storage = open_storage(path, field="run dir")
    try:
        if storage.exists("manifest.json"):
            return RunDir(storage)
        runs = []
        for d in storage.subdirs(""):
            info = storage.info(f"{d}/manifest.json")
            if info.type == pafs.FileType.File:
                runs.append((info.mtime_ns or 0, d))
    except (OSError, pa.ArrowException) as e:
        raise LoupeError(f"{str(path)!r}: cannot read it ({first_line(e)})") from None
    if runs:
        return RunDir(storage.child(max(runs)[1]))
    raise LoupeError(f"{str(path)!r} is not a run directory (no manifest.json); pass runs/<recipe>/<hash>")


def connect(run: RunDir) -> duckdb.DuckDBPyConnection:
    """An in-memory duckdb with one view per table, the ``live`` view, and no file access at all."""
    con = duckdb.connect(
        config={
            "enable_external_access": False,
            "autoinstall_known_extensions": False,
            "autoload_known_extensions": False,
        }
    )
    for name, (_, schema) in TABLES.items():
        check_footers(run, name)
        ds = run.dataset(name)
        con.register(name, ds if ds is not None else schema.empty_table())
    # samples still in the dataset after every stage (ingest failures fixed by a retry don't count)
    con.execute(
        "CREATE VIEW live AS SELECT * FROM samples WHERE uid NOT IN "
        "(SELECT uid FROM drops WHERE stage <> 'ingest')"
    )
    con.execute("SET lock_configuration = true")
    return con


def check_footers(run: RunDir, table: str) -> None:
    """A truncated or foreign shard is a one-line error naming it (``loupe run`` quarantines it)."""
    for f in run.shard_files(table):
        try:
            run.read_schema(f)
        except (pa.ArrowException, OSError) as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
            raise LoupeError(
                f"shard {f} is not readable parquet ({first}); rerun `loupe run` on the recipe to "
                "quarantine and redo it"
            ) from None


def query(run: RunDir, sql: str):
    con = connect(run)
    try:
        return fetch_arrow(con.sql(sql))
    except (duckdb.Error, pa.ArrowException, OSError) as e:
        raise LoupeError(f"query failed: {e}".splitlines()[0]) from None
    finally:
        con.close()


def fetch_arrow(result) -> pa.Table:
    """duckdb renamed ``fetch_arrow_table`` to ``to_arrow_table`` in 2.0; accept both."""
    fn = getattr(result, "to_arrow_table", None) or result.fetch_arrow_table
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "extra copy" notice for parameterised queries: batches are small
        return fn()
