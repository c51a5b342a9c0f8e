"""Evidence is joined once per stage (issue 19): same columns as before, in O(N), in both paths."""

from __future__ import annotations

import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as pads
import pytest

from loupe.pipeline import evidence
from loupe.pipeline.executors.local import run_local
from loupe.pipeline.executors.plan import make_plan
from loupe.pipeline.recipe import load_recipe
from loupe.pipeline.rundir import RunDir
from loupe.schemas.tables import SAMPLES

REPO = Path(__file__).resolve().parents[1]


def synthetic_run(path: Path, n: int = 6) -> RunDir:
    run = RunDir(path)
    uids = [f"u{i:03d}" for i in range(n)]
    samples = pa.Table.from_pylist(
        [{"uid": u, "alt_text": f"alt {u}", "width": 10, "height": 20} for u in uids], schema=SAMPLES
    )
    run.commit("ingest", "samples", samples, None, uids)
    # OCR lines written in reverse order, over several shards: the attached lists must come back by line
    for line in (2, 1, 0):
        rows = [{"uid": u, "model": "m", "line": line, "text": f"{u}-{line}", "box": [0, 0, 1, 1], "score": 0.9}
                for u in uids[:3]]  # fmt: skip
        run.commit("ocr", "ocr", pa.Table.from_pylist(rows), None, uids[:3])
    tags = [{"uid": uids[0], "model": "m", "tag": t, "score": s} for t, s in (("cat", 0.2), ("dog", 0.7))]
    run.commit("tag", "tags", pa.Table.from_pylist(tags), None, [uids[0]])
    return run


def test_stage_input_joins_evidence_once_with_ordered_lists(tmp_path):
    run = synthetic_run(tmp_path / "run")
    todo = {"u000", "u001", "u004"}
    files = evidence.build_stage_input(run, "caption", ("uid", "alt_text"), ("ocr", "tags", "detect"), todo)
    t = pads.dataset([str(f) for f in files]).to_table().sort_by("uid")
    assert t["uid"].to_pylist() == ["u000", "u001", "u004"]
    assert t.schema.field("ocr").type == evidence.evidence_type("ocr")
    rows = t.to_pylist()
    assert [o["text"] for o in rows[0]["ocr"]] == ["u000-0", "u000-1", "u000-2"]
    assert [x["tag"] for x in rows[0]["tags"]] == ["dog", "cat"]  # best score first
    assert rows[2]["ocr"] == [] and rows[1]["tags"] == [] and rows[0]["detect"] == []  # never null
    # the per-batch path of a global stage gives the same columns, in the batch's order
    batch = run.read_table("samples", ["uid", "alt_text"], filter_uids=todo).sort_by([("uid", "descending")])
    attached = evidence.attach_evidence(run, batch, ("ocr", "tags", "detect"))
    assert attached["uid"].to_pylist() == ["u004", "u001", "u000"]
    assert attached.to_pylist()[::-1] == rows
    evidence.remove_stage_input(run, "caption")
    assert not (run.path / evidence.input_dir("caption")).exists()


def _recipe(tmp_path: Path) -> Path:
    (tmp_path / "imgs").mkdir()
    for name in ("coffee.jpg", "horse.jpg", "exit_sign.png"):
        shutil.copy(REPO / "recipes" / "demo_images" / name, tmp_path / "imgs" / name)
    (tmp_path / "r.yaml").write_text("""
name: ev
output: runs
sources:
  - {type: local_folder, name: demo, path: imgs}
stages:
  - {stage: tag, batch_size: 1}
  - {stage: caption, backend: composer, batch_size: 1}
""")
    return tmp_path / "r.yaml"


def test_local_run_joins_evidence_once_per_stage(tmp_path, monkeypatch):
    recipe = _recipe(tmp_path)
    joins = []
    real = evidence._join_sql
    monkeypatch.setattr(evidence, "_join_sql", lambda *a: joins.append(a[4]) or real(*a))
    plan = make_plan(load_recipe(recipe))
    run_local(plan, quiet=True)
    # one join per stage (tag reads stored embeddings), not one per batch: 3 caption batches, 1 join
    assert joins == [("embeddings",), ("ocr", "detect", "tags")]
    caps = plan.run.read_table("captions", ["uid", "evidence"]).to_pylist()
    assert len(caps) == 3 and all('"tags": ["' in c["evidence"] for c in caps)
    assert not (plan.run.path / evidence.input_dir("caption")).exists()


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.timeout(420)
def test_ray_executor_reads_the_joined_input_and_matches_local(tmp_path):
    from ray_helpers import private_ray

    from loupe.pipeline.executors.ray import run_ray

    recipe = _recipe(tmp_path)
    local = make_plan(load_recipe(recipe), str(tmp_path / "local"))
    run_local(local, quiet=True)
    with private_ray(__name__):
        plan = make_plan(load_recipe(recipe), str(tmp_path / "ray"))
        run_ray(plan, quiet=True)
    cols = ["uid", "caption", "evidence"]
    assert plan.run.read_table("captions", cols).sort_by("uid") == local.run.read_table(
        "captions", cols
    ).sort_by("uid")
    assert not (plan.run.path / evidence.input_dir("caption")).exists()
