"""The semdedup and select stages under --executor ray run distributed (no task loads every vector)
and write what the local executor writes; killed mid-stage and rerun, nothing is lost or doubled."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image
from ray_helpers import private_ray

from loupe.pipeline.executors import ray_semdedup
from loupe.pipeline.executors.local import run_local
from loupe.pipeline.executors.plan import Plan, make_plan
from loupe.pipeline.recipe import load_recipe
from loupe.pipeline.rundir import RunDir
from loupe.pipeline.stages.dedup import semdedup_ray
from loupe.schemas.tables import EMBEDDINGS, SAMPLES

N = 700  # synthetic samples with a vector, + 1 real image ingested without one


def _recipe(tmp_path: Path) -> Path:
    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (32, 24), (200, 30, 30)).save(images / "red.png")
    p = tmp_path / "recipe.yaml"
    p.write_text(
        "name: semray\noutput: runs\n"
        f"sources:\n  - {{type: local_folder, name: demo, path: {images}}}\n"
        "stages:\n"
        "  - {stage: semdedup, n_clusters: 6, epsilon: 0.1, epsilons: [0.05, 0.2], block_size: 16,\n"
        "     kmeans_iters: 5, max_points_per_centroid: 64, use_gpu: 'no'}\n"
        "  - {stage: select, clusters: semdedup, per_cluster: 40, score: centroid_similarity}\n"
    )
    return p


def _vectors() -> np.ndarray:
    """700 16-d vectors around 6 topics, 100 of them near-copies of others (some of the same uid
    order, some not); raw scale varies (the stages normalise)."""
    rng = np.random.default_rng(7)
    topics = rng.standard_normal((6, 16))
    x = topics[rng.integers(0, 6, N)] + 0.9 * rng.standard_normal((N, 16))
    src = rng.integers(0, N - 100, 100)
    x[N - 100 :] = x[src] + 0.02 * rng.standard_normal((100, 16))
    return (x * rng.uniform(0.5, 2, (N, 1))).astype(np.float32)


def _plan(recipe: Path, out: Path) -> Plan:
    plan = make_plan(load_recipe(recipe), str(out))
    run = plan.run
    if not run.shard_files("samples"):  # ingested and embedded before: 7 shards of each, as batches land
        x = _vectors()
        uids = [f"{(i * 7919) % 10007:05d}-s" for i in range(N)]  # uid order is not index order
        for a in range(0, N, 100):
            part = uids[a : a + 100]
            samples = pa.Table.from_pylist(
                [{"uid": u, "source": "syn", "source_id": u} for u in part], SAMPLES
            )
            run.commit("ingest", "samples", samples, None, part)
            emb = pa.table(
                {
                    "uid": part,
                    "model": ["m"] * len(part),
                    "kind": ["image"] * len(part),
                    "vector": pa.array([v.tolist() for v in x[a : a + 100]], pa.list_(pa.float32())),
                    "norm": pa.nulls(len(part), pa.float32()),
                },
                schema=EMBEDDINGS,
            )
            run.commit("embed", "embeddings", emb, None, part)
    return plan


def _rows(run: RunDir, table: str) -> list[str]:
    return sorted(json.dumps(r, sort_keys=True, default=str) for r in run.read_table(table).to_pylist())


class Killed(Exception):
    pass


def _kill_at(monkeypatch, stage: str, event: str, nth: int) -> None:
    seen = []

    def hook(ev: str, **info) -> None:
        if ev == event and info.get("stage") == stage:
            seen.append(ev)
            if len(seen) == nth:
                raise Killed(f"{stage} {event} #{nth}")

    monkeypatch.setattr(ray_semdedup, "checkpoint", hook)


@pytest.mark.ray
@pytest.mark.slow  # four Ray runs of two distributed stages on the loaded 2-core box
@pytest.mark.timeout(600)
def test_distributed_semdedup_and_select_equal_local_and_survive_kills(tmp_path, monkeypatch):
    from loupe.pipeline.executors.ray import run_ray

    recipe = _recipe(tmp_path)
    local = _plan(recipe, tmp_path / "local")
    run_local(local, quiet=True)
    lm = local.run.manifest()["stages"]
    assert lm["semdedup"]["missing_embedding"] == 1 and 0 < lm["semdedup"]["drops"] < 150
    assert lm["select"]["cluster_source"] == "semdedup" and lm["select"]["drops"] > 0

    out = tmp_path / "ray"
    monkeypatch.setattr(semdedup_ray, "GROUP_ROWS", 250)  # ~3 groups per stage: several tasks
    with private_ray(__name__):
        # 1: killed after the second cluster group's result landed, before anything was committed
        _kill_at(monkeypatch, "semdedup", "group_computed", 2)
        with pytest.raises(Killed):
            run_ray(_plan(recipe, out), quiet=True)
        run = _plan(recipe, out).run
        scratch = run.path / "_scratch" / "semdedup"
        assert [p.name for p in scratch.iterdir()] and not run.done_uids("semdedup", "dedup")
        # 2: resumed (centroids and spill files reused), killed after the first group committed
        _kill_at(monkeypatch, "semdedup", "group_committed", 1)
        with pytest.raises(Killed):
            run_ray(_plan(recipe, out), quiet=True)
        partial = run.done_uids("semdedup", "dedup")
        assert 0 < len(partial) < N
        # 3: resumed; killed in select after its first group committed
        _kill_at(monkeypatch, "select", "group_committed", 1)
        with pytest.raises(Killed):
            run_ray(_plan(recipe, out), quiet=True)
        assert not scratch.exists()  # the finished batch's scratch is gone
        # 4: runs to the end
        monkeypatch.setattr(ray_semdedup, "checkpoint", lambda ev, **info: None)
        m = run_ray(_plan(recipe, out), quiet=True)
        assert m["semdedup"].get("noop") and m["select"]["rows_in"] > 0

    for table in ("dedup", "drops", "clusters"):  # each uid once, with the local executor's values
        assert _rows(run, table) == _rows(local.run, table), table
    rm = run.manifest()["stages"]
    assert rm["select"]["executor"] == "ray" and rm["select"]["cluster_tasks"] >= 2
    assert (
        0 < rm["select"]["largest_task_peak_rss_mb"] < 2000 and rm["semdedup"]["largest_task_peak_rss_mb"] > 0
    )
    assert rm["semdedup"]["status"] == rm["select"]["status"] == "complete"
    assert not (run.path / "_scratch" / "select").exists()
