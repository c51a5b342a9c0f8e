"""Integrity: garbled, truncated and foreign shards are quarantined and their uids redone; changed
or vanished source files are never exported stale."""

from __future__ import annotations

import json
import shutil

import pyarrow.parquet as pq
import pytest
from PIL import Image

from loupe.pipeline.errors import LoupeError
from loupe.pipeline.integrity import QUARANTINE, check_shard
from loupe.pipeline.query import query

from .common import cli, export_files, fast_recipe, one_line_error, run_recipe


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    root = tmp_path_factory.mktemp("clean")
    plan = run_recipe(fast_recipe(root))
    return plan


def _fresh(tmp_path, clean):
    """A copy of the clean run's run dir under another output root (same recipe, same lineage)."""
    shutil.copytree(clean.run.path, tmp_path / "out" / "fast" / clean.lineage)
    return clean.loaded.path, str(tmp_path / "out")


def _samples_shards(run_path):
    return sorted((run_path / "samples").glob("*.parquet"))


def test_garbled_shard_is_quarantined_and_redone(tmp_path, clean, capfd):
    recipe, output = _fresh(tmp_path, clean)
    run_path = tmp_path / "out" / "fast" / clean.lineage
    shard = _samples_shards(run_path)[0]
    data = bytearray(shard.read_bytes())
    mid = len(data) // 2
    data[mid : mid + 64] = bytes(b ^ 0xFF for b in data[mid : mid + 64])  # flip bits inside image pages
    shard.write_bytes(bytes(data))
    assert "garbled" in check_shard(clean.run.__class__(run_path, clean.lineage), "samples", shard)
    plan = run_recipe(recipe, output)
    err = capfd.readouterr().err
    assert f"samples/{shard.name} quarantined" in err and "garbled" in err, err
    assert (run_path / QUARANTINE / "samples" / shard.name).exists()
    assert "garbled" in (run_path / QUARANTINE / "samples" / f"{shard.name}.reason").read_text()
    assert plan.run.manifest()["quarantined"][0]["shard"] == f"samples/{shard.name}"
    assert export_files(run_path) == export_files(clean.run.path)
    n = query(plan.run, "SELECT count(*) AS n, count(DISTINCT uid) AS u FROM samples").to_pylist()[0]
    assert n["n"] == n["u"] == 36  # redone exactly once


def test_foreign_and_truncated_shards(tmp_path, clean, capfd):
    recipe, output = _fresh(tmp_path, clean)
    run_path = tmp_path / "out" / "fast" / clean.lineage
    shards = _samples_shards(run_path)
    # a shard of another run (other lineage) copied in, under a plausible name
    t = pq.read_table(shards[0])
    meta = dict(t.schema.metadata)
    meta[b"loupe.lineage"] = b"0123456789ab"
    foreign = run_path / "samples" / "ingest-20990101000000-feedfeedfe.parquet"
    pq.write_table(t.replace_schema_metadata(meta), foreign)
    # a shard cut short (what a full disk or a half copy leaves)
    cut = shards[-1]
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 3])
    # query/report meet it first: one line naming the shard, no traceback
    msg = one_line_error(cli("query", str(run_path), "SELECT count(*) FROM samples"))
    assert cut.name in msg or foreign.name in msg, msg
    with pytest.raises(LoupeError, match="not readable parquet"):
        query(clean.run.__class__(run_path), "SELECT 1")
    one_line_error(cli("report", str(run_path)))
    run_recipe(recipe, output)
    err = capfd.readouterr().err
    assert "written by another run (lineage 0123456789ab" in err and "unreadable parquet footer" in err, err
    assert export_files(run_path) == export_files(clean.run.path)


def test_changed_and_vanished_source_files_are_not_exported_stale(tmp_path):
    recipe = fast_recipe(tmp_path)
    first = run_recipe(recipe)
    run_path = first.run.path
    images = tmp_path / "images"
    victim = sorted(images.glob("*.jpg"))[0]
    gone = sorted(images.glob("*.png"))[0]
    Image.new("RGB", (64, 48), (200, 10, 10)).save(victim, format="JPEG")  # same name, new content
    gone.unlink()
    plan = run_recipe(recipe)
    rows = query(
        plan.run, "SELECT reason, detail FROM drops WHERE stage = 'source_check' ORDER BY 1"
    ).to_pylist()
    reasons = {r["reason"] for r in rows}
    assert reasons == {"source_changed", "source_missing"}, rows
    assert any(victim.name in r["detail"] for r in rows) and any(gone.name in r["detail"] for r in rows)
    live = query(plan.run, "SELECT source_id, sha256 FROM live").to_pylist()
    by_name = {r["source_id"]: r["sha256"] for r in live}
    assert gone.name not in by_name
    import hashlib

    assert by_name[victim.name] == hashlib.sha256(victim.read_bytes()).hexdigest()  # the new content
    records = [json.loads(x) for x in (run_path / "export" / "conversations.jsonl").read_text().splitlines()]
    assert len(records) == len(live)
