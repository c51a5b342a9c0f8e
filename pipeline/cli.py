"""The ``loupe`` command line. Entry points stay thin: parse -> build -> run -> report."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from loupe.pipeline.errors import LoupeError

app = typer.Typer(
    help="Loupe: build, curate and annotate multimodal training data from a YAML recipe.\n\n"
    "Typical use:  loupe validate recipes/demo.yaml  ->  loupe run recipes/demo.yaml  ->  "
    'loupe query runs/demo "SELECT source, count(*) FROM live GROUP BY 1"  ->  loupe report runs/demo',
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
err = Console(stderr=True)
out = Console()


def _version(value: bool) -> None:
    if value:
        from loupe.pipeline.executors.plan import loupe_version

        print(f"loupe {loupe_version()}")
        raise typer.Exit()


@app.callback()
def _main(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print Loupe's version and exit."
    ),
) -> None:
    """Loupe: build, curate and annotate multimodal training data from a YAML recipe."""


SET_HELP = (
    "Override a recipe field, e.g. --set stages.ocr.min_score=0.6 --set stages[0].batch_size=8 "
    "--set name=trial. Dotted path into the recipe (a stage may be named by its `stage`); the value is "
    "YAML; the result is validated like the file. Repeatable."
)


def _offline_env() -> None:
    # Nothing downloads weights at run time unless the user turns this off (ARCHITECTURE, offline policy).
    if os.environ.get("LOUPE_ALLOW_DOWNLOADS") != "1":
        for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "YOLO_OFFLINE"):
            os.environ.setdefault(k, "1")
    os.environ.setdefault("WANDB_MODE", "disabled")
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    from loupe.pipeline.logs import quiet_third_party

    quiet_third_party()


def _fail(e: Exception) -> None:
    # Text, not markup: a message quoting "[Errno 2]" or "['a']" must print as written
    err.print(Text("error: ", style="red") + Text(str(e)), highlight=False, soft_wrap=True)
    raise typer.Exit(2)


def _to_run_log(handlers, msg: str, exc_info: bool = False) -> None:
    """Write an error to run.log only: the user sees it once, as the one-line ``error:`` on stderr."""
    import logging

    from loupe.pipeline.logs import LOG

    if not handlers:
        return
    record = LOG.makeRecord(
        LOG.name, logging.ERROR, __file__, 0, msg, None, sys.exc_info() if exc_info else None
    )
    for h in handlers:
        if isinstance(h, logging.FileHandler):
            h.handle(record)


def _data_error(e: Exception, where: Path | str | None = None) -> LoupeError:
    """A disk or shard error met while running, as one line naming the file (or else the run dir)."""
    from loupe.pipeline.rundir import disk_error

    if isinstance(e, OSError) and (e.filename or where):
        mapped = disk_error(e, e.filename or where)
        if isinstance(mapped, LoupeError):
            return mapped
        return LoupeError(f"{e.filename or where}: {e.strerror or e}")
    first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
    return LoupeError(f"{type(e).__name__}: {first}")


@app.command()
def validate(
    recipe: Path = typer.Argument(..., help="Recipe YAML file."),
    set_: list[str] = typer.Option([], "--set", help=SET_HELP),
    output: Optional[str] = typer.Option(
        None, help="Root folder for runs, checked for writing (as `run --output`)."
    ),
) -> None:
    """Check a recipe: keys, types, values, then the preflight `run` does first: stage order and
    dependencies (semdedup needs embed, OWL-ViT without queries needs tag, caption needs the evidence
    its template uses), model weights resolvable offline (naming the paths looked in), output writable,
    sources reachable. Prints one line per problem; exit status 2 when there is any error."""
    from loupe.pipeline.recipe import lineage_hash, load_recipe

    _offline_env()
    try:
        loaded = load_recipe(recipe, overrides=set_)
        _preflight(loaded, output)
    except LoupeError as e:
        _fail(e)
    r = loaded.recipe
    out.print(
        f"[green]ok[/green] {recipe}: {len(r.sources)} source(s), stages: "
        f"{' -> '.join(['ingest', *[s.stage for s in r.stages]])}; lineage {lineage_hash(loaded)}"
    )


def _preflight(loaded, output: str | None) -> None:
    """Warnings to stderr; all errors at once as one LoupeError (one line each)."""
    from loupe.pipeline.preflight import preflight

    problems = preflight(loaded, output)
    errors = [f"{loaded.path.name}: {p}" for p in problems if p.error]
    for p in problems:
        if not p.error and not errors:  # with errors, only the errors: one line each
            err.print(Text(f"warning: {loaded.path.name}: {p}"), highlight=False, soft_wrap=True)
    errors = [f"{loaded.path.name}: {p}" for p in problems if p.error]
    if errors:
        raise LoupeError("\n".join(errors))


@app.command()
def run(
    recipe: Path = typer.Argument(..., help="Recipe YAML file."),
    executor: Optional[str] = typer.Option(
        None, help="local (in-process, default) or ray; overrides the recipe."
    ),
    address: Optional[str] = typer.Option(None, help="Ray address for --executor ray, e.g. auto."),
    output: Optional[str] = typer.Option(
        None, help="Root folder or URI (s3://, gs://, ...) for runs; overrides the recipe's `output`."
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars or progress lines."),
    set_: list[str] = typer.Option([], "--set", help=SET_HELP),
    dry_run: bool = typer.Option(
        False,
        "--dry-run",
        help="Print, per stage, whether it is done here, reused from an earlier run dir of this recipe "
        "(its identity - config minus batch_size/resources/concurrency, plus its inputs - is unchanged) "
        "or computed; run nothing.",
    ),
    limit: Optional[int] = typer.Option(
        None,
        min=1,
        help="Try the recipe on the first N samples (source order). The run dir is the same as without "
        "--limit, so a later run without it carries on from there.",
    ),
) -> None:
    """Run a recipe. Re-running the same recipe resumes its run directory: finished work is skipped.

    On a terminal it shows progress bars; when stdout is not a terminal (CI, nohup, a pipe) it prints a
    plain line per running stage every 5 s (LOUPE_PROGRESS_INTERVAL): done/total, rate, ETA, drops.
    Either way <run dir>/run.log records stage starts, progress, ends and warnings."""
    _curate(recipe, executor, address, output, quiet, set_, limit, dry_run)


def _curate(
    recipe: Path,
    executor: str | None,
    address: str | None,
    output: str | None,
    quiet: bool,
    set_: list[str],
    limit: int | None = None,
    dry_run: bool = False,
):
    """``loupe run``'s work: load, plan, execute, print the summary; returns (loaded recipe, plan)."""
    _offline_env()
    from pyarrow import ArrowException

    from loupe.pipeline.executors.plan import make_plan
    from loupe.pipeline.logs import LOG, close_run_log, keep_run_log, open_run_log, run_log_path
    from loupe.pipeline.recipe import load_recipe

    log = None
    try:
        loaded = load_recipe(recipe, overrides=set_)
        _preflight(loaded, output)
        plan = make_plan(loaded, output, limit=limit)
        if dry_run:
            _dry_run(plan)
            return
        try:
            log = open_run_log(run_log_path(plan.run))
        except OSError as e:
            raise _data_error(e) from None
        LOG.info(
            "loupe run %s -> %s (executor %s%s%s)",
            recipe,
            plan.location,
            executor or loaded.recipe.executor.kind,
            f", --limit {limit}" if limit else "",
            "".join(f", --set {a}" for a in set_),
        )
        kind = executor or loaded.recipe.executor.kind
        if kind == "local":
            from loupe.pipeline.executors.local import run_local

            metrics = run_local(plan, console=err, quiet=quiet)
        elif kind == "ray":
            from loupe.pipeline.executors.ray import run_ray

            metrics = run_ray(
                plan, address=address or loaded.recipe.executor.address, console=err, quiet=quiet
            )
        else:
            raise LoupeError(f"--executor: {kind!r} is not an executor; valid: local, ray")
        from loupe.pipeline.run_readme import describe_run

        describe_run(plan.run)  # README.md + live.parquet: the run dir explains itself
    except LoupeError as e:
        _to_run_log(log, str(e))  # stderr gets the one line from _fail, not a second copy
        _fail(e)
    except (OSError, ArrowException) as e:
        # a full or read-only disk, or a shard that went bad after it was verified: one line; the
        # next run re-verifies every shard (quarantining bad ones) and resumes
        if log is not None:
            from loupe.pipeline.integrity import VERIFIED

            _to_run_log(log, f"run failed: {type(e).__name__}", exc_info=True)
            try:
                plan.run.delete(VERIFIED)
            except (OSError, ArrowException, LoupeError):
                pass
        _fail(_data_error(e, plan.location if log is not None else None))
    except BaseException as e:
        LOG.exception("run failed: %s", type(e).__name__)
        raise
    finally:
        if log is not None:
            LOG.info("run ended")
            close_run_log(log)
            keep_run_log(plan.run)
    _summary(metrics)
    _drop_summary(plan.run)
    out.print(f"run dir: {plan.location}")
    out.print(f"report:  loupe report {plan.location}")
    return loaded, plan


@app.command()
def pipeline(
    recipe: Path = typer.Argument(
        ..., help="Recipe YAML file with `train` (and optionally `eval`) sections."
    ),
    executor: Optional[str] = typer.Option(None, help="Executor of the curation stages: local or ray."),
    address: Optional[str] = typer.Option(None, help="Ray address for --executor ray, e.g. auto."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
    set_: list[str] = typer.Option([], "--set", help=SET_HELP),
    report_too: bool = typer.Option(True, "--report/--no-report", help="Write the HTML report at the end."),
) -> None:
    """Curate -> train -> evaluate in one command: `loupe run`, then split the export into training
    records and held-out images by uid, train one tiny random-init model per strategy and seed of the
    recipe's `train` section with the bundled trainer (`loupe train`), score its checkpoints on the
    held-out images with the bundled evaluator (`loupe eval`, task vqa_jsonl, VQA accuracy), plot
    accuracy vs steps and record it all (checkpoints, scores, CPU seconds) in manifest.json and the
    report. Rerunning resumes: curation skips finished shards, finished training runs are skipped and
    an interrupted one continues from its last Trainer checkpoint.

    Example:  loupe pipeline recipes/finedetail.yaml   (docs/replication.md)
    """
    import time

    from loupe.pipeline.loop.runner import cpu_seconds, run_loop
    from loupe.pipeline.recipe import load_recipe

    t0, c0 = time.time(), cpu_seconds()
    try:
        if load_recipe(recipe, overrides=set_).recipe.train is None:
            raise LoupeError(
                f"{recipe}: no `train` section; `loupe pipeline` needs one (see docs/replication.md)"
            )
    except LoupeError as e:
        _fail(e)
    loaded, plan = _curate(recipe, executor, address, None, quiet, set_)
    if not plan.run.is_local:
        _fail(LoupeError("output: `loupe pipeline` trains on a local run dir; use a local `output`"))
    curate_s, curate_cpu = time.time() - t0, cpu_seconds() - c0

    try:
        entry = run_loop(plan.run, loaded.recipe, log=lambda m: err.print(m, highlight=False))
    except LoupeError as e:
        _fail(e)
    total_s, total_cpu = time.time() - t0, cpu_seconds() - c0
    timing = {
        "curate_seconds": round(curate_s, 1),
        "curate_cpu_seconds": round(curate_cpu, 1),
        "total_seconds": round(total_s, 1),
        "total_cpu_seconds": round(total_cpu, 1),
    }
    entry["timing"] = timing
    from loupe.pipeline.loop.runner import _record

    _record(plan.run, entry["loop_hash"], entry)
    t = Table(title="held-out accuracy (final step)")
    for c in ("strategy", "seeds", "mean %", "std", "min..max", "train s", "train CPU s"):
        t.add_column(c, justify="left" if c == "strategy" else "right")
    for s, v in entry["summary"].items():
        t.add_row(
            s, str(v["seeds"]), f"{100 * v['final_mean']:.1f}", f"{100 * v['final_std']:.1f}",
            f"{100 * v['final_min']:.1f}..{100 * v['final_max']:.1f}", str(v["seconds"]), str(v["cpu_seconds"]),
        )  # fmt: skip
    err.print(t)
    out.print(
        f"pipeline: curation {timing['curate_seconds']} s ({timing['curate_cpu_seconds']} CPU s), "
        f"total {timing['total_seconds']} s ({timing['total_cpu_seconds']} CPU s) this invocation"
    )
    out.print(f"plot:    {entry['plot']}")
    if report_too:
        from loupe.pipeline.report import build_report

        out.print(f"report:  {build_report(plan.run)}")


def _dry_run(plan) -> None:
    """One plain line per stage: ``<stage>  <identity>  done | reuse <run dir> | compute``."""
    from loupe.pipeline.reuse import plan_actions

    print(f"run dir: {plan.location}")
    for sid, ident, action in plan_actions(plan.run, plan.identities):
        print(f"{sid:<20}  {ident[:12]}  {action}")


def _out(m: dict) -> str:
    """What a stage produced: rows of its table, or for export (no table) the records it wrote."""
    if not m.get("rows_out") and "records" in m:
        return f"{m['records']} records"
    return str(m.get("rows_out", ""))


def _summary(metrics: dict[str, dict]) -> None:
    t = Table(title="stages", show_lines=False)
    for c in ("stage", "in", "out", "drops", "skipped", "seconds", "items/s"):
        t.add_column(c, justify="right" if c != "stage" else "left")
    for sid, m in metrics.items():
        t.add_row(
            sid,
            str(m.get("rows_in", "")),
            _out(m),
            str(m.get("drops", "")),
            str(m.get("skipped_done", "")),
            f"{m.get('seconds', 0):.2f}"
            + (" (reused)" if m.get("reused_from") else " (kept)" if m.get("noop") else ""),
            str(m.get("items_per_s") or ""),
        )
    err.print(t)


def _drop_summary(run) -> None:
    """Drops per stage and reason, with one example detail each (the ``drops`` table, via duckdb)."""
    from loupe.pipeline.query import query as run_query

    rows = run_query(
        run,
        "SELECT stage, reason, count(*) AS n, min(detail) AS example FROM drops GROUP BY 1, 2 ORDER BY n DESC, 1, 2",
    ).to_pylist()
    counts = run_query(run, "SELECT (SELECT count(*) FROM live) AS live, (SELECT count(*) FROM samples) AS n")
    c = counts.to_pylist()[0]
    err.print(f"live samples: {c['live']} of {c['n']} ingested")
    if not rows:
        err.print("drops: none")
        return
    t = Table(title="drops")
    for c in ("stage", "reason", "count", "example"):
        t.add_column(c, justify="right" if c == "count" else "left")
    for r in rows:
        # Text(): a detail such as "[Errno 2] ..." must not be read as rich markup
        t.add_row(Text(r["stage"]), Text(r["reason"]), str(r["n"]), Text((r["example"] or "")[:80]))
    err.print(t)


def _resolve_run(run_dir: str):
    """The run dir of a ``query``/``report`` argument: a path or an object-store URI."""
    from loupe.pipeline.query import resolve_run

    return resolve_run(run_dir)


FORMATS = ("table", "csv", "json")


@app.command()
def query(
    run_dir: str = typer.Argument(
        ...,
        help="Run dir (runs/<recipe>/<hash>) or runs/<recipe> for the newest; a path or an "
        "object-store URI (s3://bucket/runs/<recipe>/<hash>).",
    ),
    sql: str = typer.Argument(
        ...,
        help="SQL over the views samples, live, drops, dedup, clusters, embeddings, "
        "ocr, detect, tags, captions.",
    ),
    format: str = typer.Option("table", "--format", "-f", help="table | csv | json"),
    limit: int = typer.Option(50, help="Rows shown in table format."),
) -> None:
    """Query every table of a run with duckdb (binary columns are shown as their size).

    Read-only: the connection sees only the run's views; reading or writing any file (read_csv,
    COPY ... TO, ATTACH, INSTALL) is refused (docs/reliability.md)."""
    from loupe.pipeline.query import query as run_query

    try:
        if format not in FORMATS:
            raise LoupeError(f"--format: {format!r} is not a format; valid: {', '.join(FORMATS)}")
        if limit < 0:
            raise LoupeError(f"--limit: {limit} must be >= 0")
        result = run_query(_resolve_run(run_dir), sql)
    except LoupeError as e:
        _fail(e)
    rows = result.to_pylist()
    show = lambda v: f"<{len(v)} bytes>" if isinstance(v, (bytes, bytearray)) else v  # noqa: E731
    if format == "json":
        for r in rows:
            print(json.dumps({k: show(v) for k, v in r.items()}, default=str))
    elif format == "csv":
        import csv

        w = csv.writer(sys.stdout)
        w.writerow(result.column_names)
        for r in rows:
            w.writerow([show(v) for v in r.values()])
    else:
        t = Table()
        for c in result.column_names:
            t.add_column(c)
        for r in rows[:limit]:
            t.add_row(*[str(show(v)) for v in r.values()])
        out.print(t)
        if len(rows) > limit:
            out.print(f"... {len(rows) - limit} more rows (use --limit or --format csv)")


@app.command()
def schema(
    what: str = typer.Argument(
        "recipe",
        help="recipe (JSON Schema of a recipe), train (of a training config) or tables (Arrow schemas).",
    ),
) -> None:
    """Print the JSON Schema of the recipe or the training config, or the Arrow schema of every table."""
    if what == "recipe":
        from loupe.pipeline.recipe import recipe_json_schema

        print(json.dumps(recipe_json_schema(), indent=2))
    elif what == "train":
        from loupe.schemas.train import TrainConfig

        print(json.dumps(TrainConfig.model_json_schema(), indent=2))
    elif what == "tables":
        from loupe.schemas.tables import TABLES

        for name, (d, s) in TABLES.items():
            print(f"{name}  ({d}/)")
            for f in s:
                print(f"  {f.name}: {f.type}")
    else:
        _fail(LoupeError(f"schema: {what!r} is not known; valid: recipe, train, tables"))


@app.command()
def report(
    run_dir: str = typer.Argument(
        ...,
        help="Run dir, runs/<recipe> for the newest (a path or an s3://, gs:// URI), or a "
        "`loupe train` output folder.",
    ),
    output: Optional[Path] = typer.Option(
        None,
        help="Folder for index.html (default <run>/report, on the object store for an s3:// run). It "
        "must be new, empty, or a folder an earlier `loupe report` wrote: Loupe never replaces files "
        "it did not create.",
    ),
    max_samples: int = typer.Option(5000, help="Rows (and thumbnails) in the searchable samples table."),
    compare: Optional[str] = typer.Option(
        None, help="Another run dir (or runs/<recipe>): its captions beside this run's, sample by sample."
    ),
) -> None:
    """Write a self-contained HTML report of a run or of a training output (report/index.html)."""
    try:
        from loupe.pipeline.report.train import build_train_report, is_train_output

        if max_samples < 0:
            raise LoupeError(f"--max-samples: {max_samples} must be >= 0")
        if is_train_output(run_dir):
            path = build_train_report(run_dir, output)
        else:
            from loupe.pipeline.report import build_report

            other = _resolve_run(compare) if compare else None
            path = build_report(_resolve_run(run_dir), output, max_samples=max_samples, compare=other)
    except LoupeError as e:
        _fail(e)
    out.print(f"report: {path}")


def _resolve_train_data(path: str) -> str:
    """``runs/<recipe>`` -> the newest run dir; a run dir, export/ folder or export file stays as is."""
    p = Path(path)
    if (
        p.is_dir()
        and not (p / "manifest.json").exists()
        and not any(
            (p / f).exists()
            for f in ("conversations.jsonl", "conversations.index.json", "llava.json", "dragonfly")
        )
        and not any(p.glob("*.parquet"))
    ):
        from loupe.pipeline.query import resolve_run

        return str(resolve_run(p).path.resolve())
    return str(p.resolve()) if p.exists() else path


@app.command()
def train(
    config: Path = typer.Argument(..., help="Training config YAML (examples: train/configs/*.yaml)."),
    data: Optional[str] = typer.Option(
        None,
        "--data",
        help="runs/<recipe> (the newest run's export), a run dir, an export/ folder or an export file "
        "(conversations.jsonl, llava.json, Dragonfly parquet); overrides data.path.",
    ),
    set_: list[str] = typer.Option(
        [], "--set", help="Override a config field, repeatable: --set train.max_steps=10 --set train.lr=1e-4"
    ),
    resume: bool = typer.Option(
        False, "--resume", help="Continue from the newest checkpoint in train.output_dir."
    ),
    executor: str = typer.Option(
        "local", help="local (this process; DDP when started by torchrun) or ray (Ray Train TorchTrainer)."
    ),
    address: Optional[str] = typer.Option(
        None, help="Ray address for --executor ray (default: ray.address)."
    ),
) -> None:
    """Train a vision-language model on a Loupe export with transformers' Trainer.

    Stage presets: train.stage=pretrain (projector only, plain template, lr 1e-3) then
    train.stage=finetune (projector + LLM, lr 2e-5) with model.init_from=<pretrain output>.
    Multi-GPU: torchrun --nproc_per_node 8 $(which loupe) train cfg.yaml. See docs/training.md.
    """
    _offline_env()
    try:
        from loupe.train.config import ConfigError, load_train_config

        try:
            loaded = load_train_config(config, set_)
            if data is not None or loaded.config.data.path:
                raw = data if data is not None else str(loaded.resolve(loaded.config.data.path))
                loaded.config.data.path = _resolve_train_data(raw)
        except ConfigError as e:
            raise LoupeError(str(e)) from None
        from loupe.experts.weights import require_package

        for module, pip_name in (("torch", "torch"), ("transformers", "transformers")):
            require_package(module, pip_name, "loupe train (pip install 'loupe[train]')")
        if executor == "local":
            from loupe.train.trainer import run_training

            summary = run_training(loaded, resume=resume, console=err)
        elif executor == "ray":
            from loupe.pipeline.executors.ray import connect
            from loupe.train.ray_train import run_ray_training

            connect(address or loaded.config.ray.address, quiet=True)
            summary = run_ray_training(loaded, resume=resume, console=err)
        else:
            raise LoupeError(f"--executor: {executor!r} is not an executor; valid: local, ray")
    except ConfigError as e:
        _fail(LoupeError(str(e)))
    except LoupeError as e:
        _fail(e)
    if int(os.environ.get("RANK", "0")) == 0:
        out.print(
            f"trained {summary['global_step']} steps, loss {summary['last_loss']}, "
            f"{summary['tokens_per_s']} tokens/s -> {summary['output_dir']}"
        )


from loupe.eval.cli import EPILOG as _EVAL_EPILOG  # noqa: E402  (typer only; eval's heavy parts load lazily)
from loupe.eval.cli import eval_command  # noqa: E402

app.command("eval", epilog=_EVAL_EPILOG)(eval_command)


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    app()
