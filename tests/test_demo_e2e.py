"""The shipped demo recipe, end to end through the real CLI, and a kill -9 in the middle of OCR."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from loupe.pipeline.query import query, resolve_run

REPO = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "loupe.pipeline.cli"]
TEXT_IMAGES = {
    "exit_sign.png": ["EXIT"],
    "sign_open.png": ["OPEN", "24", "HOURS"],
    "menu_board.png": ["COFFEE", "EUROS", "TEA"],
    "warning_label.png": ["CAUTION", "WET", "FLOOR"],
    "street_name.png": ["MAIN", "STREET"],
    "label_fragile.png": ["FRAGILE", "HANDLE", "WITH", "CARE"],
    "poster_loupe.png": ["LOUPE", "DATA", "PIPELINE", "2026"],
    "receipt.png": ["TOTAL", "42.50", "THANK", "YOU"],
    "book_cover.png": ["THE", "GARDEN", "OF", "ATOMS"],
}


def _demo_copy(root: Path) -> Path:
    """recipes/demo.yaml with its images, writing its runs under ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    shutil.copytree(REPO / "recipes" / "demo_images", root / "demo_images")
    text = (REPO / "recipes" / "demo.yaml").read_text().replace("output: ../runs", "output: runs")
    (root / "demo.yaml").write_text(text)
    return root / "demo.yaml"


def _run_cli(recipe: Path, *extra: str, timeout: int = 1200) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, "run", str(recipe), "-q", *extra], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    recipe = _demo_copy(tmp_path_factory.mktemp("demo"))
    r = _run_cli(recipe)
    assert r.returncode == 0, r.stderr[-3000:]
    return resolve_run(recipe.parent / "runs" / "demo")


@pytest.mark.slow
def test_demo_writes_one_conversation_per_kept_image(demo_run):
    live = {r["uid"] for r in query(demo_run, "SELECT uid FROM live").to_pylist()}
    assert len(live) == 33  # 37 files - 3 planted duplicates - 1 corrupt
    lines = (demo_run.path / "export" / "conversations.jsonl").read_text().splitlines()
    records = [json.loads(x) for x in lines]
    assert len(records) == len(live)
    for rec in records:
        assert set(rec) >= {"image_url", "conversations", "source"}
        assert rec["conversations"][0]["from"] == "human" and rec["conversations"][1]["from"] == "gpt"
        assert (demo_run.path / "export" / rec["image_url"]).exists() or Path(rec["image_url"]).exists()
    llava = json.loads((demo_run.path / "export" / "llava.json").read_text())
    assert len(llava) == len(live) and all(x["conversations"][0]["value"].startswith("<image>") for x in llava)


@pytest.mark.slow
def test_demo_shows_detection_boxes_offline(demo_run):
    # Haar cascades shipped in opencv-python-headless: the NASA portrait's face is found with no download
    rows = query(
        demo_run, "SELECT s.source_id, d.label, d.box FROM detect d JOIN live s USING (uid) ORDER BY d.score DESC"
    ).to_pylist()
    assert {"source_id": "astronaut.jpg", "label": "face"} in [
        {"source_id": r["source_id"], "label": r["label"]} for r in rows
    ]
    boxes = json.loads((demo_run.path / "export" / "mg_llava_boxes.json").read_text())
    assert sum(len(b["boxes"]) for b in boxes) == len(rows) > 0
    assert list((demo_run.path / "export" / "dragonfly").glob("demo_*.parquet"))
    plain = json.loads((demo_run.path / "export" / "llava_plain.json").read_text())
    assert len(plain) == 33 and all(len(r["conversations"]) == 2 for r in plain)
    m = demo_run.manifest()["stages"]
    assert {"embed", "semdedup", "tag", "detect", "ocr", "caption", "export"} <= set(m)


@pytest.mark.slow
def test_demo_drops_name_their_reasons(demo_run):
    drops = query(demo_run, "SELECT s.source_id, d.reason FROM drops d LEFT JOIN samples s USING (uid)").to_pylist()
    reasons = sorted(d["reason"] for d in drops)
    assert reasons == ["decode_error", "exact_duplicate", "exact_duplicate", "exact_duplicate"]
    dup_files = sorted(d["source_id"] for d in drops if d["reason"] == "exact_duplicate")
    assert dup_files == ["chelsea_copy.jpg", "coffee_again.jpg", "exit_sign_dup.png"]


@pytest.mark.slow
def test_demo_ocr_reads_the_drawn_words(demo_run):
    rows = query(
        demo_run,
        "SELECT s.source_id, string_agg(o.text, ' ' ORDER BY o.line) AS text "
        "FROM live s JOIN ocr o USING (uid) GROUP BY 1",
    ).to_pylist()
    found = {r["source_id"]: r["text"].upper() for r in rows}
    words = [(f, w) for f, ws in TEXT_IMAGES.items() for w in ws]
    missing = [(f, w) for f, w in words if w not in found.get(f, "")]
    assert len(missing) <= 0.1 * len(words), missing


@pytest.mark.slow
def test_demo_captions_use_the_evidence(demo_run):
    rows = query(
        demo_run, "SELECT s.source_id, c.caption, c.backend FROM live s JOIN captions c USING (uid)"
    ).to_pylist()
    assert len(rows) == 33 and {r["backend"] for r in rows} == {"composer"}
    by_file = {r["source_id"]: r["caption"] for r in rows}
    assert "EXIT" in by_file["exit_sign.png"].upper()
    assert "cat" in by_file["chelsea.jpg"].lower()  # from the alt-text sidecar


@pytest.mark.slow
def test_query_joins_samples_with_ocr(demo_run):
    r = subprocess.run(
        [*CLI, "query", str(demo_run.path), "SELECT count(DISTINCT s.uid) AS n FROM samples s JOIN ocr o ON s.uid = o.uid",
         "-f", "csv"],
        capture_output=True, text=True,
    )
    assert r.returncode == 0, r.stderr
    assert int(r.stdout.splitlines()[1]) >= len(TEXT_IMAGES)


@pytest.mark.slow
def test_kill_9_during_ocr_then_resume_loses_and_duplicates_nothing(tmp_path, demo_run):
    recipe = _demo_copy(tmp_path)
    text = recipe.read_text().replace("batch_size: 8", "batch_size: 2")
    recipe.write_text(text)
    proc = subprocess.Popen([*CLI, "run", str(recipe), "-q"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    ocr_dir = None
    deadline = time.time() + 900  # OCR comes after embed, tag and detect
    try:
        while time.time() < deadline:
            shards = list(tmp_path.glob("runs/demo/*/experts/ocr/ocr-*.parquet"))
            if len(shards) >= 3:
                ocr_dir = shards[0].parent
                break
            assert proc.poll() is None, "run finished before it could be killed"
            time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert ocr_dir is not None, "OCR never started"
    run = resolve_run(tmp_path / "runs" / "demo")
    assert run.manifest()["stages"]["ocr"]["status"] == "running"
    partial = len(run.done_uids("ocr", "ocr"))
    assert 0 < partial < 33

    r = _run_cli(recipe)
    assert r.returncode == 0, r.stderr[-3000:]
    m = run.manifest()
    assert m["status"] == "complete" and m["stages"]["ocr"]["skipped_done"] == partial
    for table, key in (("ocr", "uid, line"), ("captions", "uid"), ("samples", "uid"), ("drops", "uid, stage")):
        dup = query(run, f"SELECT {key}, count(*) n FROM {table} GROUP BY ALL HAVING n > 1").num_rows
        assert dup == 0, f"{table} has duplicated rows"
    for table in ("samples", "drops", "ocr", "captions"):
        n_killed = query(run, f"SELECT count(*) n FROM {table}").to_pylist()[0]["n"]
        n_clean = query(demo_run, f"SELECT count(*) n FROM {table}").to_pylist()[0]["n"]
        assert n_killed == n_clean, table
    lines = (run.path / "export" / "conversations.jsonl").read_text().splitlines()
    assert len(lines) == 33
