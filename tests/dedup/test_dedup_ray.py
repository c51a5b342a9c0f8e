"""Exact and pHash dedup as Ray Data shuffles (loupe.pipeline.executors.ray_dedup), export on Ray:
the same rows as the local executor, and a driver killed (SIGKILL) during each distributed stage
then resubmitted loses and duplicates nothing.

The planted photos of tests/dedup/fixtures.py (3 byte copies, 3 re-encodes, 3 crops) plus a flat
image (low information) and a palette GIF copy (the keep policy's case), two sources so the
(source, source_id, uid) order matters.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
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
from loupe.pipeline.stage import StageContext
from loupe.pipeline.stages.dedup.exact import ExactDedup, exact_rule
from loupe.pipeline.stages.dedup.lsh import band_pairs
from loupe.pipeline.stages.dedup.phash import claim, decide, neighbours
from loupe.schemas.recipe import ExactDedupConfig, PhashDedupConfig

from .fixtures import photo, write_planted

STAGES = """
  - {stage: exact_dedup, batch_size: 2}
  - {stage: phash_dedup, batch_size: 4, max_distances: [0, 10]}
  - {stage: caption, min_words: 3}
  - {stage: export, formats: [llama3_jsonl, dragonfly_parquet], shard_size: 5, dragonfly_rows_per_file: 7}
"""


def _write_inputs(root: Path) -> Path:
    write_planted(root / "photos")
    (root / "more").mkdir()
    Image.new("RGB", (64, 48), (120, 120, 120)).save(root / "more" / "flat.png")
    Image.new("RGB", (64, 48), (121, 120, 120)).save(root / "more" / "flat2.png")
    photo("astronaut").convert("P").save(root / "more" / "astronaut_palette.gif")
    shutil.copy(root / "photos" / sorted(os.listdir(root / "photos"))[0], root / "more" / "first_copy.png")
    recipe = root / "r.yaml"
    recipe.write_text(
        "name: r\noutput: runs\nsources:\n"
        "  - {type: local_folder, name: photos, path: photos}\n"
        f"  - {{type: local_folder, name: more, path: more}}\nstages:{STAGES}"
    )
    return recipe


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("dedupray")
    recipe = _write_inputs(root)
    local = make_plan(load_recipe(recipe), str(root / "local"))
    run_local(local, quiet=True)
    return {"root": root, "recipe": recipe, "local": local.run}


def _rows(run: RunDir, table: str, cols: list[str]) -> list[tuple]:
    return sorted(tuple(r.values()) for r in run.read_table(table, cols).to_pylist())


def _exports(run: RunDir) -> dict[str, bytes]:
    out = run.path / "export"
    names = ["conversations.index.json", *sorted(p.name for p in out.glob("conversations-*.jsonl"))]
    names += [f"dragonfly/{p.name}" for p in sorted((out / "dragonfly").glob("*.parquet"))]
    got = {}
    for n in names:
        p = out / n
        got[n] = pa.parquet.read_table(p).to_pylist() if n.endswith(".parquet") else p.read_bytes()
    return got


def _assert_same_as_local(run: RunDir, local: RunDir) -> None:
    assert run.live_uids() == local.live_uids()
    for table, cols in {
        "dedup": ["uid", "method", "cluster", "duplicate_of", "similarity", "kept"],
        "drops": ["uid", "stage", "reason", "detail", "duplicate_of"],
        "phash": ["uid", "hash", "contrast", "palette"],
    }.items():
        assert _rows(run, table, cols) == _rows(local, table, cols), table
    assert _exports(run) == _exports(local)


def _assert_once(run: RunDir) -> None:
    for table, key in {"dedup": ("uid", "method"), "phash": ("uid",), "drops": ("uid", "stage")}.items():
        rows = run.read_table(table, list(key)).to_pylist()
        dup = [k for k, n in Counter(tuple(r.values()) for r in rows).items() if n > 1]
        assert not dup, f"{table}: {dup[:3]} written more than once"


# ------------------------------------------------------------------------------ pure rules, no Ray
def test_exact_rule_is_the_same_on_any_sha256_partition(tmp_path):
    rng = np.random.default_rng(0)
    rows = [
        {"uid": f"{i:04x}", "sha256": f"{rng.integers(6)}", "source": "ab"[i % 2], "source_id": f"{i % 5}"}
        for i in range(40)
    ]
    stage = ExactDedup(ExactDedupConfig(stage="exact_dedup"), StageContext(RunDir(tmp_path), tmp_path, "x"))
    whole = exact_rule(rows, stage)
    parts = [exact_rule([r for r in rows if int(r["sha256"]) % 3 == p], stage) for p in range(3)]
    key = lambda r: r["uid"]  # noqa: E731
    assert sorted(whole[0], key=key) == sorted([r for p in parts for r in p[0]], key=key)
    assert sorted(whole[1], key=key) == sorted([d for p in parts for d in p[1]], key=key)
    assert whole[2] == sum(p[2] for p in parts) == 6


def test_decide_per_component_equals_decide_on_everything_and_all_pairs(tmp_path):
    """The Ray path decides per group of connected components: same rows as one pass over all
    rows, and the same kept set as the exhaustive (all-pairs) neighbour search."""
    rng = np.random.default_rng(1)
    base = rng.integers(0, 256, (30, 8), dtype=np.uint8)
    near = base[rng.integers(0, 30, 90)].copy()
    flips = rng.integers(0, 64, (90, 3))
    for r, f in enumerate(flips):  # 0-3 bit flips of a base hash: chains of near pairs
        for b in f[: rng.integers(0, 4)]:
            near[r, b // 8] ^= np.uint8(1 << (b % 8))
    codes = np.vstack([base, near])
    n = len(codes)
    table = pa.table(
        {
            "uid": [f"{i:04d}" for i in range(n)],
            "hash": [c.tobytes() for c in codes],
            "bits": [64] * n,
            "contrast": [2.0 if i % 17 == 0 else 40.0 for i in range(n)],
            "palette": [i % 11 == 0 for i in range(n)],
            "source": ["s"] * n,
            "source_id": [f"{i:04d}" for i in range(n)],
            "width": rng.integers(10, 20, n).tolist(),
            "height": [10] * n,
            "earlier": [i % 13 == 0 for i in range(n)],
        }
    )
    cfg = PhashDedupConfig(stage="phash_dedup", confirm=False, max_distance=4, max_distances=[2])
    stage = ExactDedup(ExactDedupConfig(stage="exact_dedup"), StageContext(RunDir(tmp_path), tmp_path, "x"))
    whole, wdrops, wm = decide(table, cfg, lambda u: {}, stage)
    # components of the candidate pairs (at the largest swept distance, low information left out)
    i, j, _ = band_pairs(codes, 4)
    ok = table["contrast"].to_numpy() >= cfg.min_contrast
    parent = list(range(n))

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in zip(i.tolist(), j.tolist()):
        if ok[a] and ok[b]:
            parent[find(a)] = find(b)
    roots = np.array([find(x) for x in range(n)])
    assert len(set(roots.tolist())) < n - 10, "the fixture must have components"
    pieces = [decide(table.filter(pa.array(roots == r)), cfg, lambda u: {}, stage) for r in np.unique(roots)]
    key = lambda r: r["uid"]  # noqa: E731
    assert sorted(whole, key=key) == sorted([r for p in pieces for r in p[0]], key=key)
    assert sorted(wdrops, key=key) == sorted([d for p in pieces for d in p[1]], key=key)
    for m in ("near_duplicates", "duplicate_groups", "kept_max_distance_2", "kept_max_distance_4"):
        assert wm[m] == sum(p[2][m] for p in pieces), m
    # all-pairs reference (faiss range search), same priority order as decide
    recs = sorted(
        table.to_pylist(),
        key=lambda r: (
            not r["earlier"],
            r["palette"],
            -(r["width"] * r["height"]),
            "s",
            r["source_id"],
            r["uid"],
        ),
    )
    ref_codes = np.stack([np.frombuffer(r["hash"], np.uint8) for r in recs])
    dup, _ = claim(neighbours(ref_codes, 4), 4, None, np.array([r["contrast"] < 3 for r in recs]))
    ref_removed = {recs[k]["uid"] for k in np.flatnonzero(dup >= 0)}
    assert ref_removed == {r["uid"] for r in whole if not r["kept"]} and len(ref_removed) > 10


# ------------------------------------------------------------------------------ on Ray
@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_ray_gives_the_local_rows_and_a_killed_driver_resumes_exactly(inputs, tmp_path):
    import ray

    local = inputs["local"]
    # local facts the comparison rests on: exact copies, near duplicates and export shards exist
    reasons = Counter(r["reason"] for r in local.read_table("drops", ["reason"]).to_pylist())
    assert reasons["exact_duplicate"] == 4 and reasons["near_duplicate"] >= 6, reasons
    assert len(list((local.path / "export").glob("conversations-*.jsonl"))) >= 3

    with private_ray(__name__):
        from loupe.pipeline.executors.ray import run_ray

        clean = make_plan(load_recipe(inputs["recipe"]), str(tmp_path / "clean"))
        m = run_ray(clean, quiet=True)
        assert m["exact_dedup"]["distributed"] and m["phash_dedup"]["distributed"]
        assert m["phash_dedup"]["candidate_pairs"] > 0
        for sid in ("exact_dedup", "phash_dedup"):
            lm = local.manifest()["stages"][sid]
            for k in ("rows_in", "rows_out", "drops", "near_duplicates", "low_information", "kept_max_distance_0",
                      "kept_max_distance_10", "duplicate_groups"):  # fmt: skip
                assert m[sid].get(k) == lm.get(k), (sid, k)
        _assert_same_as_local(clean.run, local)
        _assert_once(clean.run)

        # the driver SIGKILLed during each distributed stage, resubmitted each time
        address = ray.get_runtime_context().gcs_address
        out = tmp_path / "killed"
        run = make_plan(load_recipe(inputs["recipe"]), str(out)).run
        stage_shards = lambda table, sid: list((run.path / table).glob(f"{sid}-*.parquet"))  # noqa: E731
        kills = {
            "exact_dedup": lambda: stage_shards("dedup", "exact_dedup"),
            "phash": lambda: stage_shards("phash", "phash"),
            # during the band-LSH shuffle and the components: the stage runs and has committed nothing
            "phash_dedup": lambda: _status(run, "phash_dedup") == "running",
            "export": lambda: _status(run, "export") == "running",
        }
        for sid, ready in kills.items():
            committed_before = len(stage_shards("dedup", "phash_dedup")) if sid == "phash_dedup" else None
            _kill_driver_when(inputs["recipe"], out, address, ready)
            assert _status(run, sid) == "running", f"the driver was not killed during {sid}"
            table = {"exact_dedup": "dedup", "phash_dedup": "dedup", "phash": "phash"}.get(sid)
            print(f"killed during {sid}: {len(run.done_uids(sid, table))} uids committed")  # noqa: T201
            if committed_before is not None:
                assert len(stage_shards("dedup", "phash_dedup")) == committed_before == 0
        run_ray(make_plan(load_recipe(inputs["recipe"]), str(out)), quiet=True)
        _assert_once(run)
        _assert_same_as_local(run, local)

        # a kill lands between two commits of a stage's groups: the groups' tasks committed only part
        # of exact_dedup and of phash_dedup; the rerun redoes the rest and decides it as before
        for sid in ("exact_dedup", "phash_dedup"):
            for shard in stage_shards("dedup", sid):
                if (run.path / "drops" / shard.name).exists():  # the groups that dropped something
                    shard.unlink()
                    (run.path / "drops" / shard.name).unlink()
        lost = len(local.live_uids()) - len(run.live_uids())
        assert lost < 0, "removing committed groups must bring their duplicates back"
        m = run_ray(make_plan(load_recipe(inputs["recipe"]), str(out)), quiet=True)
        assert 0 < m["exact_dedup"]["skipped_done"] and 0 < m["exact_dedup"]["rows_in"]
        assert 0 < m["phash_dedup"]["skipped_done"] and 0 < m["phash_dedup"]["rows_in"]
        _assert_once(run)
        _assert_same_as_local(run, local)


DRIVER = """
import sys
from loupe.pipeline.executors.plan import make_plan
from loupe.pipeline.executors.ray import run_ray
from loupe.pipeline.recipe import load_recipe

run_ray(make_plan(load_recipe(sys.argv[1]), sys.argv[2]), address=sys.argv[3], quiet=True)
"""


def _status(run: RunDir, sid: str) -> str | None:
    try:
        return run.manifest().get("stages", {}).get(sid, {}).get("status")
    except ValueError:  # read while being replaced
        return None


def _kill_driver_when(recipe: Path, out: Path, address: str, ready, timeout: float = 400) -> None:
    """Start a driver process on the test's cluster and SIGKILL it as soon as ``ready()``."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.Popen(
        [sys.executable, "-c", DRIVER, str(recipe), str(out), address],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        deadline = time.time() + timeout
        while not ready():
            assert proc.poll() is None, f"the driver ended first:\n{proc.stderr.read().decode()[-3000:]}"
            assert time.time() < deadline, "the stage never started"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=60) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
