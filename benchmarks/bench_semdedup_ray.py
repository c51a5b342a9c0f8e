"""SemDeDup on Ray Data: the driver's peak RSS and the largest Ray worker's, vs N (issue 15).

    .venv/bin/python benchmarks/bench_semdedup_ray.py --n 250000 1000000 --cluster-size 2500

Vectors (512-d, unit, around 200 topics, 1 % planted near-copies of a row in the same block) are
generated inside Ray tasks block by block, so the driver never holds them; the result is streamed
group by group and only counted. k = N / ``--cluster-size``, so the mean cluster is the same at
every N and a task's memory should stay flat while N grows. Per task: each group task reports its
own peak RSS (``VmHWM`` reset at its start, in a worker of its own) and each assignment batch its
peak since the previous batch of its (reused) worker, with the object-store pages that worker holds
mapped (``RssShmem``: shared, left by earlier tasks such as the k-means sample filter, so growing
with k, not with the batch). Worker memory is also sampled every 0.2 s over every ``ray::`` process
this driver's Ray started (psutil; RSS, and USS: pages mapped by that process alone, which includes
object-store pages no other process maps), per process title (``ray::<task or actor>``) to name the
role that holds it; the driver's is its own ``ru_maxrss``. Each N runs in a fresh subprocess so the
driver peaks are not shared. Spill files go under ``--scratch`` (N x 2 KB at 512-d, float32).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

D = 512
BLOCK = 20_000


def _gen(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    idx = batch["id"].astype(np.int64)
    rng = np.random.default_rng(int(idx[0]) if len(idx) else 0)
    topics = np.random.default_rng(0).standard_normal((200, D)).astype(np.float32)
    topics /= np.linalg.norm(topics, axis=1, keepdims=True)
    # float32 throughout, as embeddings are stored (a NumPy float64 scale would promote to float64
    # and double every spill file and block; python floats do not promote)
    x = topics[rng.integers(0, 200, len(idx))] + rng.standard_normal((len(idx), D), np.float32) * float(
        1.3 / np.sqrt(D)
    )
    n_dup = len(idx) // 100
    if n_dup:
        src = rng.integers(0, len(idx) - n_dup, n_dup)
        x[-n_dup:] = x[src] + rng.standard_normal((n_dup, D), np.float32) * float(0.2 / np.sqrt(D))
    assert x.dtype == np.float32
    return {"idx": idx, "vector": x}


def _watch(peaks: dict[int, int], uss: dict[int, int], stop: threading.Event, roles: dict[str, int]) -> None:
    """Peak RSS/USS per ``ray::`` process, and peak USS per process title (``ray::<task or actor>``),
    so the role holding the memory is named (a worker's title changes with the task it runs)."""
    import psutil

    me = psutil.Process()
    while not stop.is_set():
        for p in me.children(recursive=True):  # this Ray instance only (other users' Rays are not ours)
            try:
                cmd = " ".join(p.cmdline() or [])
                if cmd.startswith("ray::"):
                    m = p.memory_full_info()  # uss: private pages only, object-store mmaps excluded
                    peaks[p.pid] = max(peaks.get(p.pid, 0), m.rss)
                    uss[p.pid] = max(uss.get(p.pid, 0), m.uss)
                    role = cmd.split()[0][:60]
                    roles[role] = max(roles.get(role, 0), m.uss)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
        stop.wait(0.2)


def one(n: int, cluster_size: int, iters: int, cpus: int, scratch: str | None) -> dict:
    import ray

    from loupe.pipeline.stages.dedup.semdedup_ray import semdedup_ray

    ray.init(
        address="local", num_cpus=cpus, include_dashboard=False, logging_level="ERROR", log_to_driver=False
    )
    ray.data.DataContext.get_current().enable_progress_bars = False
    peaks: dict[int, int] = {}
    uss: dict[int, int] = {}
    roles: dict[str, int] = {}
    stop = threading.Event()
    th = threading.Thread(target=_watch, args=(peaks, uss, stop, roles), daemon=True)
    th.start()
    t0 = time.time()
    k = max(1, n // cluster_size)
    ds = ray.data.range(n, override_num_blocks=max(1, n // BLOCK)).map_batches(_gen, batch_format="numpy")
    rows = removed = 0
    tasks: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="semray", dir=scratch) as where:
        stats: dict = {}
        out, _, sizes = semdedup_ray(
            ds, n, k, [0.05], where, kmeans_iters=iters, seed=1234, use_gpu="auto", stats=stats
        )
        for b in out:
            tasks.append(json.loads(b.schema.metadata[b"loupe.task"]))
            rows += b.num_rows
            removed += int(np.asarray(b["removed"].to_pylist())[:, 0].sum())
        spill_mb = sum(f.stat().st_size for f in Path(where).rglob("*.arrow")) / 2**20
    largest = int(sizes.max())
    stop.set()
    th.join()
    ray.shutdown()
    return {
        "n": n,
        "k": k,
        "rows": rows,
        "removed_eps_0.05": removed,
        "largest_cluster": largest,
        "largest_cluster_mb": round(largest * D * 4 / 2**20, 1),
        "spill_mb": round(spill_mb, 1),
        "seconds": round(time.time() - t0, 1),
        "group_tasks": len(tasks),
        "largest_group_task_rows": max(t["rows"] for t in tasks),
        "largest_group_task_peak_rss_mb": max(t["peak_rss_mb"] for t in tasks),
        **stats,
        "driver_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "largest_worker_peak_rss_mb": round(max(peaks.values(), default=0) / 2**20, 1),
        "largest_worker_peak_uss_mb": round(max(uss.values(), default=0) / 2**20, 1),
        "peak_uss_mb_by_role": {
            r: round(v / 2**20, 1) for r, v in sorted(roles.items(), key=lambda kv: -kv[1])[:6]
        },
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, nargs="+", default=[250_000, 1_000_000])
    ap.add_argument("--cluster-size", type=int, default=2500, help="mean cluster size: k = n / this")
    ap.add_argument("--iters", type=int, default=20, help="k-means iterations")
    ap.add_argument("--cpus", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--scratch", default=None, help="where the spill files go (default: the temp dir)")
    ap.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.one:
        print(json.dumps(one(a.n[0], a.cluster_size, a.iters, a.cpus, a.scratch)))
        return
    for n in a.n:
        cmd = [sys.executable, __file__, "--one", "--n", str(n), "--cluster-size", str(a.cluster_size)]
        cmd += ["--iters", str(a.iters), "--cpus", str(a.cpus)] + (
            ["--scratch", a.scratch] if a.scratch else []
        )
        r = subprocess.run(cmd, capture_output=True, text=True)
        print(r.stdout.strip().splitlines()[-1] if r.returncode == 0 else r.stderr[-2000:], flush=True)


if __name__ == "__main__":
    main()
