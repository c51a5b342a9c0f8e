"""local_folder ingest + exact dedup through the real local executor."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from loupe.pipeline.executors.local import run_local
from loupe.pipeline.executors.plan import make_plan
from loupe.pipeline.query import query
from loupe.pipeline.recipe import load_recipe

RECIPE = """
name: lf
output: runs
sources:
  - type: local_folder
    name: demo
    path: demo_images
stages:
  - stage: exact_dedup
"""


def _run(tmp_path: Path):
    p = tmp_path / "r.yaml"
    p.write_text(RECIPE)
    plan = make_plan(load_recipe(p))
    metrics = run_local(plan, quiet=True)
    return plan.run, metrics


def test_ingest_and_exact_dedup_of_bundled_images(tmp_path, demo_images):
    run, metrics = _run(tmp_path)
    n_files = len([p for p in demo_images.iterdir() if p.suffix in (".jpg", ".png")])
    assert n_files == 37
    assert metrics["ingest"]["rows_out"] == 36 and metrics["ingest"]["drops"] == 1
    drops = query(run, "SELECT reason, detail, duplicate_of FROM drops ORDER BY detail").to_pylist()
    assert [d["reason"] for d in drops] == [
        "decode_error",
        "exact_duplicate",
        "exact_duplicate",
        "exact_duplicate",
    ]
    assert drops[0]["detail"].startswith("broken_upload.jpg: ")
    copies = sorted(d["detail"].split(" ")[0] for d in drops[1:])
    assert copies == ["chelsea_copy.jpg", "coffee_again.jpg", "exit_sign_dup.png"]
    # every dedup drop names the kept original, which is live
    live = {r["uid"] for r in query(run, "SELECT uid FROM live").to_pylist()}
    assert len(live) == 33 and all(d["duplicate_of"] in live for d in drops[1:])
    s = query(run, "SELECT * FROM samples WHERE source_id = 'chelsea.jpg'").to_pylist()[0]
    assert (s["width"], s["height"]) == (451, 300)
    assert s["alt_text"] == "Chelsea the tabby cat looking to the side."
    assert json.loads(s["meta"])["format"] == "jpeg"


def test_rerun_skips_everything_and_changes_nothing(tmp_path, demo_images):
    run, _ = _run(tmp_path)
    before = sorted(p.name for p in run.path.rglob("*.parquet"))
    run2, metrics = _run(tmp_path)
    assert run2.path == run.path
    assert metrics["ingest"]["rows_in"] == 0 and metrics["ingest"]["skipped_done"] == 37
    assert metrics["exact_dedup"]["rows_in"] == 0
    assert sorted(p.name for p in run.path.rglob("*.parquet")) == before


def test_new_files_are_ingested_on_rerun(tmp_path, demo_images):
    run, _ = _run(tmp_path)
    (demo_images / "sub").mkdir()
    (demo_images / "sub" / "moon2.jpg").write_bytes((demo_images / "moon.jpg").read_bytes())
    _, metrics = _run(tmp_path)
    assert metrics["ingest"]["rows_out"] == 1
    n = query(run, "SELECT count(*) n, count(DISTINCT uid) d FROM samples").to_pylist()[0]
    assert n == {"n": 37, "d": 37}
    # the new file is a copy of a sample kept in the first run: exact dedup of the rerun drops it
    assert metrics["exact_dedup"]["rows_in"] == 1 and metrics["exact_dedup"]["drops"] == 1
    d = query(run, "SELECT d.detail, s.source_id AS kept FROM drops d JOIN samples s ON s.uid = d.duplicate_of "
              "WHERE d.reason = 'exact_duplicate' AND d.detail LIKE 'sub/%'").to_pylist()
    assert d == [{"detail": "sub/moon2.jpg has the same sha256 as moon.jpg", "kept": "moon.jpg"}]
    assert query(run, "SELECT count(*) n FROM live").to_pylist()[0]["n"] == 33


def test_cli_query_count_and_validate(tmp_path, demo_images):
    p = tmp_path / "r.yaml"
    p.write_text(RECIPE)
    exe = [sys.executable, "-m", "loupe.pipeline.cli"]
    assert subprocess.run([*exe, "validate", str(p)], capture_output=True, text=True).returncode == 0
    r = subprocess.run([*exe, "run", str(p), "-q"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    r = subprocess.run(
        [*exe, "query", str(tmp_path / "runs" / "lf"), "SELECT count(*) AS n FROM samples", "-f", "csv"],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0 and r.stdout.splitlines() == ["n", "36"]
    bad = subprocess.run(
        [*exe, "query", str(tmp_path / "runs" / "lf"), "SELECT nope FROM samples"],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and "query failed" in bad.stderr and "Traceback" not in bad.stderr
