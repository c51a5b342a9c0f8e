"""Logs for machines: plain progress lines when stdout is a file, run.log, --version, --set, --limit."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from loupe.pipeline.errors import RecipeError
from loupe.pipeline.logs import TaskState, progress_line
from loupe.pipeline.recipe import apply_override, load_recipe

CLI = [sys.executable, "-m", "loupe.pipeline.cli"]
LINE = re.compile(
    r"^ocr\s+(\d+)/(\d+) \(\d+%\)\s+[\d.]+/s\s+(ETA \d+:\d\d|done)\s+drops \d+\s+elapsed \d+:\d\d$"
)


def _recipe(tmp_path: Path, demo_images: Path) -> Path:
    p = tmp_path / "r.yaml"
    p.write_text(
        f"""
name: logs
output: {tmp_path / "runs"}
sources: [{{type: local_folder, name: demo, path: {demo_images}}}]
stages:
  - {{stage: exact_dedup}}
  - {{stage: ocr, batch_size: 1}}
"""
    )
    return p


def test_progress_line_has_done_total_rate_eta():
    t = TaskState("ocr", total=100, completed=25, fields={"drops": 3}, start=100.0)
    line = progress_line(t, now=110.0)
    assert line.split() == ["ocr", "25/100", "(25%)", "2.5/s", "ETA", "0:30", "drops", "3", "elapsed", "0:10"]
    assert "done" in progress_line(TaskState("x", total=4, completed=4, start=0.0), now=2.0)


def test_run_with_stdout_to_a_file_prints_progress_while_it_runs(tmp_path, demo_images):
    recipe = _recipe(tmp_path, demo_images)
    out = tmp_path / "stdout.txt"
    env = {**os.environ, "LOUPE_PROGRESS_INTERVAL": "0.2"}
    with out.open("w") as f:
        proc = subprocess.Popen(
            [*CLI, "run", str(recipe), "--limit", "3"], stdout=f, stderr=subprocess.PIPE, env=env
        )
        seen_mid_run: list[str] = []
        deadline = time.time() + 120
        while proc.poll() is None and time.time() < deadline:
            lines = [x for x in out.read_text().splitlines() if LINE.match(x)]
            if lines and proc.poll() is None:
                seen_mid_run = lines
                break
            time.sleep(0.05)
        _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err.decode()[-2000:]
    assert seen_mid_run, "no progress line in the stdout file while the run was going"
    done, total = map(int, LINE.match(seen_mid_run[0]).groups()[:2])
    assert total == 3 and done <= 3  # --limit 3: three samples to OCR
    text = out.read_text()
    assert "\x1b[" not in text.split("stages")[0]  # no terminal escapes before the summary
    run_dir = next((tmp_path / "runs" / "logs").iterdir())
    log = (run_dir / "run.log").read_text()
    assert "stage ocr: started (3 samples to do)" in log
    assert "stage ocr: complete: 3 in" in log
    assert re.search(r"progress ocr\s+3/3 \(100%\)", log)


def test_limit_then_full_run_carries_on_in_the_same_run_dir(tmp_path, demo_images):
    p = tmp_path / "r.yaml"
    p.write_text(
        f"name: lim\noutput: {tmp_path / 'runs'}\nsources: [{{type: local_folder, path: {demo_images}}}]\n"
        "stages: [{stage: exact_dedup}]\n"
    )
    r = subprocess.run([*CLI, "run", str(p), "-q", "--limit", "5"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    (run_dir,) = (tmp_path / "runs" / "lim").iterdir()
    from loupe.pipeline.rundir import RunDir

    assert len(RunDir(run_dir).sample_uids()) == 5
    r = subprocess.run([*CLI, "run", str(p), "-q"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert [d.name for d in (tmp_path / "runs" / "lim").iterdir()] == [run_dir.name]
    assert len(RunDir(run_dir).sample_uids()) == 36  # 37 files, one corrupt


def test_version():
    r = subprocess.run([*CLI, "--version"], capture_output=True, text=True)
    assert r.returncode == 0 and re.fullmatch(r"loupe \S+\n", r.stdout)


# ------------------------------------------------------------------------------------- --set
RAW = {
    "name": "x",
    "sources": [{"type": "local_folder", "name": "photos", "path": "."}],
    "stages": [{"stage": "exact_dedup"}, {"stage": "ocr"}, {"stage": "caption"}],
}


def _raw():
    return yaml.safe_load(yaml.safe_dump(RAW))


def test_set_by_stage_name_index_and_top_level():
    raw = _raw()
    apply_override(raw, "stages.ocr.min_score=0.7")
    apply_override(raw, "stages[0].batch_size=8")
    apply_override(raw, "sources.photos.extensions=[.png]")
    apply_override(raw, "name=trial")
    assert raw["stages"][1]["min_score"] == 0.7 and raw["stages"][0]["batch_size"] == 8
    assert raw["sources"][0]["extensions"] == [".png"] and raw["name"] == "trial"


@pytest.mark.parametrize(
    "assignment, message",
    [
        ("stages.tag.top_k=3", "stages has no entry named 'tag' (entries: exact_dedup, ocr, caption)"),
        ("stages[7].batch_size=3", "stages[7] is out of range (3 entries)"),
        ("stages.ocr", "expected key=value"),
        ("name.first=a", "name is a value ('x'), it has no field 'first'"),
        ("stages..x=1", "is not a dotted path"),
    ],
)
def test_set_errors_name_the_path(assignment, message):
    with pytest.raises(RecipeError, match=re.escape(message)):
        apply_override(_raw(), assignment)


def test_set_result_is_validated_like_the_file(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text(yaml.safe_dump(RAW))
    with pytest.raises(RecipeError, match=r"stages\[1\]\.min_score: Input should be less than or equal to 1"):
        load_recipe(p, overrides=["stages.ocr.min_score=3"])
    with pytest.raises(RecipeError, match=r"stages\[1\]\.min_scor: unknown key 'min_scor'"):
        load_recipe(p, overrides=["stages.ocr.min_scor=0.3"])
    assert load_recipe(p, overrides=["stages.ocr.min_score=0.9"]).recipe.stages[1].min_score == 0.9
    r = subprocess.run(
        [*CLI, "validate", str(p), "--set", "stages.ocr.backend=tesseract"], capture_output=True, text=True
    )
    assert r.returncode == 2 and "stages[1].backend" in r.stderr and "Traceback" not in r.stderr


def test_run_dir_explains_itself(tmp_path, demo_images):
    """README.md names every table and the live set; live.parquet equals the `live` view."""
    import pyarrow.parquet as pq

    from loupe.pipeline.query import query
    from loupe.pipeline.rundir import RunDir

    p = tmp_path / "r.yaml"
    p.write_text(
        f"name: rd\noutput: {tmp_path / 'runs'}\nsources: [{{type: local_folder, path: {demo_images}}}]\n"
        "stages: [{stage: exact_dedup}]\n"
    )
    r = subprocess.run([*CLI, "run", str(p), "-q", "--limit", "12"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    (run_dir,) = (tmp_path / "runs" / "rd").iterdir()
    readme = (run_dir / "README.md").read_text()
    for needle in (
        "| `samples` | `samples/` | 12 |",
        "| `drops` | `drops/` |",
        "## Reading `live` without Loupe",
        "WHERE uid NOT IN (SELECT uid FROM read_parquet('drops/*.parquet') WHERE stage <> 'ingest')",
    ):
        assert needle in readme, needle
    live = pq.read_table(run_dir / "live.parquet")
    view = query(RunDir(run_dir), "SELECT uid FROM live").column("uid").to_pylist()
    assert sorted(live["uid"].to_pylist()) == sorted(view) and 0 < live.num_rows < 12
    assert "image" not in live.column_names
    # the README's own duckdb recipe, run from inside the run dir, gives the same set
    import duckdb

    con = duckdb.connect()
    got = con.sql(
        f"SELECT uid FROM read_parquet('{run_dir}/samples/*.parquet') WHERE uid NOT IN "
        f"(SELECT uid FROM read_parquet('{run_dir}/drops/*.parquet') WHERE stage <> 'ingest')"
    ).fetchall()
    assert sorted(u for (u,) in got) == sorted(view)
