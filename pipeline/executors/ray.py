"""Scale-out on Ray Data: the same stage classes, run by actor pools, committed exactly once.

How a recipe runs here (``loupe run recipe.yaml --executor ray [--address auto]``):

* **ingest** runs on the driver, exactly as in the local executor, except that a ``url_list``
  source's downloads run as img2dataset's own Ray tasks (``distributor="ray"``) spread over the
  cluster's nodes, each worker with the SSRF guard installed (:mod:`loupe.pipeline.stages.ingest.img2dataset_worker`).
* a **per-row stage** (OCR, detect, tag, embed, caption, filters) becomes one Ray Data pipeline:
  ``read_parquet`` of the ``samples`` shards holding its todo uids → a filter task keeping the todo
  uids (an Arrow array, :meth:`RunDir.todo_uids`, broadcast once with ``ray.put``) → ``map_batches`` over an actor pool; a stage
  with ``evidence`` instead reads its input joined with the evidence tables once, on the driver, by
  one streaming duckdb pass (:func:`loupe.pipeline.evidence.build_stage_input`)
  (``resources.concurrency`` actors, ``num_cpus``/``num_gpus`` each, ``batch_size`` from the stage).
  Each actor builds the stage **once** (models load in ``__init__``, the device is decided there, on
  the worker), and for every batch calls the stage (halving the batch on
  out-of-memory, :mod:`loupe.pipeline.executors.oom`) and commits its own shard with
  :meth:`RunDir.commit`. It returns one tiny row ``(n, rows, drops, ...)`` that the driver sums.
* ``exact_dedup`` and ``phash_dedup`` run as Ray Data shuffles (sha256 partitions; band-LSH buckets,
  then components labelled by distributed star contraction, then groups of components) whose tasks
  commit their own shards (:mod:`loupe.pipeline.executors.ray_dedup`); the driver only sums count rows.
* **semdedup** (every ``keep``) and **select** (every cluster source and score) run distributed
  (:mod:`loupe.pipeline.executors.ray_semdedup`, :mod:`loupe.pipeline.executors.ray_select`):
  k-means on a sample in one task, assignment as a ``map_batches`` that spills vectors by cluster,
  then one task per group of clusters that commits its own rows; no process holds every vector.
* ``export`` builds slices and writes its shard files in parallel tasks, the index last; the
  single-JSON files (llava_json / llava_plain_json / mg_llava_boxes) are joined from per-slice
  fragments by one streaming task each, published whole (:mod:`loupe.pipeline.executors.ray_export`).
* any other **global stage** (none of the built-in ones today) runs as one Ray task with the stage's
  ``num_cpus``/``num_gpus``: the same code as the local executor, on a worker.

Exactly-once: commits follow the run-dir protocol (``loupe.pipeline.rundir``), so a killed job's
rerun skips every committed uid (except for ``rerun_all`` stages such as export, which see every live
uid on every run, as in the local executor). Ray Data restarts a crashed actor and retries its batch;
a batch whose commit had landed just before the crash would then be written twice, so a
*reconstructed* actor first reloads the uids this run of the stage already committed and skips them. And a stopped job's actors may outlive
its driver by a moment: every driver writes a fresh owner token into the run dir, and workers
refuse to commit once the token is no longer theirs (:class:`FencedRunDir`), so a resubmitted
job never races a dying one.

The run directory is a local path every node sees at the same path (one machine; NFS/Lustre/a FUSE
mount on a cluster), or an object-store URI (``s3://``, ``gs://``, ...) that every worker writes
directly through ``pyarrow.fs`` (:mod:`loupe.pipeline.storage`): no shared mount, no driver staging.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
import uuid
import warnings
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from rich.console import Console
from rich.progress import Progress

from loupe.pipeline.errors import LoupeError
from loupe.pipeline.evidence import build_stage_input, conform_evidence, remove_stage_input
from loupe.pipeline.executors.local import _commit, _progress, _rate, finish_task, run_ingest, run_stage
from loupe.pipeline.executors.oom import OOM_SPLITS, call_bounded, merge_metrics
from loupe.pipeline.executors.plan import Plan, StagePlan, noop_metrics, open_run, stage_metrics
from loupe.pipeline.integrity import mark_verified
from loupe.pipeline.rundir import COVERED_KEY, RunDir

#: Paths a ``ray job submit --working-dir`` upload should never carry (environments, outputs, caches).
JOB_EXCLUDES = [
    ".venv",
    "venv",
    "runs",
    ".git",
    "**/__pycache__",
    "*.egg-info",
    ".pytest_cache",
    ".ruff_cache",
    "build",
    "dist",
]

# Read/filter tasks are I/O bound: a quarter CPU each keeps them from starving the stage actors
# (with whole CPUs, a 2-CPU node running 2 actors could never schedule a read).
_IO_CPUS = 0.25


def worker_env() -> dict[str, str]:
    """Environment every driver and worker gets: offline model hubs, no Ray usage stats, no auth token."""
    env = {
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_AUTH_MODE": "disabled",
        "WANDB_MODE": "disabled",
        "NO_ALBUMENTATIONS_UPDATE": "1",
    }
    if os.environ.get("LOUPE_ALLOW_DOWNLOADS") != "1":
        env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", YOLO_OFFLINE="1")
    return env


def _apply_env() -> None:
    for k, v in worker_env().items():
        os.environ.setdefault(k, v)


def job_runtime_env(**extra: Any) -> dict[str, Any]:
    """A ``--runtime-env-json`` for ``ray job submit``: excludes + the offline environment."""
    return {"excludes": list(JOB_EXCLUDES), "env_vars": worker_env(), **extra}


# ---------------------------------------------------------------------------------------- connect
def connect(address: str | None, quiet: bool = False, num_cpus: int | None = None) -> None:
    """Connect to Ray: ``None``/``local`` starts a private local instance (or, inside ``ray job
    submit``, joins the job's cluster via ``RAY_ADDRESS``); ``auto`` or ``host:port`` join a cluster."""
    import ray

    _apply_env()
    if ray.is_initialized():
        return
    common: dict[str, Any] = {"log_to_driver": not quiet, "logging_level": "WARNING"}
    try:
        if address in (None, "", "local") and not os.environ.get("RAY_ADDRESS"):
            # address="local" always starts a new instance; plain ray.init() would join any cluster
            # whose address another user's `ray start` left in /tmp/ray/ray_current_cluster.
            ray.init(
                address="local",
                num_cpus=num_cpus or os.cpu_count() or 1,
                include_dashboard=False,
                _node_ip_address="127.0.0.1",
                runtime_env={"env_vars": worker_env()},
                **common,
            )
        else:
            ray.init(address=None if address in (None, "", "local") else address, **common)
    except ConnectionError as e:
        raise LoupeError(
            f"--address {address!r}: no Ray cluster to connect to ({e}). Start one with "
            "`ray start --head`, or leave --address out to start a local Ray."
        ) from None


# ---------------------------------------------------------------------------------------- fencing
class FencedRunDir(RunDir):
    """A run dir that commits only while ``token`` is the run's current owner (``_state/ray_owner``)."""

    OWNER = "_state/ray_owner"

    def __init__(self, run: RunDir, token: str):
        super().__init__(run.storage, lineage=run.lineage)
        self.token = token

    def take_ownership(self) -> None:
        self.write_text(self.OWNER, self.token)

    def commit(self, stage: str, *args: Any, **kwargs: Any) -> str:
        try:
            owner = self.read_text(self.OWNER)
        except FileNotFoundError:
            owner = None
        if owner != self.token:
            raise LoupeError(
                f"run dir {self.location}: another run (owner {owner}) took it over; "
                f"this worker of stage {stage!r} stops without committing"
            )
        return super().commit(stage, *args, **kwargs)


def fenced(plan: Plan) -> Plan:
    """A copy of ``plan`` whose run dir is fenced by a new owner token, which it takes now."""
    run = FencedRunDir(plan.run, uuid.uuid4().hex)
    run.take_ownership()
    return dataclasses.replace(plan, run=run)


# ---------------------------------------------------------------------------------------- workers
def _keep_todo(batch: pa.Table, todo: Any) -> pa.Table:
    import ray

    uids = ray.get(todo) if isinstance(todo, ray.ObjectRef) else todo
    return batch.filter(pc.is_in(batch["uid"], value_set=uids))


def committed_since(run: RunDir, sp: StagePlan, baseline: frozenset[str]) -> set[str]:
    """uids covered by the stage's shards that are not in ``baseline`` (shard names at stage start)."""
    done: set[str] = set()
    for f in run.shard_files(sp.table, sp.id):
        if f.name not in baseline:
            done.update(json.loads((run.read_schema(f).metadata or {}).get(COVERED_KEY, b"[]")))
    return done


class StageWorker:
    """One actor of a per-row stage: builds the stage once, commits each batch itself."""

    def __init__(self, plan: Plan, stage_id: str, baseline: frozenset[str] = frozenset()):
        import ray

        _apply_env()
        self.plan = plan
        self.sp = next(s for s in plan.stages if s.id == stage_id)
        self.stage = self.sp.cls(self.sp.config, plan.context(stage_id))
        self.skip: pa.Array | None = None
        ctx = ray.get_runtime_context()
        with warnings.catch_warnings():  # Ray 2.60 warns about an API used inside this property
            warnings.simplefilter("ignore")
            self.reconstructed = bool(ctx.was_current_actor_reconstructed)
        if self.reconstructed:
            # A batch of the crashed incarnation may have committed before the crash; its retry must
            # not write it again. Only this run's shards count: a rerun_all stage redoes older ones.
            self.skip = pa.array(sorted(committed_since(plan.run, self.sp, baseline)), pa.string())
        self.where = f"{ctx.get_node_id()[:8]}:{os.getpid()}"

    def __call__(self, batch: pa.Table) -> pa.Table:
        t0 = time.perf_counter()
        n_in = batch.num_rows  # skipped rows count as processed: an earlier incarnation committed them
        if self.skip is not None:
            batch = batch.filter(pc.invert(pc.is_in(batch["uid"], value_set=self.skip)))
        rows = drops = splits = 0
        metrics: dict[str, Any] = {}
        if batch.num_rows:
            # evidence was joined once for the whole stage (build_stage_input): it is in the batch
            batch = conform_evidence(batch, self.sp.evidence)
            uids = batch["uid"].to_pylist()
            out = call_bounded(self.stage, batch, self.plan.max_batch_pixels, self.sp.stage_reads)
            splits = out.metrics.pop(OOM_SPLITS, 0)
            metrics = out.metrics
            rows, drops = _commit(self.plan, self.sp.id, self.sp.table, out, uids)
        return pa.table(
            {
                "n": [n_in],
                "rows": [rows],
                "drops": [drops],
                OOM_SPLITS: [splits],
                "seconds": [time.perf_counter() - t0],
                "worker": [self.where],
                "restarted": [self.reconstructed],
                "metrics": [json.dumps(metrics, default=str)],
            }
        )

    def __del__(self) -> None:
        close = getattr(getattr(self, "stage", None), "close", None)
        if close:
            try:
                close()
            except Exception:
                pass


def _global_task(plan: Plan, stage_id: str) -> dict:
    _apply_env()
    sp = next(s for s in plan.stages if s.id == stage_id)
    # Re-running it after a crash is safe: run_stage recomputes its todo set from the run dir.
    return run_stage(plan, sp, Progress(disable=True))


# ---------------------------------------------------------------------------------------- driver
def _files_with(plan: Plan, want: pa.Array) -> list[str]:
    """Only the samples shards that hold a todo uid (on resume most shards are skipped unread)."""
    files = []
    for f in plan.run.shard_files("samples"):
        # one shard at a time (its footer holds its covered list), the freed pages handed back
        uids = pq.ParquetFile(str(f), filesystem=plan.run.fs).read(columns=["uid"])["uid"]
        if pc.any(pc.is_in(uids, value_set=want)).as_py():
            files.append(str(f))
    pa.default_memory_pool().release_unused()
    return files


def _pool_size(sp: StagePlan, index: int) -> int:
    """The configured actor count, capped to what the cluster can host (a pool that cannot start hangs)."""
    import ray

    res = sp.config.resources
    total = ray.cluster_resources()
    where = f"stages[{index}] ({sp.id}).resources"
    size = res.concurrency
    if res.num_gpus > 0:
        gpus = total.get("GPU", 0.0)
        if gpus < res.num_gpus:
            raise LoupeError(
                f"{where}.num_gpus: {res.num_gpus} but the Ray cluster has {gpus:g} GPUs; "
                "set num_gpus: 0 to run this stage on CPU"
            )
        size = min(size, math.floor(gpus / res.num_gpus + 1e-9))
    if res.num_cpus > 0:
        cpus = total.get("CPU", 0.0) - _IO_CPUS
        if cpus < res.num_cpus:
            raise LoupeError(
                f"{where}.num_cpus: {res.num_cpus} but the Ray cluster has {cpus + _IO_CPUS:g} CPUs "
                f"({_IO_CPUS} kept for reading)"
            )
        size = min(size, math.floor(cpus / res.num_cpus + 1e-9))
    return max(size, 1)


def start_stage(run: RunDir, sp: StagePlan, progress: Progress) -> tuple:
    """A stage's (live uids, todo uids, skipped count, baseline shard names, progress task), marked
    running. The uids are Arrow arrays (:meth:`RunDir.todo_uids`: 72 B a uid, not a Python set's 147)."""
    live, todo, skipped = run.todo_uids(sp.id, sp.table, sp.cls.rerun_all)
    baseline = frozenset(f.name for f in run.shard_files(sp.table, sp.id))
    task = progress.add_task(sp.id, total=len(todo), rate="", drops=0)
    run.update_stage(sp.id, status="running", table=sp.table)
    return live, todo, skipped, baseline, task


def run_map_stage(plan: Plan, sp: StagePlan, index: int, progress: Progress) -> dict:
    import ray
    import ray.data

    run = plan.run
    t0 = time.time()
    live, todo, skipped, baseline, task = start_stage(run, sp, progress)
    del live  # a map stage needs only its todo
    res = sp.config.resources
    n = rows = drops = splits = 0
    busy = 0.0
    extra: dict[str, Any] = {}
    workers: set[str] = set()
    restarted: set[str] = set()
    actors = 0
    if todo:
        actors = _pool_size(sp, index)
        if sp.evidence:  # the stage's input joined with its evidence once, on the driver (O(N))
            inputs = build_stage_input(run, sp.id, sp.reads, sp.evidence, todo)
            ds = ray.data.read_parquet([str(f) for f in inputs], filesystem=run.fs, num_cpus=_IO_CPUS)
        else:
            todo_ref = ray.put(todo)
            ds = ray.data.read_parquet(_files_with(plan, todo), filesystem=run.fs, num_cpus=_IO_CPUS)
            ds = ds.select_columns(list(sp.reads)).map_batches(
                _keep_todo,
                fn_kwargs={"todo": todo_ref},
                batch_format="pyarrow",
                batch_size=None,
                num_cpus=_IO_CPUS,
            )
        # One block per batch: Ray Data reads one block per parquet file, and an actor pool hands out
        # whole blocks, so without this a big shard would keep all but one actor idle.
        ds = ds.repartition(target_num_rows_per_block=sp.config.batch_size)
        ds = ds.map_batches(
            StageWorker,
            fn_constructor_kwargs={"plan": plan, "stage_id": sp.id, "baseline": baseline},
            batch_size=sp.config.batch_size,
            batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(size=actors),
            num_cpus=res.num_cpus,
            num_gpus=res.num_gpus or None,
        )
        for part in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
            for r in part.to_pylist():
                n, rows, drops = n + r["n"], rows + r["rows"], drops + r["drops"]
                splits += r[OOM_SPLITS]
                busy += r["seconds"]
                merge_metrics(extra, json.loads(r["metrics"]))
                workers.add(r["worker"])
                if r["restarted"]:
                    restarted.add(r["worker"])
                progress.update(task, advance=r["n"], drops=drops, rate=_rate(n, time.time() - t0))
    remove_stage_input(run, sp.id)
    if splits:
        extra[OOM_SPLITS] = splits
    m = stage_metrics(
        len(todo),
        rows,
        drops,
        time.time() - t0,
        skipped,
        table=sp.table,
        executor="ray",
        actors=actors,
        workers=len(workers),
        actor_restarts=len(restarted),
        actor_seconds=round(busy, 3),
        num_cpus=res.num_cpus,
        num_gpus=res.num_gpus,
        batch_size=sp.config.batch_size,
        **extra,
    )
    if n != len(todo):
        # Every todo uid reaches exactly one actor; anything else means rows were lost in transit.
        raise LoupeError(f"stage {sp.id}: {n} of {len(todo)} samples were processed; rerun to resume")
    run.update_stage(sp.id, status="complete", **m)
    finish_task(progress, task, sp.id, m)
    return m


def run_global_stage(plan: Plan, sp: StagePlan, progress: Progress) -> dict:
    import ray

    from loupe.pipeline.executors.ray_dedup import distributed_build, run_distributed
    from loupe.pipeline.executors.ray_semdedup import run_vector_stage

    build = distributed_build(sp)
    if build is not None:  # shuffles / parallel tasks over the cluster instead of one task
        return run_distributed(plan, sp, build, progress)

    res = sp.config.resources
    t0 = time.time()
    task = progress.add_task(sp.id, total=None, rate="", drops=0)
    m = run_vector_stage(plan, sp)  # semdedup, select: spread over tasks, no process holds every vector
    if m is not None:
        progress.update(task, total=m["rows_in"], completed=m["rows_in"], drops=m["drops"])
        finish_task(progress, task, sp.id, m)
        return m
    remote = ray.remote(_global_task).options(num_cpus=res.num_cpus, num_gpus=res.num_gpus)
    m = ray.get(remote.remote(plan, sp.id))
    progress.update(task, total=m["rows_in"], completed=m["rows_in"], drops=m["drops"])
    # `seconds` is the driver's wall time, task scheduling and worker start included, as for map
    # stages; `task_seconds` is the stage's own time inside the task.
    wall = time.time() - t0
    m = {
        **m,
        "seconds": round(wall, 3),
        "items_per_s": round(m["rows_in"] / wall, 2) if wall > 0 else None,
        "task_seconds": m["seconds"],
        "executor": "ray",
        "num_cpus": res.num_cpus,
        "num_gpus": res.num_gpus,
    }
    plan.run.update_stage(sp.id, **m)
    finish_task(progress, task, sp.id, m)
    return m


def check_run_dir(plan: Plan, console: Console) -> None:
    """Warn when the run dir would live inside a job's uploaded copy (node-local, deleted with the job)."""
    if plan.run.is_local and "runtime_resources" in plan.run.path.parts:
        console.print(
            f"[yellow]warning:[/yellow] the run dir {plan.run.path} is inside this job's uploaded working "
            "dir: it is node-local and deleted with the Ray session. Pass --output /shared/path.",
            highlight=False,
        )


def run_ray(
    plan: Plan, address: str | None = None, console: Console | None = None, quiet: bool = False
) -> dict[str, dict]:
    """Run a plan on Ray; returns the same per-stage metrics as :func:`run_local`."""
    import ray

    console = console or Console(stderr=True)
    check_run_dir(plan, console)
    ours = not ray.is_initialized()  # leave a caller's own Ray session running
    connect(address, quiet=quiet)
    try:
        import ray.data

        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False  # the driver shows one rich bar per stage instead
        ctx.print_on_execution_start = False
        if quiet:
            logging.getLogger("ray.data").setLevel(logging.WARNING)
        metrics: dict[str, dict] = {}
        # One writer per run dir (the driver holds the lock file); the owner token below fences
        # the workers of an earlier, stopped driver.
        with plan.run.writer_lock():
            # Own the run dir before open_run cleans up orphans: a stopped job's late workers must not
            # commit into the state this run is about to read.
            plan = fenced(plan)
            # url_list ingest hands its downloads to img2dataset's Ray distributor on this cluster
            plan.ray_address = ray.get_runtime_context().gcs_address
            open_run(plan, "ray")
            with _progress(console, quiet) as progress:
                metrics["ingest"] = run_ingest(plan, progress)
                for i, sp in enumerate(plan.stages):
                    noop = noop_metrics(plan, sp)
                    if noop is not None:
                        metrics[sp.id] = noop
                    elif sp.is_global:
                        metrics[sp.id] = run_global_stage(plan, sp, progress)
                    else:
                        metrics[sp.id] = run_map_stage(plan, sp, i, progress)
                    plan.changed |= not metrics[sp.id].get("noop") and metrics[sp.id].get("rows_in", 0) > 0
            plan.run.update_manifest(status="complete")
            mark_verified(plan.run)  # the next run re-reads only shards written after this
        return metrics
    finally:
        if ours:
            ray.shutdown()
