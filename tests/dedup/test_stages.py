"""The global stages on synthetic embeddings: a killed batch redone writes its clusters once."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from loupe.pipeline.rundir import RunDir
from loupe.pipeline.stage import StageContext
from loupe.pipeline.stages.dedup.semdedup_stage import SemDedupStage
from loupe.pipeline.stages.select import Select
from loupe.schemas.recipe import SelectConfig, SemDedupConfig
from loupe.schemas.tables import EMBEDDINGS


def _run_with_vectors(tmp_path, n: int = 60) -> tuple[RunDir, list[str]]:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, 16)).astype(np.float32)
    x[1] = x[0] + 0.01  # one planted near-duplicate pair
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    uids = [f"u{i:03d}" for i in range(n)]
    run = RunDir(tmp_path / "run")
    rows = [{"uid": u, "model": "m", "kind": "image", "vector": v.tolist()} for u, v in zip(uids, x)]
    run.commit("embed", "embeddings", pa.Table.from_pylist(rows, schema=EMBEDDINGS), None, uids)
    return run, uids


def test_semdedup_stage_redone_batch_writes_clusters_once(tmp_path):
    run, uids = _run_with_vectors(tmp_path)
    batch = pa.table({"uid": [*uids, "no_vector"]})
    stage = SemDedupStage(
        SemDedupConfig(stage="semdedup", n_clusters=4), StageContext(run, tmp_path, "semdedup")
    )
    first = stage(batch)  # "killed" here: the executor never commits it
    again = stage(batch)  # the rerun redoes the batch
    clusters = run.read_table("clusters")
    assert clusters.num_rows == 4 and sum(clusters["size"].to_pylist()) == 60
    assert first.rows.equals(again.rows)
    drops = again.drops.to_pylist()
    assert [(d["uid"], d["reason"], d["duplicate_of"]) for d in drops] in (
        [("u001", "semantic_duplicate", "u000")],
        [("u000", "semantic_duplicate", "u001")],
    )
    assert again.metrics["missing_embedding"] == 1 and again.metrics["kept_eps_0.05"] == 59
    kept = {r["uid"]: r["kept"] for r in again.rows.to_pylist()}
    assert len(kept) == 60 and sum(kept.values()) == 59


def test_select_stage_quota(tmp_path):
    run, uids = _run_with_vectors(tmp_path)
    stage = Select(
        SelectConfig(stage="select", n_clusters=5, per_cluster=3), StageContext(run, tmp_path, "select")
    )
    out = stage(pa.table({"uid": uids}))
    assert out.metrics["selected"] == 15 and out.drops.num_rows == 45
    assert set(out.drops["reason"].to_pylist()) == {"not_selected"}
    per = pa.TableGroupBy(out.rows.filter(out.rows["kept"]), "cluster").aggregate([("uid", "count")])
    assert per["uid_count"].to_pylist() == [3] * 5
