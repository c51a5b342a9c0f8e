"""`loupe query` cannot write or read outside the run: no COPY TO, ATTACH, read_csv, INSTALL, SET."""

from __future__ import annotations

import pyarrow as pa
import pytest

from loupe.pipeline.errors import LoupeError
from loupe.pipeline.query import query
from loupe.pipeline.rundir import RunDir
from loupe.schemas.tables import drops_table

from .common import cli, one_line_error


@pytest.fixture
def run(tmp_path):
    run = RunDir(tmp_path / "run", lineage="abc")
    run.commit("f", None, None, drops_table([{"uid": "x", "stage": "f", "reason": "r"}]), ["x"])
    run.update_manifest(status="complete")
    return run


ATTACKS = [
    "SELECT * FROM read_csv('/etc/passwd')",
    "SELECT * FROM read_text('/etc/hostname')",
    "SELECT * FROM glob('/*')",
    "SELECT * FROM 'drops/x.parquet'",
    "COPY drops TO '{out}/stolen.csv'",
    "COPY drops TO '{run}/drops/evil.parquet' (FORMAT parquet)",
    "ATTACH '{run}/evil.duckdb' AS evil",
    "EXPORT DATABASE '{out}/dump'",
    "INSTALL httpfs",
    "SET enable_external_access = true",
    "SET lock_configuration = false",
]


@pytest.mark.parametrize("sql", ATTACKS)
def test_query_cannot_touch_files(run, tmp_path, sql):
    before = sorted(p.name for p in run.path.rglob("*"))
    with pytest.raises(LoupeError, match="query failed"):
        query(run, sql.format(out=tmp_path, run=run.path))
    assert sorted(p.name for p in run.path.rglob("*")) == before
    assert not (tmp_path / "stolen.csv").exists() and not (tmp_path / "dump").exists()


def test_views_still_answer(run):
    assert query(run, "SELECT uid, reason FROM drops").to_pylist() == [{"uid": "x", "reason": "r"}]
    # in-memory work is allowed: it changes nothing on disk
    t = query(run, "CREATE TEMP TABLE t AS SELECT 1 AS a; SELECT count(*) AS n FROM drops")
    assert t.to_pylist() == [{"n": 1}] and isinstance(t, pa.Table)


def test_cli_query_attack_is_one_line(run):
    msg = one_line_error(cli("query", str(run.path), "SELECT * FROM read_csv('/etc/passwd')"))
    assert "disabled by configuration" in msg
