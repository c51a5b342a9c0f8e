"""Outputs on a URI: the run executes in a local staging dir mirrored to ``<uri>/<recipe>/<lineage>``.

Real filesystems only: ``file://`` (pyarrow's LocalFileSystem) and fsspec's in-process ``memory://``
(through pyarrow's FSSpecHandler); a real ``kill -9`` of a run in a subprocess for the crash case.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import duckdb
import pyarrow as pa
import pytest
from ray_helpers import private_ray
from typer.testing import CliRunner

from loupe.pipeline.cli import app
from loupe.pipeline.errors import LoupeError
from loupe.pipeline.executors.local import run_local
from loupe.pipeline.executors.plan import Plan, StagePlan, make_plan
from loupe.pipeline.query import query
from loupe.pipeline.recipe import load_recipe
from loupe.pipeline.remote import SYNC_RECORD, RemoteRun
from loupe.pipeline.rundir import RunDir
from loupe.pipeline.stage import Stage, StageOutput
from loupe.schemas.recipe import StageConfig
from loupe.schemas.tables import TAGS

LIVE_DEMO = 33  # 37 files - 3 planted duplicates - 1 corrupt
INGESTED = 37  # rows + drops of ingest


def _recipe(tmp_path: Path, images: Path, output: str = "runs") -> Path:
    p = tmp_path / "recipe.yaml"
    p.write_text(
        f"name: remote\noutput: {output}\nsources:\n  - type: local_folder\n    name: demo\n"
        f"    path: {images}\nstages:\n  - stage: exact_dedup\n"
    )
    return p


@pytest.fixture(autouse=True)
def staging(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    d = tmp_path / "staging"
    monkeypatch.setenv("LOUPE_STAGING_DIR", str(d))
    return d


def _table_uids(root: Path, table: str) -> list[str]:
    """Every uid of a table read straight from the parquet files under ``root`` (duplicates kept)."""
    files = sorted(str(f) for f in RunDir(root).table_dir(table).glob("*.parquet"))
    if not files:
        return []
    return [r[0] for r in duckdb.sql(f"SELECT uid FROM read_parquet({files}) ORDER BY uid").fetchall()]


def test_file_uri_output_holds_the_same_tables_as_a_local_run(tmp_path, demo_images, staging):
    recipe = _recipe(tmp_path, demo_images)
    local = make_plan(load_recipe(recipe))
    run_local(local, quiet=True)
    remote_root = tmp_path / "bucket"
    result = CliRunner().invoke(app, ["run", str(recipe), "--output", f"file://{remote_root}", "-q"])
    assert result.exit_code == 0, result.output
    plan = make_plan(load_recipe(recipe), f"file://{remote_root}")
    remote_dir = remote_root / "remote" / plan.lineage
    assert f"rundir:file://{remote_dir}" in "".join(result.output.split())  # rich wraps long lines
    assert plan.run.path.is_relative_to(staging)
    for table in ("samples", "drops"):
        got = _table_uids(remote_dir, table)
        assert got == _table_uids(local.run.path, table) and len(got) == len(set(got)) > 0
    assert len(_table_uids(remote_dir, "samples")) == 36 and len(_table_uids(remote_dir, "drops")) == 4
    # the remote dir is a complete run dir: queries on it match the local run
    remote_live = query(RunDir(remote_dir), "SELECT uid FROM live ORDER BY uid").column("uid").to_pylist()
    assert remote_live == query(local.run, "SELECT uid FROM live ORDER BY uid").column("uid").to_pylist()
    assert len(remote_live) == LIVE_DEMO
    assert RunDir(remote_dir).manifest()["status"] == "complete"
    # staging bookkeeping never reaches the remote
    assert not (remote_dir / SYNC_RECORD).exists() and not list(remote_dir.rglob(".tmp-*"))


def test_memory_uri_resumes_from_the_remote_copy_when_staging_is_gone(tmp_path, demo_images, staging):
    uri = f"memory://loupe-test-{uuid.uuid4().hex[:8]}/runs"
    recipe = _recipe(tmp_path, demo_images, output=uri)  # the recipe's own `output` field
    first = run_local(make_plan(load_recipe(recipe)), quiet=True)
    assert first["ingest"]["skipped_done"] == 0 and first["ingest"]["rows_out"] == 36
    plan = make_plan(load_recipe(recipe))
    assert plan.remote is not None and plan.remote.uri == f"{uri}/remote/{plan.lineage}"
    import fsspec

    mem = fsspec.filesystem("memory")
    remote_files = [p for p in mem.find(plan.remote.base) if p.endswith(".parquet")]
    assert len(remote_files) >= 3  # ingest samples + drops, dedup's shard

    shutil.rmtree(staging)  # another machine: nothing local
    again = run_local(make_plan(load_recipe(recipe)), quiet=True)
    assert again["ingest"]["skipped_done"] == INGESTED and again["ingest"]["rows_in"] == 0
    assert again["exact_dedup"]["rows_in"] == 0
    run = make_plan(load_recipe(recipe)).run
    uids = run.read_table("samples", ["uid"]).column("uid").to_pylist()
    assert len(uids) == len(set(uids)) == 36 and len(run.live_uids()) == LIVE_DEMO
    # nothing new was committed, so the remote holds exactly the files it held before
    assert sorted(p for p in mem.find(plan.remote.base) if p.endswith(".parquet")) == sorted(remote_files)


class Flaky(Stage):
    """Tags each image with its file name; raises on batch number ``fail_at`` (1-based) if set."""

    name = "flaky"
    table = "tags"
    reads = ("uid", "source_id")
    fail_at: int | None = None
    calls = 0

    def __call__(self, batch: pa.Table) -> StageOutput:
        Flaky.calls += 1
        if Flaky.fail_at is not None and Flaky.calls >= Flaky.fail_at:
            raise RuntimeError("worker lost")
        rows = [{"uid": r["uid"], "model": "flaky", "tag": r["source_id"], "score": 1.0} for r in batch.to_pylist()]
        return StageOutput(rows=pa.Table.from_pylist(rows, schema=TAGS))


def _flaky_plan(recipe: Path) -> Plan:
    plan = make_plan(load_recipe(recipe))
    cfg = StageConfig(batch_size=8)
    plan.stages.append(StagePlan("flaky", cfg, Flaky, "tags", False, Flaky.reads, ()))
    return plan


def test_failed_stage_uploads_finished_shards_and_a_rerun_elsewhere_completes(
    tmp_path, demo_images, staging, monkeypatch
):
    uri = f"memory://loupe-test-{uuid.uuid4().hex[:8]}/runs"
    recipe = _recipe(tmp_path, demo_images, output=uri)
    monkeypatch.setattr(Flaky, "fail_at", 3)
    monkeypatch.setattr(Flaky, "calls", 0)
    with pytest.raises(RuntimeError, match="worker lost"):
        run_local(_flaky_plan(recipe), quiet=True)
    # the failure still uploaded: ingest, dedup and the two batches of `flaky` that committed
    shutil.rmtree(staging)
    probe = _flaky_plan(recipe)
    probe.remote.download(probe.run.path)
    assert len(probe.run.done_uids("flaky", "tags")) == 16
    assert probe.run.manifest()["stages"]["exact_dedup"]["status"] == "complete"
    shutil.rmtree(staging)

    monkeypatch.setattr(Flaky, "fail_at", None)
    m = run_local(_flaky_plan(recipe), quiet=True)
    assert m["ingest"]["skipped_done"] == INGESTED and m["flaky"]["skipped_done"] == 16
    assert m["flaky"]["rows_in"] == LIVE_DEMO - 16
    run = _flaky_plan(recipe).run
    tags = run.read_table("tags", ["uid"]).column("uid").to_pylist()
    assert len(tags) == len(set(tags)) == LIVE_DEMO and set(tags) == run.live_uids()


KILLED = """
import os, signal, sys
import pyarrow as pa
from loupe.pipeline.executors.local import run_local
from loupe.pipeline.executors.plan import StagePlan, make_plan
from loupe.pipeline.recipe import load_recipe
from loupe.pipeline.stage import Stage, StageOutput
from loupe.schemas.recipe import StageConfig
from loupe.schemas.tables import TAGS


class Doomed(Stage):
    name = "flaky"
    table = "tags"
    reads = ("uid", "source_id")
    calls = 0

    def __call__(self, batch):
        Doomed.calls += 1
        if Doomed.calls == 3:
            os.kill(os.getpid(), signal.SIGKILL)  # no cleanup, no upload
        rows = [{"uid": r["uid"], "model": "flaky", "tag": r["source_id"], "score": 1.0}
                for r in batch.to_pylist()]
        return StageOutput(rows=pa.Table.from_pylist(rows, schema=TAGS))


plan = make_plan(load_recipe(sys.argv[1]), sys.argv[2])
plan.stages.append(StagePlan("flaky", StageConfig(batch_size=8), Doomed, "tags", False, Doomed.reads, ()))
run_local(plan, quiet=True)
"""


def _flaky_run(recipe: Path, uri: str) -> tuple[Plan, dict]:
    plan = make_plan(load_recipe(recipe), uri)
    plan.stages.append(StagePlan("flaky", StageConfig(batch_size=8), Flaky, "tags", False, Flaky.reads, ()))
    return plan, run_local(plan, quiet=True)


@pytest.mark.parametrize("where", ["same_machine", "other_machine", "both"])
def test_kill_9_midway_then_rerun_has_no_duplicates(tmp_path, demo_images, staging, monkeypatch, where):
    """Rerun on the killed machine (its un-uploaded shards count), on another one (they are redone), or
    on another one and then the killed one again: the remote's shards win over the stale local ones."""
    recipe = _recipe(tmp_path, demo_images)
    remote_root = tmp_path / "bucket"
    uri = f"file://{remote_root}"
    script = tmp_path / "killed.py"
    script.write_text(textwrap.dedent(KILLED))
    proc = subprocess.run(
        [sys.executable, str(script), str(recipe), uri], env={**os.environ}, capture_output=True, timeout=120
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    plan = make_plan(load_recipe(recipe), uri)
    remote_dir = remote_root / "remote" / plan.lineage
    # uploaded after ingest and dedup; the two committed batches of `flaky` are only in staging
    assert len(_table_uids(remote_dir, "samples")) == 36 and _table_uids(remote_dir, "tags") == []
    assert len(_table_uids(plan.run.path, "tags")) == 16
    monkeypatch.setattr(Flaky, "fail_at", None)
    if where == "other_machine":
        shutil.rmtree(staging)
    elif where == "both":
        monkeypatch.setenv("LOUPE_STAGING_DIR", str(tmp_path / "other"))
        _, m = _flaky_run(recipe, uri)
        assert m["flaky"]["skipped_done"] == 0 and m["flaky"]["rows_out"] == LIVE_DEMO
        monkeypatch.setenv("LOUPE_STAGING_DIR", str(staging))
    plan, m = _flaky_run(recipe, uri)
    assert m["flaky"]["skipped_done"] == {"same_machine": 16, "other_machine": 0, "both": LIVE_DEMO}[where]
    for root in (plan.run.path, remote_dir):
        tags = _table_uids(root, "tags")
        assert len(tags) == len(set(tags)) == LIVE_DEMO
    assert len(_table_uids(remote_dir, "samples")) == 36


def test_unknown_scheme_is_a_clear_error_naming_the_field(tmp_path, demo_images, staging):
    loaded = load_recipe(_recipe(tmp_path, demo_images))
    with pytest.raises(LoupeError, match=r"^--output: 'nope://bucket/runs/remote/\w+': neither pyarrow nor fsspec"):
        make_plan(loaded, "nope://bucket/runs")
    loaded.recipe.output = "nope://bucket/runs"
    with pytest.raises(LoupeError, match=r"^output: 'nope://"):
        make_plan(loaded)
    result = CliRunner().invoke(app, ["run", str(_recipe(tmp_path, demo_images)), "--output", "nope://b/r"])
    assert result.exit_code != 0 and "neither pyarrow nor fsspec can open nope://" in result.output
    assert not staging.exists() and not list(tmp_path.glob("nope*"))


def test_query_and_report_on_a_uri_say_to_use_a_local_copy(tmp_path):
    for cmd in (["query", "s3://bucket/runs/x/abc", "SELECT 1"], ["report", "gs://bucket/runs/x/abc"]):
        result = CliRunner().invoke(app, cmd)
        assert result.exit_code != 0 and "is a URI: query and report read a local run dir" in result.output


def test_remote_run_pickles_without_its_filesystem(tmp_path):
    import pickle

    r = RemoteRun("memory://b/runs", "rec", "abc123")
    back = pickle.loads(pickle.dumps(r))
    assert back._fs is None and back.uri == "memory://b/runs/rec/abc123"
    assert back.fs.type_name == r.fs.type_name and back.staging == r.staging


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_ray_executor_uploads_a_uri_output(tmp_path, demo_images, staging):
    """Actors commit into the staging dir; the driver uploads after each stage (global and map)."""
    from loupe.pipeline.executors.ray import run_ray

    with private_ray(__name__):
        uri = f"file://{tmp_path / 'bucket'}"
        plan = make_plan(load_recipe(_recipe(tmp_path, demo_images)), uri)
        plan.stages.append(StagePlan("flaky", StageConfig(batch_size=8), Flaky, "tags", False, Flaky.reads, ()))
        m = run_ray(plan, quiet=True)
    assert m["flaky"]["rows_out"] == LIVE_DEMO and m["exact_dedup"]["drops"] == 3
    remote = RunDir(tmp_path / "bucket" / "remote" / plan.lineage)
    tags = _table_uids(remote.path, "tags")
    assert len(tags) == len(set(tags)) == LIVE_DEMO and set(tags) == remote.live_uids()
    assert remote.manifest()["executor"] == "ray" and remote.manifest()["status"] == "complete"
    assert (plan.run.path / "_state" / "ray_owner").exists()  # the driver's token stays local
    assert not (remote.path / "_state" / "ray_owner").exists()


def test_failed_upload_keeps_the_run_in_staging_with_a_clear_error(tmp_path, demo_images, staging):
    (tmp_path / "bucket").write_text("a file where the bucket folder should be")
    recipe = _recipe(tmp_path, demo_images)
    uri = f"file://{tmp_path}/bucket"
    result = CliRunner().invoke(app, ["run", str(recipe), "--output", uri])
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit)  # _fail, not a traceback
    text = " ".join(result.output.split())
    assert "after stage 'ingest' failed" in text and "retrying at the end of the run" in text
    assert f"error: upload to {uri}/remote/" in text and "rerun the same command to upload it" in text
    # every stage finished locally; nothing was lost
    run = make_plan(load_recipe(recipe), uri).run
    assert run.manifest()["status"] == "complete" and len(run.live_uids()) == LIVE_DEMO
