"""recipes/densefusion.yaml is DenseFusion-1M as published; densefusion_small.yaml runs it offline end to end."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from loupe.pipeline.executors.local import run_local
from loupe.pipeline.executors.plan import make_plan
from loupe.pipeline.query import query, resolve_run
from loupe.pipeline.recipe import load_recipe
from loupe.schemas.recipe import Recipe

REPO = Path(__file__).resolve().parents[1]


def _recipe(name: str) -> Recipe:
    return Recipe.model_validate(yaml.safe_load((REPO / "recipes" / name).read_text()))


def test_densefusion_recipe_is_the_published_pipeline():
    r = _recipe("densefusion.yaml")
    assert [s.stage for s in r.stages] == [
        "resolution_filter",
        "embed",
        "semdedup",
        "select",
        "tag",
        "detect",
        "detect",
        "ocr",
        "caption",
        "export",
    ]
    res, emb, sem, sel, tag, closed, opened, _, cap, exp = r.stages
    assert res.min_short_edge == 448 and res.max_aspect_ratio is None  # §3.1, no extra filter
    assert r.sources[0].min_image_size == 0  # no download-time size filter either
    assert emb.backend == "open_clip" and emb.model.startswith("EVA02")  # EVA-CLIP features
    assert (sem.n_clusters, sem.epsilon) == (50_000, 0.4)
    assert (sem.kmeans_iters, sem.seed, sem.max_points_per_centroid) == (100, 1234, 256)  # SemDeDup release
    assert sel.clusters == "semdedup" and sel.per_cluster == 20  # the same clusters, no second k-means
    assert closed.backend == "yolo" and opened.backend == "owlvit" and opened.queries == []  # tags as queries
    assert cap.prompt_template == "densefusion_gpt4v"
    assert "llava_plain_json" in exp.formats and exp.tasks == ["caption"]


def test_semdedup_defaults_are_the_release():
    from loupe.schemas.recipe import SemDedupConfig

    c = SemDedupConfig(stage="semdedup")
    assert (c.kmeans_iters, c.seed, c.max_points_per_centroid) == (100, 1234, 256)


@pytest.mark.slow
def test_densefusion_small_runs_end_to_end(tmp_path):
    shutil.copytree(REPO / "recipes" / "demo_images", tmp_path / "demo_images")
    text = (
        (REPO / "recipes" / "densefusion_small.yaml").read_text().replace("output: ../runs", "output: runs")
    )
    (tmp_path / "densefusion_small.yaml").write_text(text)
    run_local(make_plan(load_recipe(tmp_path / "densefusion_small.yaml")), quiet=True)
    run = resolve_run(tmp_path / "runs" / "densefusion_small")
    m = run.manifest()
    assert m["status"] == "complete"
    live = query(run, "SELECT count(*) AS n FROM live").to_pylist()[0]["n"]
    assert 0 < live <= 4 * 4  # at most per_cluster x n_clusters survive
    # the quota came from SemDeDup's clusters: select wrote no clusters of its own
    methods = {r["method"] for r in query(run, "SELECT DISTINCT method FROM clusters").to_pylist()}
    assert methods == {"semdedup"}
    sel = query(run, "SELECT DISTINCT cluster FROM dedup WHERE method = 'select'").to_pylist()
    sem = query(run, "SELECT DISTINCT cluster FROM dedup WHERE method = 'semdedup'").to_pylist()
    assert {r["cluster"] for r in sel} <= {r["cluster"] for r in sem}
    caps = query(run, "SELECT prompt FROM captions").to_pylist()
    assert len(caps) == live and all(c["prompt"].rstrip().endswith("[IMAGE]:") for c in caps)
    assert all("The caption should NO longer than 192 words." in c["prompt"] for c in caps)
    out = run.path / "export"
    parts = sorted((out / "dragonfly").glob("densefusion_*.parquet"))
    assert sum(pq.read_metadata(p).num_rows for p in parts) == live
    plain = json.loads((out / "llava_plain.json").read_text())
    assert len(plain) == live and all(len(r["conversations"]) == 2 for r in plain)
    boxes = json.loads((out / "mg_llava_boxes.json").read_text())
    assert [b["id"] for b in boxes] == [r["id"] for r in json.loads((out / "llava.json").read_text())]
