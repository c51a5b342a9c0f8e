"""The report's embedding map, cluster galleries, range filters, repetitive-caption flags and run
comparison, checked in headless Chromium (the DOM after load: what the browser drew and filtered)."""

from __future__ import annotations

import re
from pathlib import Path

import pyarrow as pa
import pytest
from test_report import body_attrs, chromium, needs_chromium, run_recipe, write_images

from loupe.pipeline.query import query
from loupe.pipeline.report import build_report
from loupe.pipeline.rundir import RunDir
from loupe.schemas.tables import CAPTIONS

RECIPE = """
name: mapped
output: runs
sources: [{{type: local_folder, name: blocks, path: images}}]
stages:
  - {{stage: embed}}
  - {{stage: semdedup, n_clusters: 4, epsilon: 0.02}}
  - {{stage: caption, backend: composer, min_words: {min_words}}}
"""
LOOP = "a cat is a cat is a cat is a cat is a cat is a cat is a cat"


def _run(root: Path, min_words: int) -> RunDir:
    root.mkdir(parents=True, exist_ok=True)
    if not (root / "images").exists():
        write_images(root / "images", 24, size=96)
        for i in range(0, 24, 2):  # alt-texts of different lengths: captions of different lengths
            (root / "images" / f"img_{i:05d}.txt").write_text(" ".join(f"word{j}" for j in range(3 * i + 1)))
    (root / "r.yaml").write_text(RECIPE.format(min_words=min_words))
    return run_recipe(root / "r.yaml")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("mapped")
    a = _run(root, 0)
    # one caption row that loops, as a small LLM's would (committed the way the caption stage does)
    uid = query(a, "SELECT uid FROM live ORDER BY uid LIMIT 1").column("uid")[0].as_py()
    row = {
        "uid": uid,
        "backend": "openai",
        "model": "tiny",
        "caption": LOOP,
        "n_words": 15,
        "repetition": 1.0,
    }
    a.commit("caption_loop", "captions", pa.Table.from_pylist([row], schema=CAPTIONS), None, [uid])
    b = _run(root, 1)  # another caption config: a second run dir over the same samples
    return a, b


def test_report_sections_are_rendered_and_escaped(runs, tmp_path):
    a, b = runs
    index = build_report(a, tmp_path / "rep", compare=b)
    page = index.read_text()
    n_emb = query(a, "SELECT count(DISTINCT uid) AS n FROM embeddings").to_pylist()[0]["n"]
    assert page.count("<circle ") == n_emb == 24
    assert (
        'id="compare-table"' in page and page.count('<tr data-uid="', page.index('id="compare-table"')) >= 20
    )
    assert "repetitive: 1.00 of its 4-grams repeat" in page
    assert page.count('class="group cluster-gallery"') >= 1
    for key in ("short-edge", "words", "ocr-coverage", "repetition"):
        assert f'class="range-min" data-key="{key}"' in page


@needs_chromium
def test_map_drawn_and_range_filters_change_the_count(runs, tmp_path):
    a, _ = runs
    index = build_report(a, tmp_path / "rep")
    r = chromium(index, tmp_path, "--dump-dom")
    attrs = body_attrs(r.stdout)
    assert attrs["data-map-points"] == "24" and attrs["data-map-drawn"] == "24", attrs
    total = int(attrs["data-samples-shown"])
    assert total == 24
    words = sorted(int(w) for w in re.findall(r'data-words="(\d+)"', r.stdout))
    assert len(words) == 24 and len(set(words)) > 2
    cut = words[len(words) // 2]
    r2 = chromium(index, tmp_path, "--dump-dom", fragment=f"min-words={cut + 1}")
    shown = int(body_attrs(r2.stdout)["data-samples-shown"])
    assert shown == sum(w > cut for w in words) and 0 < shown < total
    r3 = chromium(index, tmp_path, "--dump-dom", fragment="min-repetition=0.5")
    assert body_attrs(r3.stdout)["data-samples-shown"] == "1"  # the looping caption
    assert re.search(r'<span id="sample-count"[^>]*>1 of 24 shown</span>', r3.stdout)
