"""The semdedup and select stages under --executor ray run distributed (no task loads every vector)
and write what the local executor writes; killed mid-stage and rerun, nothing is lost or doubled."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
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


def _plan(recipe: Path, out: Path | str, exportable: bool = False) -> Plan:
    """The plan, with N samples ingested and embedded before (``exportable``: each with a tiny image
    and a source Q&A, so the export stage writes a record per sample)."""
    plan = make_plan(load_recipe(recipe), str(out))
    run = plan.run
    if not run.shard_files("samples"):  # ingested and embedded before: 7 shards of each, as batches land
        x = _vectors()
        uids = [f"{(i * 7919) % 10007:05d}-s" for i in range(N)]  # uid order is not index order
        extra: dict = {}
        if exportable:
            png = io.BytesIO()
            Image.new("RGB", (4, 4), (9, 99, 199)).save(png, "PNG")
            extra = {"image": png.getvalue(), "width": 4, "height": 4}
        for a in range(0, N, 100):
            part = uids[a : a + 100]
            qa = lambda u: [{"from": "human", "value": "Which sample?"}, {"from": "gpt", "value": u}]  # noqa: E731
            samples = pa.Table.from_pylist(
                [
                    {
                        "uid": u,
                        "source": "syn",
                        "source_id": u,
                        **extra,
                        **({"conversations": qa(u)} if extra else {}),
                    }
                    for u in part
                ],
                SAMPLES,
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


# The driver of a Ray run on S3, SIGKILLed (no cleanup) right after its first SemDeDup group committed.
DRIVER = """
import os, signal, sys
from loupe.pipeline.executors import ray_semdedup
from loupe.pipeline.executors.plan import make_plan
from loupe.pipeline.executors.ray import connect, run_ray
from loupe.pipeline.recipe import load_recipe
from loupe.pipeline.stages.dedup import semdedup_ray

semdedup_ray.GROUP_ROWS = 400
semdedup_ray.SPILL_ROWS = 250


def hook(ev, **info):
    if ev == "group_committed" and info.get("stage") == "semdedup":
        os.kill(os.getpid(), signal.SIGKILL)


ray_semdedup.checkpoint = hook
connect(None, quiet=True, num_cpus=2)
run_ray(make_plan(load_recipe(sys.argv[1]), sys.argv[2]), quiet=True)
"""


def _keys(run: RunDir, rel: str) -> list[str]:
    sel = pafs.FileSelector(run.storage.key(rel), recursive=True, allow_not_found=True)
    return sorted(run.rel(i.path) for i in run.fs.get_file_info(sel))


@pytest.mark.ray
@pytest.mark.slow  # two Ray runs (one killed) on the loaded 2-core box
@pytest.mark.timeout(600)
def test_ray_on_s3_spills_through_the_store_and_survives_a_driver_sigkill(tmp_path, monkeypatch):
    """Run dir on S3 (moto): the SemDeDup/select scratch lives in the bucket (workers write and read
    it there, nothing on a node's disk); the driver SIGKILLed in the group phase and resubmitted
    gives the local executor's rows and export, each uid once, and leaves no scratch behind."""
    pytest.importorskip("moto", reason="needs moto's server: pip install 'loupe[test]'")
    pytest.importorskip("flask", reason="moto's server mode needs flask: pip install 'moto[server]'")
    from ray_helpers import private_ray
    from s3_helpers import BUCKET, moto_s3

    from loupe.pipeline.executors.ray import run_ray

    recipe = _recipe(tmp_path)
    with open(recipe, "a") as f:
        f.write("  - {stage: export, formats: [llama3_jsonl, dragonfly_parquet]}\n")
    local = _plan(recipe, tmp_path / "local", exportable=True)
    run_local(local, quiet=True)
    node = tmp_path / "node-scratch"  # where the pre-storage code spilled for an object-store run
    monkeypatch.setenv("LOUPE_SCRATCH_DIR", str(node))
    monkeypatch.setattr(semdedup_ray, "GROUP_ROWS", 400)  # two groups per stage (each a fresh worker)
    monkeypatch.setattr(semdedup_ray, "SPILL_ROWS", 250)  # three spill files per stage
    with moto_s3():
        out_uri = f"s3://{BUCKET}/semray"
        run = _plan(recipe, out_uri, exportable=True).run
        script = tmp_path / "driver.py"
        script.write_text(DRIVER)
        ray_tmp = Path(tempfile.mkdtemp(prefix="lray", dir="/tmp"))
        env = {**os.environ, "RAY_TMPDIR": str(ray_tmp)}
        env.pop("RAY_ADDRESS", None)
        proc = subprocess.Popen(
            [sys.executable, str(script), str(recipe), out_uri],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            start_new_session=True,  # its raylet and GCS share its group: reaped below (workers follow)
        )
        try:
            out, _ = proc.communicate(timeout=400)
        finally:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            shutil.rmtree(ray_tmp, ignore_errors=True)
        assert proc.returncode == -signal.SIGKILL, out[-3000:]
        assert run.done_uids("semdedup", "dedup")  # killed after a commit (its in-flight tasks may land more)
        (digest,) = run.storage.subdirs("_scratch/semdedup")
        left = _keys(run, f"_scratch/semdedup/{digest}")
        names = {k.split("/")[3] for k in left}
        assert {"batch.arrow", "centroids.npy", "assign.json", "assign", "results"} <= names, left
        assert sum("/assign/" in k for k in left) >= 2 and not node.exists()

        events: list[str] = []
        monkeypatch.setattr(
            ray_semdedup, "checkpoint", lambda ev, **info: events.append(f"{info['stage']}:{ev}")
        )
        with private_ray(__name__):
            m = run_ray(_plan(recipe, out_uri), quiet=True)
        # k-means and the assignment were reused from the bucket, only the uncommitted groups committed
        assert "semdedup:centroids" not in events and "semdedup:assigned" not in events
        assert "select:assigned" in events and m["semdedup"]["skipped_done"] > 0
        # the groups committed before the kill (or by its orphaned in-flight tasks) are not redone
        assert m["semdedup"]["rows_out"] < N
        for table in ("dedup", "drops", "clusters"):  # each uid once, with the local executor's values
            assert _rows(run, table) == _rows(local.run, table), table
        for f in ("conversations.jsonl", "dragonfly/loupe_00000.parquet"):
            assert run.storage.read_bytes(f"export/{f}") == (local.run.path / "export" / f).read_bytes(), f
        assert _keys(run, "_scratch") == [] and run.storage.info("_scratch").type == pafs.FileType.NotFound
    assert not node.exists()  # nothing on a node's disk


@pytest.mark.parametrize("where", ["local", "memory"])
def test_scratch_in_flight_and_removed_through_the_storage(tmp_path, where):
    """A batch's scratch folder is in flight only with its batch.arrow; a folder a killed start left
    without one is swept; removing the last batch leaves no _scratch (local folder and object store)."""
    if where == "memory":
        pytest.importorskip("fsspec")
    import uuid

    run = RunDir(tmp_path / "run" if where == "local" else f"memory://loupe-{uuid.uuid4().hex[:8]}")
    run.write_text("manifest.json", "{}")
    s = ray_semdedup._start(run, "semdedup", ["b", "c"], ["a"])
    run.storage.write_bytes("_scratch/semdedup/deadbeef/assign/x.arrow", b"partial")  # a killed start
    (got,) = ray_semdedup.Scratch.inflight(run, "semdedup")
    assert got.rel == s.rel and got.batch()["uid"].to_pylist() == ["a", "b", "c"]
    assert run.storage.subdirs("_scratch/semdedup") == [s.rel.rsplit("/", 1)[1]]
    got.put_json("assign.json", {"files": []})
    assert got.json("assign.json") == {"files": []} and got.json("missing.json") is None
    got.remove()
    assert ray_semdedup.Scratch.inflight(run, "semdedup") == [] and run.storage.empty("_scratch")
    assert run.storage.info("_scratch").type == pafs.FileType.NotFound
