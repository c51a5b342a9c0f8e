"""pHash dedup on Ray labels the candidate pairs' components by star contraction over partitions
(loupe.pipeline.executors.ray_components), not in one task: the labels equal scipy's components,
and a run with chains (longer than 2: labels must propagate) and stars of near duplicates keeps and
drops exactly what the local executor does, with the same keeper of every component."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image
from ray_helpers import private_ray

from loupe.pipeline.executors.local import run_local
from loupe.pipeline.executors.plan import make_plan
from loupe.pipeline.recipe import load_recipe
from loupe.pipeline.rundir import RunDir


def _smooth(seed: int) -> np.ndarray:
    """A smooth random colour field (8x8 noise upsampled): its pHash moves little under blending."""
    from scipy.ndimage import zoom

    return zoom(np.random.default_rng(seed).uniform(0, 255, (8, 8, 3)), (8, 8, 1), order=1)


def _save(x: np.ndarray, path: Path, size: int = 64) -> None:
    Image.fromarray(x.clip(0, 255).astype(np.uint8)).resize((size, size)).save(path)


def write_chains_and_stars(folder: Path) -> None:
    """Two chains (25 blends from one field to another: neighbours 0-4 bits apart, ends ~36 apart),
    two stars (a field and 6 lightly noised copies of different sizes) and 10 distinct fields."""
    folder.mkdir()
    for c, (a, b) in enumerate([(1, 2), (3, 4)]):
        fa, fb = _smooth(a), _smooth(b)
        for k, t in enumerate(np.linspace(0, 1, 25)):
            _save((1 - t) * fa + t * fb, folder / f"chain{c}_{k:02d}.png", size=64 + (k * 7) % 3)
    rng = np.random.default_rng(0)
    for s, seed in enumerate((5, 6)):
        centre = _smooth(seed)
        _save(centre, folder / f"star{s}_centre.png", size=60)
        for k in range(6):
            _save(centre + rng.normal(0, 4, centre.shape), folder / f"star{s}_{k}.png", size=56 + 4 * (k % 3))
    for k in range(10):
        _save(_smooth(100 + k), folder / f"single{k}.png")


RECIPE = """name: chains
output: runs
sources:
  - {type: local_folder, name: imgs, path: imgs}
stages:
  - {stage: phash_dedup, batch_size: 16, max_distance: 4, max_distances: [2], confirm: false}
"""


@pytest.fixture(scope="module")
def ray_cluster():
    with private_ray(__name__) as ray:
        yield ray


def _rows(run: RunDir, table: str, cols: list[str]) -> list[tuple]:
    return sorted(tuple(r.values()) for r in run.read_table(table, cols).to_pylist())


@pytest.mark.ray
def test_components_on_ray_equal_scipy_on_chains_stars_and_random_edges(ray_cluster):
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    from loupe.pipeline.executors.ray_components import components

    rng = np.random.default_rng(0)
    a = list(range(60)) + [400] * 40 + rng.integers(500, 900, 300).tolist()  # chain, star, random
    b = list(range(1, 61)) + list(range(401, 441)) + rng.integers(500, 900, 300).tolist()
    uid = lambda i: f"{(i * 7919) % 1000:04x}"  # noqa: E731  (the chain's uids are not in order)
    ua, ub = [uid(i) for i in a], [uid(i) for i in b]
    nodes, inv = np.unique(np.array(ua + ub), return_inverse=True)
    m = len(ua)
    graph = coo_matrix((np.ones(m), (inv[:m], inv[m:])), shape=(len(nodes), len(nodes)))
    _, comp = connected_components(graph, directed=False)
    smallest = {c: min(nodes[comp == c]) for c in np.unique(comp)}
    want = {str(n): str(smallest[c]) for n, c in zip(nodes, comp)}
    ray = ray_cluster
    blocks = [ray.put(pa.table({"a": ua[k::3], "b": ub[k::3]})) for k in range(3)]
    for parts in (1, 3):
        refs, counts, rounds = components(blocks, parts, buckets=7)
        got = pa.concat_tables(ray.get(refs))
        assert sum(ray.get(counts)) == got.num_rows == len(nodes)
        assert dict(zip(got["uid"].to_pylist(), got["label"].to_pylist())) == want
        assert rounds > 3  # the 60-edge chain needs several rounds of contraction
        bucket = dict(zip(got["label"].to_pylist(), got["bucket"].to_pylist()))
        assert len(bucket) == len(smallest) and set(bucket.values()) <= set(range(7))


@pytest.mark.ray
@pytest.mark.slow
def test_phash_dedup_on_ray_equals_local_on_chains_and_stars(ray_cluster, tmp_path):
    write_chains_and_stars(tmp_path / "imgs")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE)
    local = make_plan(load_recipe(recipe), str(tmp_path / "local"))
    lm = run_local(local, quiet=True)["phash_dedup"]
    dedup = local.run.read_table("dedup", ["uid", "kept", "cluster"]).to_pylist()
    sizes = {}
    for r in dedup:
        if r["cluster"]:
            sizes[r["cluster"]] = sizes.get(r["cluster"], 0) + 1
    assert lm["near_duplicates"] >= 20 and max(sizes.values()) >= 6, (lm, sizes)
    from loupe.pipeline.executors.ray import run_ray

    plan = make_plan(load_recipe(recipe), str(tmp_path / "ray"))
    m = run_ray(plan, quiet=True)["phash_dedup"]
    assert m["distributed"] and m["component_rounds"] >= 2 and m["candidate_pairs"] > 40
    for k in ("rows_out", "drops", "near_duplicates", "duplicate_groups", "kept_max_distance_2"):
        assert m[k] == lm[k], k
    for table, cols in {
        "dedup": ["uid", "method", "cluster", "duplicate_of", "similarity", "kept"],
        "drops": ["uid", "stage", "reason", "detail", "duplicate_of"],
    }.items():
        assert _rows(plan.run, table, cols) == _rows(local.run, table, cols), table
