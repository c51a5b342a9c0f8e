"""Embed + tag on the same backbone: one decode and one forward per image (issue 19)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from loupe.experts.embed import EfficientNetLite0
from loupe.experts.tags import EfficientNetTagger
from loupe.pipeline.executors.local import run_local
from loupe.pipeline.executors.plan import make_plan
from loupe.pipeline.images import decode
from loupe.pipeline.recipe import load_recipe
from loupe.pipeline.stages import experts as experts_stage

REPO = Path(__file__).resolve().parents[1]
IMAGES = ("chelsea.jpg", "coffee.jpg", "horse.jpg", "astronaut.jpg")


def recipe(tmp_path: Path, stages: str) -> Path:
    (tmp_path / "imgs").mkdir(exist_ok=True)
    for name in IMAGES:
        shutil.copy(REPO / "recipes" / "demo_images" / name, tmp_path / "imgs" / name)
    p = tmp_path / "r.yaml"
    p.write_text(
        f"name: t\noutput: runs\nsources:\n  - {{type: local_folder, name: d, path: imgs}}\nstages:\n{stages}"
    )
    return p


@pytest.fixture
def counted(monkeypatch):
    """Counts images decoded by expert stages and images run through EfficientNet-Lite0."""
    n = {"decode": 0, "forward": 0}

    def count_decode(data, **kw):
        n["decode"] += 1
        return decode(data, **kw)

    real = EfficientNetLite0.features_and_logits

    def count_forward(self, images):
        n["forward"] += len(images)
        return real(self, images)

    monkeypatch.setattr(experts_stage, "decode", count_decode)
    monkeypatch.setattr(EfficientNetLite0, "features_and_logits", count_forward)
    return n


def test_embed_then_tag_decodes_and_forwards_each_image_once(tmp_path, counted):
    stages = "  - {stage: embed, batch_size: 2}\n  - {stage: tag, batch_size: 3}\n"
    plan = make_plan(load_recipe(recipe(tmp_path, stages)))
    m = run_local(plan, quiet=True)
    assert counted == {"decode": len(IMAGES), "forward": len(IMAGES)}
    assert m["tag"]["tags_from_embeddings"] == len(IMAGES)

    # the tags equal those of a forward pass on the decoded images (up to float rounding)
    samples = plan.run.read_table("samples", ["uid", "image"]).to_pylist()
    tagger = EfficientNetTagger(device="cpu")
    direct = tagger.predict([decode(s["image"]) for s in samples])
    stored = plan.run.read_table("tags", ["uid", "tag", "score"]).to_pylist()
    for s, want in zip(samples, direct):
        got = [r for r in stored if r["uid"] == s["uid"]]
        assert [r["tag"] for r in got][:2] == [r["tag"] for r in want][:2]
        assert np.allclose(sorted(r["score"] for r in got), sorted(r["score"] for r in want), atol=2e-3)


def test_tag_without_embed_stage_still_decodes(tmp_path, counted):
    plan = make_plan(load_recipe(recipe(tmp_path, "  - {stage: tag, batch_size: 4}\n")))
    m = run_local(plan, quiet=True)
    assert counted == {"decode": len(IMAGES), "forward": len(IMAGES)}
    assert m["tag"].get("tags_from_embeddings", 0) == 0
    assert plan.run.read_table("tags", ["uid"]).num_rows >= len(IMAGES)
