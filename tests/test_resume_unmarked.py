"""A run killed after a stage's last commit but before the stage was marked complete.

The state such a kill leaves is simulated instead of produced by a SIGKILL (the kill tests take
minutes): a finished run whose manifest entry of one stage is put back to what ``start_stage`` wrote
(``status: running``), as if the driver died just before ``update_stage(status="complete")``. The
rerun then finds every live sample of that stage covered: it must mark the stage complete with 0 new
samples, write nothing twice, and leave every table as it was, under both executors and for every
distributed Ray stage (exact_dedup, phash_dedup, semdedup, select, export) and a per-row one (phash, an actor pool).
"""

from __future__ import annotations

import io
import json
import shutil
import time
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
from loupe.schemas.tables import EMBEDDINGS, SAMPLES

N = 160
STAGES = ["exact_dedup", "phash", "phash_dedup", "semdedup", "select", "export"]
RAY_GROUPS = [["exact_dedup", "phash_dedup", "select"], ["phash", "semdedup", "export"]]
RECIPE = """name: unmarked
output: runs
sources:
  - {type: local_folder, name: demo, path: images}
stages:
  - {stage: exact_dedup}
  - {stage: phash_dedup}
  - {stage: semdedup, n_clusters: 4, epsilon: 0.1, block_size: 16, kmeans_iters: 5, max_points_per_centroid: 64,
     use_gpu: 'no'}
  - {stage: select, clusters: semdedup, per_cluster: 25, score: centroid_similarity}
  - {stage: export, formats: [llama3_jsonl, dragonfly_parquet], shard_size: 40}
"""


def _plan(root: Path, out: Path, recipe: str = RECIPE) -> Plan:
    """The plan; on first use N synthetic samples (distinct flat PNGs: no exact copies, never merged
    by pHash) with image vectors around 4 topics and 20 near-copies (SemDeDup drops some)."""
    (root / "images").mkdir(exist_ok=True)
    if not (root / "images" / "red.png").exists():
        Image.new("RGB", (32, 24), (200, 30, 30)).save(root / "images" / "red.png")
    (root / "r.yaml").write_text(recipe)
    plan = make_plan(load_recipe(root / "r.yaml"), str(out))
    if plan.run.shard_files("samples"):
        return plan
    rng = np.random.default_rng(5)
    x = rng.standard_normal((4, 16))[rng.integers(0, 4, N)] + 0.9 * rng.standard_normal((N, 16))
    x[N - 20 :] = x[:20] + 0.01 * rng.standard_normal((20, 16))
    uids = [f"{(i * 7919) % 10007:05d}-s" for i in range(N)]
    for a in range(0, N, 40):
        part = uids[a : a + 40]
        rows = []
        for i, u in enumerate(part, a):
            png = io.BytesIO()
            Image.new("RGB", (4, 4), (i % 256, i // 256, 7)).save(png, "PNG")
            qa = [{"from": "human", "value": "Which sample?"}, {"from": "gpt", "value": u}]
            rows.append({"uid": u, "source": "syn", "source_id": u, "image": png.getvalue(), "width": 4,
                         "height": 4, "conversations": qa})  # fmt: skip
        plan.run.commit("ingest", "samples", pa.Table.from_pylist(rows, SAMPLES), None, part)
        emb = pa.table(
            {
                "uid": part,
                "model": ["m"] * len(part),
                "kind": ["image"] * len(part),
                "vector": pa.array(
                    [v.tolist() for v in x[a : a + 40].astype(np.float32)], pa.list_(pa.float32())
                ),
                "norm": pa.nulls(len(part), pa.float32()),
            },
            schema=EMBEDDINGS,
        )
        plan.run.commit("embed", "embeddings", emb, None, part)
    return plan


def _state(run: RunDir) -> dict:
    """Every table's rows (sorted) and every export file's bytes."""
    tables = {
        t: sorted(json.dumps(r, sort_keys=True, default=str) for r in run.read_table(t).to_pylist())
        for t in ("phash", "dedup", "drops", "clusters")
    }
    files = {
        str(p.relative_to(run.path)): p.read_bytes()
        for p in sorted((run.path / "export").rglob("*"))
        if p.is_file()
    }
    return {**tables, "export": files}


def _unmark(run: RunDir, sid: str) -> None:
    """What a driver killed between the stage's last commit and ``update_stage(status="complete")``
    leaves in the manifest: the entry ``start_stage`` wrote, and the run still running."""
    m = run.manifest()
    stages = m["stages"]
    stages[sid] = {"status": "running", "table": stages[sid].get("table")}
    run.update_manifest(stages=stages, status="running")


def _leave_ray_scratch(run: RunDir, sid: str) -> None:
    """What a Ray driver killed after the stage's last commit also leaves: semdedup's in-flight batch
    (removed just before the stage is marked complete) and select's spill."""
    from loupe.pipeline.executors import ray_semdedup

    if sid == "semdedup":
        ray_semdedup._start(run, sid, sorted(run.done_uids(sid, "dedup")), [])
    elif sid == "select":
        run.storage.write_bytes("_scratch/select/assign/0-0.arrow", b"spill of the killed run")


def _check_reruns(root: Path, out: Path, rerun, groups: list[list[str]], leave=None) -> list:
    """Rerun once per group of stages put back to ``running`` (each finds nothing to do on its own:
    a group saves Ray reruns, each of which exports again); the stages outside the group are no-ops."""
    before = _state(make_plan(load_recipe(root / "r.yaml"), str(out)).run)
    live0 = len(make_plan(load_recipe(root / "r.yaml"), str(out)).run.live_uids())
    assert before["export"] and any(r for r in before["drops"])
    times = []
    for group in groups:
        plan = _plan(root, out)
        for sid in group:
            _unmark(plan.run, sid)
            if leave:
                leave(plan.run, sid)
        scratch = plan.run.path / "_scratch"
        assert scratch.exists() == bool(leave and {"semdedup", "select"} & set(group))
        t0 = time.time()
        m = rerun(plan)
        times.append((group, round(time.time() - t0, 1)))
        man = plan.run.manifest()
        assert man["status"] == "complete" and all(man["stages"][s]["status"] == "complete" for s in STAGES)
        assert m["export"]["rows_in"] == live0, m["export"]  # rerun_all: every live sample again, same files
        for sid in STAGES[:-1]:
            if sid in group:
                assert (m[sid]["rows_in"], m[sid]["rows_out"], m[sid]["drops"]) == (0, 0, 0), (sid, m[sid])
                assert m[sid]["skipped_done"] > 0 and not m[sid].get("noop"), (sid, m[sid])
            else:
                assert m[sid].get("noop"), (group, sid, m[sid])
        assert _state(plan.run) == before, group  # nothing written twice, nothing lost
        assert not scratch.exists(), group
    return times


def test_local_rerun_of_a_stage_killed_before_marked_complete_does_nothing(tmp_path):
    out = tmp_path / "local"
    run_local(_plan(tmp_path, out), quiet=True)
    _check_reruns(tmp_path, out, lambda plan: run_local(plan, quiet=True), [[s] for s in STAGES])


@pytest.mark.parametrize("clusters", ["semdedup", "kmeans"])
def test_ray_select_with_nothing_left_marks_itself_complete_without_ray_work(tmp_path, clusters):
    """The reported crash (RecipeError "no image embeddings for the 0 live samples"), for both of
    select's Ray paths; nothing reaches the cluster, so no Ray instance is started."""
    from loupe.pipeline.executors.ray_semdedup import run_vector_stage

    recipe = RECIPE.replace("clusters: semdedup", f"clusters: {clusters}, n_clusters: 3")
    plan = _plan(tmp_path, tmp_path / "run", recipe)
    run_local(plan, quiet=True)
    before = _state(plan.run)
    done = len(plan.run.live_uids())
    _unmark(plan.run, "select")
    _leave_ray_scratch(plan.run, "select")
    sp = next(s for s in plan.stages if s.id == "select")
    m = run_vector_stage(plan, sp)
    assert (m["rows_in"], m["rows_out"], m["drops"], m["skipped_done"]) == (0, 0, 0, done)
    assert m["executor"] == "ray" and plan.run.manifest()["stages"]["select"]["status"] == "complete"
    assert _state(plan.run) == before and not (plan.run.path / "_scratch").exists()


@pytest.mark.ray
@pytest.mark.slow  # two Ray reruns (each exports again) on the loaded 2-core box: 30-40 s
@pytest.mark.timeout(600)
def test_ray_rerun_of_a_stage_killed_before_marked_complete_does_nothing(tmp_path):
    from loupe.pipeline.executors.ray import run_ray

    # the state is the same files whichever executor wrote them: the local executor makes it faster
    out = tmp_path / "ray"
    run_local(_plan(tmp_path, tmp_path / "local"), quiet=True)
    shutil.copytree(tmp_path / "local", out)
    with private_ray(__name__):
        times = _check_reruns(
            tmp_path, out, lambda plan: run_ray(plan, quiet=True), RAY_GROUPS, _leave_ray_scratch
        )
    print("rerun seconds:", times)
