"""Per-stage reuse: editing a late stage reuses every earlier one; batch_size recomputes nothing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from loupe.pipeline.executors.local import run_local
from loupe.pipeline.executors.plan import make_plan
from loupe.pipeline.query import query
from loupe.pipeline.recipe import load_recipe, stage_identities

CLI = [sys.executable, "-m", "loupe.pipeline.cli"]
STAGES = """
  - {stage: exact_dedup}
  - {stage: phash_dedup, batch_size: 16}
  - {stage: resolution_filter, min_short_edge: 64}
  - {stage: caption, min_words: 3}
  - {stage: export, formats: [llama3_jsonl]}
"""


def _run(root: Path, demo_images: Path, stages: str):
    p = root / "r.yaml"
    p.write_text(
        f"name: reuse\noutput: runs\nsources: [{{type: local_folder, path: {demo_images}}}]\nstages:{stages}"
    )
    plan = make_plan(load_recipe(p))
    metrics = run_local(plan, quiet=True)
    return plan, metrics


def computed(metrics: dict) -> list[str]:
    """Stages that did work in this run (not reused from another run dir, not a kept no-op)."""
    return [s for s, m in metrics.items() if not m.get("noop") and not m.get("reused_from")]


def test_identity_ignores_execution_knobs_and_chains_inputs(tmp_path, demo_images):
    p = tmp_path / "r.yaml"
    head = f"name: x\nsources: [{{type: local_folder, path: {demo_images}}}]\nstages:\n"
    p.write_text(head + "  - {stage: exact_dedup}\n  - {stage: ocr, batch_size: 4}\n  - {stage: caption}\n")
    a = stage_identities(load_recipe(p))
    p.write_text(
        head + "  - {stage: exact_dedup}\n  - {stage: ocr, batch_size: 64, workers: 2, device: cpu, "
        "resources: {num_cpus: 3, concurrency: 2}}\n  - {stage: caption, concurrency: 9}\n"
    )
    assert stage_identities(load_recipe(p)) == a
    p.write_text(head + "  - {stage: exact_dedup}\n  - {stage: ocr, min_score: 0.9}\n  - {stage: caption}\n")
    b = stage_identities(load_recipe(p))
    assert b["exact_dedup"] == a["exact_dedup"] and b["ocr"] != a["ocr"] and b["caption"] != a["caption"]


def test_edit_late_stage_reuses_upstream_and_batch_size_recomputes_nothing(tmp_path, demo_images):
    plan1, m1 = _run(tmp_path, demo_images, STAGES)
    assert computed(m1) == ["ingest", "exact_dedup", "phash", "phash_dedup", "resolution_filter", "caption", "export"]
    first = plan1.run.manifest()["stages"]

    # edit the caption stage: a new run dir; the five stages (phash inserted before phash_dedup) before it are linked, not recomputed
    plan2, m2 = _run(tmp_path, demo_images, STAGES.replace("min_words: 3", "min_words: 4"))
    assert plan2.run.path != plan1.run.path
    assert computed(m2) == ["caption", "export"]
    second = plan2.run.manifest()["stages"]
    for s in ("ingest", "exact_dedup", "phash", "phash_dedup", "resolution_filter"):
        assert second[s]["reused_from"] == str(plan1.run.path)
        assert second[s]["seconds"] == first[s]["seconds"]  # the original timings
    same = "SELECT uid, stage, reason FROM drops WHERE stage <> 'caption' ORDER BY 1, 2"
    assert query(plan2.run, same).to_pylist() == query(plan1.run, same).to_pylist()
    assert (plan2.run.path / "export" / "conversations.jsonl").read_text()

    # batch_size is an execution knob: same run dir, nothing recomputed, timings kept
    plan3, m3 = _run(tmp_path, demo_images, STAGES.replace("min_words: 3", "min_words: 4").replace("16", "4"))
    assert plan3.run.path == plan2.run.path
    assert computed(m3) == ["export"]  # rerun_all: export is rewritten on every run
    kept = {s: m["seconds"] for s, m in plan3.run.manifest()["stages"].items() if s != "export"}
    assert kept == {s: m["seconds"] for s, m in second.items() if s != "export"}

    # remove the last stage: everything before it is reused from the first run dir
    plan4, m4 = _run(
        tmp_path, demo_images, STAGES.replace("  - {stage: export, formats: [llama3_jsonl]}\n", "")
    )
    assert computed(m4) == []
    assert len(query(plan4.run, "SELECT uid FROM live").to_pylist()) == len(
        query(plan1.run, "SELECT uid FROM live").to_pylist()
    )

    # --dry-run says what a run would do, and does nothing
    p = tmp_path / "r.yaml"
    p.write_text(p.read_text().replace("min_short_edge: 64", "min_short_edge: 65"))
    r = subprocess.run([*CLI, "run", str(p), "--dry-run"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    actions = {ln.split()[0]: " ".join(ln.split()[2:]) for ln in r.stdout.splitlines()[1:]}
    assert actions["ingest"].startswith("reuse ") and actions["phash_dedup"].startswith("reuse ")
    assert actions["resolution_filter"] == "compute" and actions["caption"] == "compute"
    assert len(list((tmp_path / "runs" / "reuse").iterdir())) == 3  # no new run dir
    assert json.loads((plan2.run.path / "_state" / "reused.json").read_text())["ingest"] == [plan1.lineage]
