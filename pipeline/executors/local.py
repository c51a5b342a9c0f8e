"""The embedded default: every stage in-process, batch by batch, with a live progress view.

Stages run one after another over the whole dataset (a stage's input is every sample still
live when it starts). Each batch is committed exactly once (``RunDir.commit``), so a killed run
resumes where it stopped: done uids are skipped, nothing is lost or written twice.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pyarrow as pa
import pyarrow.dataset as pads
from rich.console import Console
from rich.progress import Progress

from loupe.pipeline.evidence import attach_evidence, build_stage_input, remove_stage_input
from loupe.pipeline.executors.oom import OOM_SPLITS, call_bounded, merge_metrics
from loupe.pipeline.executors.plan import Plan, StagePlan, noop_metrics, open_run, stage_metrics
from loupe.pipeline.integrity import mark_verified
from loupe.pipeline.logs import LOG, RunProgress
from loupe.pipeline.stage import StageOutput


def _progress(console: Console, quiet: bool) -> RunProgress:
    """Bars on a terminal, plain timed lines when stdout is not a TTY, run.log lines always."""
    return RunProgress(console, quiet)


def finish_task(progress: Progress | RunProgress, task: int, stage: str, m: dict) -> None:
    """End a stage's progress (its last plain line) and log its metrics to run.log."""
    if isinstance(progress, RunProgress):
        progress.finish(task)
    LOG.info(
        "stage %s: complete: %s in, %s out, %s drops, %s already done, %.2f s",
        stage,
        m.get("rows_in"),
        m.get("rows_out"),
        m.get("drops"),
        m.get("skipped_done"),
        m.get("seconds", 0),
    )


def _rate(n: int, seconds: float) -> str:
    return f"{n / seconds:.1f}/s" if seconds > 0 else ""


def iter_sample_batches(plan: Plan, sp: StagePlan, todo: set[str], batch_size: int) -> Iterator[pa.Table]:
    ds = plan.run.dataset("samples")
    if ds is None or not todo:
        return
    flt = pads.field("uid").isin(pa.array(sorted(todo), pa.string()))
    yield from rebatch(ds.to_batches(columns=list(sp.reads), filter=flt, batch_size=batch_size), batch_size)


def iter_input_batches(plan: Plan, sp: StagePlan, todo: set[str], batch_size: int) -> Iterator[pa.Table]:
    """Batches of a per-row stage with evidence: read from its input, joined once (loupe.pipeline.evidence)."""
    files = build_stage_input(plan.run, sp.id, sp.reads, sp.evidence, todo)
    if files:
        ds = pads.dataset([str(f) for f in files], format="parquet", filesystem=plan.run.fs)
        yield from rebatch(ds.to_batches(batch_size=batch_size), batch_size)


def rebatch(batches: Iterator[pa.RecordBatch], batch_size: int) -> Iterator[pa.Table]:
    """Record batches of any size -> tables of exactly ``batch_size`` rows (the last one shorter)."""
    buf: list[pa.RecordBatch] = []
    n = 0
    for rb in batches:
        if rb.num_rows == 0:
            continue
        buf.append(rb)
        n += rb.num_rows
        while n >= batch_size:
            t = pa.Table.from_batches(buf).combine_chunks()
            yield t.slice(0, batch_size)
            rest = t.slice(batch_size)
            buf, n = (rest.to_batches(), rest.num_rows)
    if n:
        yield pa.Table.from_batches(buf).combine_chunks()


def _commit(
    plan: Plan, sp_id: str, table: str | None, out: StageOutput, batch_uids: list[str]
) -> tuple[int, int]:
    covered = out.covered if out.covered is not None else batch_uids
    plan.run.commit(sp_id, table, out.rows, out.drops, covered)
    return (
        out.rows.num_rows if out.rows is not None else 0,
        out.drops.num_rows if out.drops is not None else 0,
    )


def limit_output(out: StageOutput, remaining: int) -> StageOutput:
    """At most ``remaining`` samples of one ingest batch (rows first, then drops), for ``--limit``."""
    n_rows = out.rows.num_rows if out.rows is not None else 0
    n_drops = out.drops.num_rows if out.drops is not None else 0
    if n_rows + n_drops <= remaining and (out.covered is None or len(out.covered) <= remaining):
        return out
    rows = out.rows.slice(0, min(n_rows, remaining)) if out.rows is not None else None
    left = remaining - (rows.num_rows if rows is not None else 0)
    drops = out.drops.slice(0, max(left, 0)) if out.drops is not None else None
    covered = (rows["uid"].to_pylist() if rows is not None else []) + (
        drops["uid"].to_pylist() if drops is not None else []
    )
    return StageOutput(rows=rows, drops=drops, covered=covered, metrics=out.metrics)


def run_ingest(plan: Plan, progress: Progress) -> dict:
    run = plan.run
    t0 = time.time()
    done = run.done_uids("ingest", "samples")
    skipped = len(done)
    task = progress.add_task("ingest", total=plan.limit, rate="", drops=0)
    rows = drops = 0
    for _, source in plan.sources():
        if plan.limit is not None and len(done) >= plan.limit:
            break
        for out in source.read(done):
            if plan.limit is not None:
                out = limit_output(out, plan.limit - len(done))
            covered = out.covered
            if covered is None:
                covered = (out.rows["uid"].to_pylist() if out.rows is not None else []) + (
                    out.drops["uid"].to_pylist() if out.drops is not None else []
                )
            r, d = _commit(plan, "ingest", "samples", out, covered)
            rows, drops = rows + r, drops + d
            done.update(covered)
            progress.update(task, advance=r + d, drops=drops, rate=_rate(rows + drops, time.time() - t0))
            if plan.limit is not None and len(done) >= plan.limit:
                break  # --limit N: the first N samples in source order, the rest on a later run
    progress.update(task, total=rows + drops, completed=rows + drops)
    m = stage_metrics(rows + drops, rows, drops, time.time() - t0, skipped, table="samples")
    prev = run.manifest().get("stages", {}).get("ingest", {})
    if rows + drops == 0 and prev.get("status") == "complete":
        # nothing new: the original ingest's metrics (timings included) stay in the manifest
        finish_task(progress, task, "ingest", m)
        return {
            **m,
            "noop": True,
            **({"reused_from": prev["reused_from"]} if prev.get("reused_from") else {}),
        }
    plan.changed = True
    run.update_stage("ingest", status="complete", **m)
    finish_task(progress, task, "ingest", m)
    return m


def run_stage(plan: Plan, sp: StagePlan, progress: Progress) -> dict:
    run = plan.run
    t0 = time.time()
    live = run.live_uids()
    done = run.done_uids(sp.id, sp.table)
    todo = live if sp.cls.rerun_all else live - done
    task = progress.add_task(sp.id, total=len(todo), rate="", drops=0)
    run.update_stage(sp.id, status="running", table=sp.table)
    rows = drops = splits = 0
    extra: dict = {}
    if todo:
        stage = sp.cls(sp.config, plan.context(sp.id))
        if sp.is_global:
            batches = [pa.concat_tables(list(iter_sample_batches(plan, sp, todo, max(len(todo), 1))))]
        elif sp.evidence:
            batches = iter_input_batches(plan, sp, todo, sp.config.batch_size)
        else:
            batches = iter_sample_batches(plan, sp, todo, sp.config.batch_size)
        for batch in batches:
            if sp.is_global:
                batch = attach_evidence(run, batch, sp.evidence)
            uids = batch["uid"].to_pylist()
            # per-row stages halve a batch that runs out of memory; a global stage must see everything
            out = (
                stage(batch)
                if sp.is_global
                else call_bounded(stage, batch, plan.max_batch_pixels, sp.stage_reads)
            )
            r, d = _commit(plan, sp.id, sp.table, out, uids)
            rows, drops, splits = rows + r, drops + d, splits + out.metrics.pop(OOM_SPLITS, 0)
            merge_metrics(extra, out.metrics)  # per-batch counts add up to the stage's
            done_n = int(progress.tasks[task].completed) + len(uids)
            progress.update(task, advance=len(uids), drops=drops, rate=_rate(done_n, time.time() - t0))
        close = getattr(stage, "close", None)
        if close:
            close()
        remove_stage_input(run, sp.id)
    if splits:
        extra[OOM_SPLITS] = splits
    m = stage_metrics(len(todo), rows, drops, time.time() - t0, len(done & live), table=sp.table, **extra)
    run.update_stage(sp.id, status="complete", **m)
    finish_task(progress, task, sp.id, m)
    return m


def run_local(plan: Plan, console: Console | None = None, quiet: bool = False) -> dict[str, dict]:
    console = console or Console(stderr=True)
    metrics: dict[str, dict] = {}
    # one writer per run dir: a second `loupe run` of the same recipe and output is refused
    with plan.run.writer_lock():
        open_run(plan, "local")
        with _progress(console, quiet) as progress:
            metrics["ingest"] = run_ingest(plan, progress)
            for sp in plan.stages:
                metrics[sp.id] = noop_metrics(plan, sp) or run_stage(plan, sp, progress)
                plan.changed |= not metrics[sp.id].get("noop") and metrics[sp.id].get("rows_in", 0) > 0
        plan.run.update_manifest(status="complete")
        mark_verified(plan.run)  # the next run re-reads only shards written after this
    return metrics
