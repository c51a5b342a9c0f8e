"""select with clusters: kmeans and with score: clip_score, and semdedup with keep: random, run
distributed under --executor ray (one task per group of clusters) and write exactly what the local
executor writes: the dedup, drops and clusters tables."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image
from ray_helpers import private_ray

from loupe.pipeline.executors.local import run_local
from loupe.pipeline.executors.plan import Plan, make_plan
from loupe.pipeline.recipe import load_recipe
from loupe.pipeline.rundir import RunDir
from loupe.pipeline.stages.dedup import semdedup_ray
from loupe.pipeline.stages.dedup.semdedup import cluster_rng, random_order
from loupe.schemas.tables import EMBEDDINGS, SAMPLES

N = 600

RECIPES = {
    # SemDeDup's random order + selection from its clusters by image-text agreement
    "random_clip": """
  - {stage: semdedup, n_clusters: 6, epsilon: 0.15, epsilons: [0.05, 0.3], block_size: 16, keep: random,
     seed: 7, kmeans_iters: 5, max_points_per_centroid: 64, use_gpu: 'no'}
  - {stage: select, clusters: semdedup, per_cluster: 30, score: clip_score}
""",
    # clusters: auto without SemDeDup clusters -> a k-means of select's own, ranked by image-text score
    "kmeans_clip": """
  - {stage: select, clusters: auto, n_clusters: 5, kmeans_iters: 5, seed: 3, per_cluster: 35, score: clip_score}
""",
}


def _vectors(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Image vectors around 6 topics with 80 near-copies; text vectors = image + noise."""
    rng = np.random.default_rng(seed)
    topics = rng.standard_normal((6, 16))
    x = topics[rng.integers(0, 6, N)] + 0.9 * rng.standard_normal((N, 16))
    src = rng.integers(0, N - 80, 80)
    x[N - 80 :] = x[src] + 0.02 * rng.standard_normal((80, 16))
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    t = x + 0.8 * rng.standard_normal((N, 16))
    return x.astype(np.float32), (t / np.linalg.norm(t, axis=1, keepdims=True)).astype(np.float32)


def _plan(stages: str, out: Path) -> Plan:
    images = out.parent / "images"  # one real image, ingested without a vector: dropped as no_embedding
    if not images.exists():
        images.mkdir()
        Image.new("RGB", (32, 24), (200, 30, 30)).save(images / "red.png")
    recipe = out.parent / f"{out.name}.yaml"
    recipe.write_text(
        f"name: sel\noutput: runs\nsources:\n  - {{type: local_folder, name: demo, path: {images}}}\n"
        f"stages:{stages}"
    )
    plan = make_plan(load_recipe(recipe), str(out))
    x, t = _vectors(11)
    uids = [f"{(i * 7919) % 10007:05d}-s" for i in range(N)]  # uid order is not index order
    for a in range(0, N, 100):
        part = uids[a : a + 100]
        with_text = [i for i in range(a, a + 100) if i % 9]  # every 9th sample has no text: ranks last
        plan.run.commit("ingest", "samples", pa.Table.from_pylist(
            [{"uid": u, "source": "syn", "source_id": u} for u in part], SAMPLES), None, part)  # fmt: skip
        emb = pa.table(
            {
                "uid": part + [uids[i] for i in with_text],
                "model": ["m"] * (len(part) + len(with_text)),
                "kind": ["image"] * len(part) + ["text"] * len(with_text),
                "vector": pa.array(
                    [v.tolist() for v in [*x[a : a + 100], *t[with_text]]], pa.list_(pa.float32())
                ),
                "norm": pa.nulls(len(part) + len(with_text), pa.float32()),
            },
            schema=EMBEDDINGS,
        )
        plan.run.commit("embed", "embeddings", emb, None, part)
    return plan


def _rows(run: RunDir, table: str) -> list[str]:
    return sorted(json.dumps(r, sort_keys=True, default=str) for r in run.read_table(table).to_pylist())


def test_random_order_depends_on_the_seed_and_the_member_set_only():
    uids = [f"u{i:03d}" for i in range(40)]
    members = np.arange(40)
    a = random_order(members, uids, 7)
    rev = random_order(members[::-1], uids[::-1], 7)  # same members, listed the other way round
    assert np.array_equal(a, rev) and sorted(a.tolist()) == list(range(40))
    assert not np.array_equal(a, random_order(members, uids, 8))
    assert not np.array_equal(a, np.arange(40))
    assert cluster_rng(7, uids).integers(1 << 30) == cluster_rng(7, sorted(uids)).integers(1 << 30)


@pytest.mark.ray
@pytest.mark.slow  # two Ray runs on the loaded 2-core box
@pytest.mark.timeout(600)
def test_select_kmeans_clip_score_and_semdedup_random_on_ray_equal_local(tmp_path, monkeypatch):
    from loupe.pipeline.executors.ray import run_ray

    monkeypatch.setattr(semdedup_ray, "GROUP_ROWS", 300)  # 2-3 groups of clusters: several tasks
    locals_ = {}
    for name, stages in RECIPES.items():
        plan = _plan(stages, tmp_path / f"local-{name}")
        locals_[name] = (run_local(plan, quiet=True), plan.run)
    lm = locals_["random_clip"][0]
    assert lm["select"]["cluster_source"] == "semdedup" and lm["semdedup"]["drops"] > 0
    assert locals_["kmeans_clip"][0]["select"]["cluster_source"] == "kmeans"
    with private_ray(__name__):
        for name, stages in RECIPES.items():
            plan = _plan(stages, tmp_path / f"ray-{name}")
            m = run_ray(plan, quiet=True)
            local_m, local_run = locals_[name]
            for sid in [s for s in ("semdedup", "select") if s in m]:
                assert m[sid]["executor"] == "ray" and m[sid].get("cluster_tasks", 0) >= 2, (name, sid)
                for k in ("rows_out", "drops", "selected", "clusters", "cluster_source", "kept_eps_0.15"):
                    assert m[sid].get(k) == local_m[sid].get(k), (name, sid, k)
            for table in ("dedup", "drops", "clusters"):
                assert _rows(plan.run, table) == _rows(local_run, table), (name, table)

        # select's own k-means killed after its first group committed: the rerun finishes the killed
        # batch (same uids, same clusters) instead of re-clustering the rest: the local rows again
        from loupe.pipeline.executors import ray_semdedup

        class Killed(Exception):
            pass

        def kill(ev: str, **info) -> None:
            if ev == "group_committed" and info.get("stage") == "select":
                raise Killed("killed after a group's commit")

        plan = _plan(RECIPES["kmeans_clip"], tmp_path / "ray-killed")
        monkeypatch.setattr(ray_semdedup, "checkpoint", kill)
        with pytest.raises(Killed):
            run_ray(plan, quiet=True)
        monkeypatch.setattr(ray_semdedup, "checkpoint", lambda *a, **k: None)
        assert 0 < len(plan.run.done_uids("select", "dedup")) < N
        m = run_ray(
            make_plan(load_recipe(tmp_path / "ray-killed.yaml"), str(tmp_path / "ray-killed")), quiet=True
        )
        assert 0 < m["select"]["rows_in"] < N and m["select"]["clusters"] == 5
        for table in ("dedup", "drops", "clusters"):
            assert _rows(plan.run, table) == _rows(locals_["kmeans_clip"][1], table), ("killed", table)
        assert not (plan.run.path / "_scratch").exists()
