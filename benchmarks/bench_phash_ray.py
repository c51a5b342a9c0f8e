"""pHash search on N synthetic 64-bit hashes (70 % distinct, 30 % 0-4 bit variants of them):
``phash_dedup`` in-process vs the Ray shuffle (loupe.pipeline.executors.ray_dedup); same removed set.

    python benchmarks/bench_phash_ray.py N OUT_DIR local|ray

Writes OUT_DIR/<mode>.removed.json; compare the two files. No images: confirm is off.
"""

import json
import resource
import sys
import time

sys.path.insert(0, "tests")
import numpy as np
import pyarrow as pa
from rich.progress import Progress

from loupe.pipeline.executors.plan import Plan, StagePlan
from loupe.pipeline.rundir import RunDir
from loupe.pipeline.stage import StageContext
from loupe.pipeline.stages.dedup.phash import PhashDedup
from loupe.schemas.recipe import PhashDedupConfig
from loupe.schemas.tables import SAMPLES

N = int(sys.argv[1])
root = sys.argv[2]
rng = np.random.default_rng(0)
base = rng.integers(0, 256, (N * 7 // 10, 8), dtype=np.uint8)
near = base[rng.integers(0, len(base), N - len(base))].copy()
for r in range(len(near)):
    for b in rng.integers(0, 64, rng.integers(0, 5)):
        near[r, b // 8] ^= np.uint8(1 << (b % 8))
codes = np.vstack([base, near])
uids = [f"{i:064x}" for i in range(N)]


def build(path):
    run = RunDir(path)
    for a in range(0, N, 5000):
        u = uids[a : a + 5000]
        given = {
            "uid": u,
            "source": ["s"] * len(u),
            "source_id": u,
            "width": [10] * len(u),
            "height": [10] * len(u),
            "sha256": u,
        }
        s = pa.table(
            {
                f.name: pa.array(given[f.name], f.type) if f.name in given else pa.nulls(len(u), f.type)
                for f in SAMPLES
            }
        )
        run.commit("ingest", "samples", s, None, u)
        h = pa.table(
            {
                "uid": u,
                "hash": [c.tobytes() for c in codes[a : a + 5000]],
                "bits": [64] * len(u),
                "contrast": [40.0] * len(u),
                "palette": [False] * len(u),
                "source": ["s"] * len(u),
                "source_id": u,
                "width": [10] * len(u),
                "height": [10] * len(u),
            }
        )
        run.commit("phash", "phash", h, None, u)
    return run


cfg = PhashDedupConfig(stage="phash_dedup", confirm=False, batch_size=max(1, N // 16))
mode = sys.argv[3]
run = build(f"{root}/{mode}")
t = time.time()
if mode == "local":
    stage = PhashDedup(cfg, StageContext(run, run.path, "phash_dedup"))
    out = stage(pa.table({"uid": uids}))
    removed = {r["uid"] for r in out.rows.to_pylist() if not r["kept"]}
    print(
        json.dumps(
            {
                "mode": mode,
                "N": N,
                "s": round(time.time() - t, 1),
                "removed": len(removed),
                "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024,
            }
        )
    )
else:
    from ray_helpers import private_ray

    from loupe.pipeline.executors.ray_dedup import phash_ray, run_distributed

    with private_ray("__main__"):
        plan = Plan(loaded=None, run=run, lineage="x")
        sp = StagePlan("phash_dedup", cfg, PhashDedup, "dedup", True, ("uid",), ())
        plan.stages.append(sp)
        plan.context = lambda sid: StageContext(run, run.path, sid)
        t = time.time()
        m = run_distributed(plan, sp, phash_ray, Progress(disable=True))
        removed = set(
            run.read_table("dedup", ["uid", "kept"])
            .filter(pa.compute.invert(run.read_table("dedup", ["uid", "kept"])["kept"]))["uid"]
            .to_pylist()
        )
        print(
            json.dumps(
                {
                    "mode": mode,
                    "N": N,
                    "s": round(time.time() - t, 1),
                    "removed": len(removed),
                    "pairs": m.get("candidate_pairs"),
                    "driver_maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024,
                }
            )
        )
json.dump(sorted(removed), open(f"{root}/{mode}.removed.json", "w"))
