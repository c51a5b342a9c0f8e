"""The Ray driver's uid bookkeeping: bytes per uid, and the driver's RSS for a map stage (issue 15).

    .venv/bin/python benchmarks/bench_uid_sets.py --n 1000000 [--ray] [--root /tmp/uidbench]

Builds (once, under ``--root``) a run dir of N samples whose uids have the real format (64 hex
chars: :func:`loupe.schemas.uid.local_uid`), 2 % dropped by a dedup stage, 0.5 % ingest failures
that never became samples, and a stage ``noop`` already done for half of the uids. Then, each in a
fresh subprocess (so peaks are not shared):

* ``containers``: RSS growth for 1 M uids held as a Python ``set[str]`` (what ``RunDir.live_uids``
  returns), a ``list[str]``, an Arrow ``string`` array and a ``large_string`` array;
* ``start_stage``: the driver's peak and retained RSS growth while it computes the live / done /
  todo uids of ``noop`` (:func:`loupe.pipeline.executors.ray.start_stage`) and the todo value set
  it ``ray.put``s;
* ``--ray``: the real :func:`loupe.pipeline.executors.ray.run_map_stage` of ``noop`` (a stage that
  writes nothing but its commit) on a private 2-CPU Ray: the driver's RSS sampled every 50 ms.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow as pa

SHARD = 50_000


def _rss() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def _uids(n: int, prefix: str = "img") -> list[str]:
    from loupe.schemas.uid import local_uid, sha256_hex

    return [local_uid("laion", f"{prefix}/{i:09d}.jpg", sha256_hex(str(i).encode())) for i in range(n)]


def _plan(root: Path):
    from loupe.pipeline.executors.plan import StagePlan, make_plan
    from loupe.pipeline.recipe import load_recipe
    from loupe.schemas.recipe import Resources, StageConfig

    (root / "empty").mkdir(parents=True, exist_ok=True)
    recipe = root / "r.yaml"
    recipe.write_text("name: uids\noutput: runs\nsources:\n  - {type: local_folder, name: e, path: empty}\n")
    plan = make_plan(load_recipe(recipe), str(root / "runs"))
    cfg = StageConfig(batch_size=SHARD, resources=Resources(num_cpus=1, concurrency=1))
    plan.stages.append(StagePlan("noop", cfg, _noop_class(), None, False, ("uid",), ()))
    return plan


def _noop_class():
    from loupe.pipeline.stage import Stage, StageOutput

    class NoopStage(Stage):
        """Writes nothing but its commit (the covered uids)."""

        name = "noop"
        table = None
        reads = ("uid",)

        def __call__(self, batch: pa.Table) -> StageOutput:
            return StageOutput()

    return NoopStage


def build(root: Path, n: int) -> None:
    from loupe.schemas.tables import DROPS, SAMPLES

    plan = _plan(root)
    run = plan.run
    if run.exists("bench_built"):
        return
    uids = _uids(n)
    for start in range(0, n, SHARD):
        chunk = uids[start : start + SHARD]
        cols = {f.name: pa.nulls(len(chunk), f.type) for f in SAMPLES}
        cols["uid"] = pa.array(chunk, pa.string())
        cols["source"] = pa.array(["laion"] * len(chunk))
        run.commit("ingest", "samples", pa.table(cols, schema=SAMPLES), None, chunk)

    def drops(us: list[str], stage: str, reason: str) -> pa.Table:
        k = len(us)
        return pa.table(
            {"uid": us, "stage": [stage] * k, "reason": [reason] * k, "detail": pa.nulls(k, pa.string()),
             "duplicate_of": pa.nulls(k, pa.string())},
            schema=DROPS,
        )  # fmt: skip

    dropped = uids[::50]  # 2 %
    run.commit("exact_dedup", "dedup", None, drops(dropped, "exact_dedup", "exact_duplicate"), dropped)
    failed = _uids(n // 200, "failed")  # 0.5 %: ingest failures, never samples
    run.commit("ingest", "samples", None, drops(failed, "ingest", "download_error"), failed)
    for start in range(0, n // 2, 10_000):  # noop done for the first half, in 10k-uid shards
        run.commit("noop", None, None, None, uids[start : min(start + 10_000, n // 2)])
    run.write_text("bench_built", json.dumps(sorted(f.name for f in run.shard_files(None, "noop"))))


def containers(n: int) -> dict:
    """Exact bytes per uid: Python objects by tracemalloc, Arrow buffers by its allocator's count."""
    import tracemalloc

    out = {}
    for kind in ("set", "list"):
        tracemalloc.start()
        gen = (u for start in range(0, n, 100_000) for u in _uids(min(100_000, n - start), f"c{start}"))
        x = set(gen) if kind == "set" else list(gen)
        out[f"python_{kind}"] = round(tracemalloc.get_traced_memory()[0] / n, 1)
        tracemalloc.stop()
        del x
    for kind in ("string", "large_string"):
        a0 = pa.total_allocated_bytes()
        x = pa.chunked_array(
            [pa.array(_uids(min(100_000, n - s), f"c{s}"), kind) for s in range(0, n, 100_000)]
        )
        x = x.combine_chunks()
        out[f"arrow_{kind}"] = round((pa.total_allocated_bytes() - a0) / n, 1)
        del x
    return out


class _Peak:
    """RSS of this process sampled every 50 ms in a thread."""

    def __enter__(self):
        self.base = self.peak = _rss()
        self.stop = threading.Event()
        self.t = threading.Thread(target=self._watch, daemon=True)
        self.t.start()
        return self

    def _watch(self) -> None:
        while not self.stop.is_set():
            self.peak = max(self.peak, _rss())
            time.sleep(0.05)

    def __exit__(self, *exc):
        self.stop.set()
        self.t.join()
        self.peak = max(self.peak, _rss())
        self.end = _rss()


def measure_start_stage(root: Path) -> dict:
    from rich.progress import Progress

    from loupe.pipeline.executors.ray import start_stage

    plan = _plan(root)
    sp = plan.stages[-1]
    import gc

    gc.collect()
    with _Peak() as p:
        t0 = time.perf_counter()
        got = start_stage(plan.run, sp, Progress(disable=True))
        if isinstance(got[0], set):  # before 2026-11-30: Python sets, the todo value set built after
            live, done, todo = got[:3]
            value_set = pa.array(sorted(todo), pa.string())
            skipped = len(done & live)
        else:  # Arrow arrays
            live, value_set, skipped = got[:3]
        secs = time.perf_counter() - t0
    return {
        "live": len(live),
        "todo": len(value_set),
        "skipped": skipped,
        "seconds": round(secs, 2),
        "peak_mb": round((p.peak - p.base) / 2**20, 1),
        "retained_mb": round((p.end - p.base) / 2**20, 1),
    }


def measure_ray(root: Path) -> dict:
    import shutil
    import tempfile

    from rich.progress import Progress

    from loupe.pipeline.executors.ray import connect, run_map_stage

    plan = _plan(root)
    sp = plan.stages[-1]
    d = tempfile.mkdtemp(prefix="lray", dir="/tmp")
    os.environ["RAY_TMPDIR"] = d
    connect(None, quiet=True, num_cpus=2)
    import ray.data

    ray.data.DataContext.get_current().enable_progress_bars = False
    try:
        import gc

        gc.collect()
        with _Peak() as p:
            t0 = time.perf_counter()
            m = run_map_stage(plan, sp, 0, Progress(disable=True))
            secs = time.perf_counter() - t0
    finally:
        ray.shutdown()
        shutil.rmtree(d, ignore_errors=True)
    # the stage's commits go away so the next measurement starts from the same run dir
    built = {f.name for f in plan.run.shard_files(None, "noop")}
    return {
        "rows_in": m["rows_in"],
        "skipped_done": m["skipped_done"],
        "seconds": round(secs, 1),
        "driver_rss_before_mb": round(p.base / 2**20, 1),
        "driver_peak_growth_mb": round((p.peak - p.base) / 2**20, 1),
        "shards_after": len(built),
    }


def _reset(root: Path, n: int) -> None:
    """Remove what a ``--ray`` measurement committed beyond the first half."""
    run = _plan(root).run
    keep = set(json.loads(run.read_text("bench_built")))
    for f in run.shard_files(None, "noop"):
        if f.name not in keep:
            run.delete(run.rel(f))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--root", type=Path, default=Path("/tmp/uidbench"))
    ap.add_argument("--ray", action="store_true", help="also run the real map stage on a private Ray")
    ap.add_argument("--only", choices=["containers", "start_stage", "ray"], help=argparse.SUPPRESS)
    a = ap.parse_args()
    root = a.root / str(a.n)
    if a.only == "start_stage":
        _reset(root, a.n)
        print(json.dumps(measure_start_stage(root)))
        return
    if a.only == "ray":
        _reset(root, a.n)
        print(json.dumps(measure_ray(root)))
        return
    t0 = time.perf_counter()
    build(root, a.n)
    print(f"run dir: {root} ({time.perf_counter() - t0:.0f} s to build)", file=sys.stderr)
    res = {"n": a.n, "bytes_per_uid": containers(a.n)}
    print(json.dumps(res), file=sys.stderr)
    for what in ["start_stage"] + (["ray"] if a.ray else []):
        p = subprocess.run(
            [sys.executable, __file__, "--n", str(a.n), "--root", str(a.root), "--only", what],
            capture_output=True,
            text=True,
        )
        if p.returncode:
            sys.exit(p.stderr[-3000:])
        res[what] = json.loads(p.stdout.strip().splitlines()[-1])
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
