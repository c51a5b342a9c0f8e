"""The finedetail source: deterministic images, planted copies, ground truth in samples.meta."""

from __future__ import annotations

import json

import numpy as np
import pytest

from loupe.pipeline.errors import RecipeError
from loupe.pipeline.executors.local import run_local
from loupe.pipeline.executors.plan import make_plan
from loupe.pipeline.query import query
from loupe.pipeline.recipe import load_recipe, parse_recipe
from loupe.pipeline.stages.ingest.finedetail import plant_plan, render
from tests.conftest import write_recipe

RECIPE = """
name: fd
output: runs
sources:
  - type: finedetail
    count: {count}
    image_size: 96
    text_height: 12
    length: 3
    exact_duplicates: 0.1
    near_duplicates: 0.1
    seed: 7
stages:
  - stage: exact_dedup
"""


def test_render_is_a_pure_function_of_seed_and_index():
    a, ta, ba = render(3, 5, 128, 12, "digits", 4)
    b, tb, bb = render(3, 5, 128, 12, "digits", 4)
    c, tc, _ = render(3, 6, 128, 12, "digits", 4)
    assert np.array_equal(np.asarray(a), np.asarray(b)) and ta == tb and ba == bb
    assert not np.array_equal(np.asarray(a), np.asarray(c))
    assert len(ta) == 4 and ta.isdigit()
    x1, y1, x2, y2 = ba
    assert 0 <= x1 < x2 <= 128 and 0 <= y1 < y2 <= 128
    # the string is dark ink on a light plate: the box holds the darkest pixels of the image
    px = np.asarray(a).sum(axis=2)
    assert px[y1:y2, x1:x2].min() < 200 and px[y1:y2, x1:x2].min() == px.min()


def test_words_are_equal_length():
    _, t, _ = render(0, 1, 96, 12, "words", 3)
    assert len(t) == 4 and t.isalpha()


def test_plant_plan_copies_only_originals():
    plan = plant_plan(100, 0.1, 0.05, seed=1)
    kinds = [k for k, _ in plan.values()]
    assert kinds.count("exact") == 10 and kinds.count("near") == 5
    assert all(orig < i and orig not in plan for i, (_, orig) in plan.items())
    assert plan == plant_plan(100, 0.1, 0.05, seed=1)


def test_ingest_and_exact_dedup(tmp_path):
    plan = make_plan(load_recipe(write_recipe(tmp_path, RECIPE.format(count=30))))
    m = run_local(plan, quiet=True)
    assert m["ingest"]["rows_out"] == 30
    rows = query(plan.run, "SELECT uid, sha256, meta FROM samples").to_pylist()
    metas = {r["uid"]: json.loads(r["meta"]) for r in rows}
    exact = [u for u, x in metas.items() if x["copy"] == "exact"]
    near = [u for u, x in metas.items() if x["copy"] == "near"]
    assert len(exact) == 3 and len(near) == 3
    sha = {r["uid"]: r["sha256"] for r in rows}
    by_index = {x["index"]: u for u, x in metas.items()}
    for u in exact:
        assert sha[u] == sha[by_index[metas[u]["copy_of"]]]
    for u in near:
        assert sha[u] != sha[by_index[metas[u]["copy_of"]]]
        assert metas[u]["answer"] == metas[by_index[metas[u]["copy_of"]]]["answer"]
    dropped = {
        r["uid"]
        for r in query(plan.run, "SELECT uid FROM drops WHERE reason = 'exact_duplicate'").to_pylist()
    }
    # exact dedup keeps one of each set of identical images (the first by uid order): every byte copy
    # group keeps exactly one member, and nothing with unique bytes is dropped
    by_sha: dict[str, set[str]] = {}
    for u, h in sha.items():
        by_sha.setdefault(h, set()).add(u)
    assert all(len(g - dropped) == 1 for g in by_sha.values())
    assert len(dropped) == sum(len(g) - 1 for g in by_sha.values()) >= 3
    # a rerun regenerates the same bytes and uids: nothing new is ingested
    again = run_local(make_plan(load_recipe(tmp_path / "recipe.yaml")), quiet=True)
    assert again["ingest"]["rows_out"] == 0 and again["ingest"]["skipped_done"] == 30


def test_bad_field_is_a_recipe_error():
    with pytest.raises(RecipeError, match=r"sources\[0\]\.text"):
        parse_recipe({"name": "x", "sources": [{"type": "finedetail", "text": "emoji"}]})
