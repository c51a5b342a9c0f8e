"""Per-image CPU of a per-row stage with evidence vs N (issue 19): must stay flat from 1k to 100k.

    .venv/bin/python benchmarks/bench_evidence.py                      # N = 1k, 10k, 100k
    .venv/bin/python benchmarks/bench_evidence.py --sizes 1000 4000 --old-max 4000

Builds a synthetic run dir per N: ``samples`` (no image bytes: the caption stage does not read
them) in shards of 256 rows, as ingest commits them, and the three evidence tables (2 OCR lines,
2 detections, 3 tags per sample) in shards of ``--shard-rows`` rows, as a per-row expert stage at
that batch size commits them — so the number of evidence shards grows with N, which is what made
the old per-batch attach O(N²). Then runs the real ``caption`` stage (composer backend, the
executor's ``run_stage``) over every sample and reports CPU-seconds of this process (all threads,
duckdb's included) per image. ``old attach`` times the previous per-batch scan of every evidence
shard (kept below as the reference) on the same run dir, for N up to ``--old-max``.

CPU-seconds, not wall time: the dev box is shared, so wall time measures the neighbours.
"""

from __future__ import annotations

import argparse
import os
import random
import tempfile
import time
from pathlib import Path

import duckdb
import pyarrow as pa
from rich.progress import Progress

from loupe.pipeline.executors.local import iter_sample_batches, run_stage
from loupe.pipeline.executors.plan import make_plan
from loupe.pipeline.query import fetch_arrow
from loupe.pipeline.recipe import load_recipe
from loupe.pipeline.rundir import RunDir
from loupe.schemas.tables import SAMPLES, TABLES

WORDS = "market river orange window garden silver planet coffee yellow morning station museum".split()
LABELS = ["cat", "dog", "cup", "car", "person", "bicycle", "chair", "bottle"]


def build_run(run: RunDir, n: int, shard_rows: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    uids = [f"{rng.getrandbits(128):032x}" for _ in range(n)]
    for i in range(0, n, 256):
        part = uids[i : i + 256]
        rows = [{"uid": u, "source": "synth", "source_id": u[:8], "alt_text": f"photo {u[:6]}", "width": 640,
                 "height": 480, "sha256": u} for u in part]  # fmt: skip
        run.commit("ingest", "samples", pa.Table.from_pylist(rows, schema=SAMPLES), None, part)
    for i in range(0, n, shard_rows):
        part = uids[i : i + shard_rows]
        ocr, det, tags = [], [], []
        for u in part:
            box = [0.1, 0.1, 0.5, 0.2]
            ocr += [{"uid": u, "model": "m", "line": k, "text": " ".join(rng.sample(WORDS, 2)), "box": box,
                     "score": 0.9} for k in range(2)]  # fmt: skip
            det += [{"uid": u, "model": "m", "label": rng.choice(LABELS), "box": box, "score": 0.5 + k / 10}
                    for k in range(2)]  # fmt: skip
            tags += [{"uid": u, "model": "m", "tag": rng.choice(LABELS), "score": 0.3} for _ in range(3)]
        for stage, table, rows in (("ocr", "ocr", ocr), ("detect", "detect", det), ("tag", "tags", tags)):
            run.commit(stage, table, pa.Table.from_pylist(rows, schema=TABLES[table][1]), None, part)


def old_attach(run: RunDir, batch: pa.Table, tables: tuple[str, ...]) -> pa.Table:
    """The per-batch attach before issue 19: every batch scans every shard of every evidence table."""
    con = duckdb.connect()
    try:
        con.register("batch_uids", batch.select(["uid"]))
        for name in tables:
            schema = TABLES[name][1]
            fields = [f for f in schema if f.name != "uid"]
            files = [str(f) for f in run.shard_files(name)]
            by_uid: dict[str, list] = {}
            cols = ", ".join(f'"{f.name}"' for f in fields)
            rel = fetch_arrow(
                con.execute(
                    f"SELECT uid, {cols} FROM read_parquet(?, union_by_name=true) "
                    "WHERE uid IN (SELECT uid FROM batch_uids) ORDER BY uid",
                    [files],
                )
            )
            for row in rel.to_pylist():
                by_uid.setdefault(row.pop("uid"), []).append(row)
            col = pa.array([by_uid.get(u, []) for u in batch["uid"].to_pylist()], pa.list_(pa.struct(fields)))
            batch = batch.append_column(name, col)
    finally:
        con.close()
    return batch


def cpu() -> float:
    return time.process_time()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="*", default=[1000, 10_000, 100_000])
    ap.add_argument("--batch-size", type=int, default=64, help="caption stage batch_size")
    ap.add_argument("--shard-rows", type=int, default=32, help="rows per evidence shard (expert batch size)")
    ap.add_argument("--old-max", type=int, default=10_000, help="largest N timed with the old attach")
    ap.add_argument("--old-batches", type=int, default=20, help="batches timed with the old attach")
    a = ap.parse_args()
    print(
        f"load average at start {os.getloadavg()[0]:.1f} (2-core box shared with other jobs: CPU-s, not wall)"
    )
    print("| N | evidence shards | caption stage CPU-s | per image (ms) | of which join once (s) "
          "| old per-batch attach, ms/image |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    for n in a.sizes:
        with tempfile.TemporaryDirectory(prefix="loupe-ev-") as d:
            recipe = Path(d) / "r.yaml"
            (Path(d) / "imgs").mkdir()
            recipe.write_text(
                "name: ev\noutput: runs\nsources:\n  - {type: local_folder, name: synth, path: imgs}\n"
                f"stages:\n  - {{stage: caption, backend: composer, batch_size: {a.batch_size}}}\n"
            )
            plan = make_plan(load_recipe(recipe))
            build_run(plan.run, n, a.shard_rows)
            sp = plan.stages[0]
            shards = sum(len(plan.run.shard_files(t)) for t in sp.evidence)
            old = ""
            if n <= a.old_max:
                todo = plan.run.sample_uids()
                c0, k = cpu(), 0
                for batch in iter_sample_batches(plan, sp, todo, a.batch_size):
                    old_attach(plan.run, batch, sp.evidence)
                    k += batch.num_rows
                    if k >= a.old_batches * a.batch_size:
                        break
                old = f"{(cpu() - c0) / k * 1000:.2f}"
            from loupe.pipeline import evidence

            real, spent = evidence.build_stage_input, []

            def timed_build(*args, real=real, spent=spent, **kw):
                c = cpu()
                out = real(*args, **kw)
                spent.append(cpu() - c)
                return out

            evidence.build_stage_input = timed_build
            import loupe.pipeline.executors.local as local

            local.build_stage_input = timed_build
            c0 = cpu()
            m = run_stage(plan, sp, Progress(disable=True))
            total = cpu() - c0
            local.build_stage_input = evidence.build_stage_input = real
            assert m["rows_out"] == n, m
            print(f"| {n:,} | {shards:,} | {total:.1f} | {total / n * 1000:.2f} | {spent[0]:.2f} | {old} |",
                  flush=True)  # fmt: skip
    print(f"load average at end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
