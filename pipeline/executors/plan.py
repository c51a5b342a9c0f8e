"""What every executor shares: build stages and sources from a recipe, open the run dir, record metrics."""

from __future__ import annotations

import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from loupe.pipeline.errors import LoupeError
from loupe.pipeline.images import set_pixel_budget
from loupe.pipeline.logs import LOG
from loupe.pipeline.recipe import LoadedRecipe, lineage_hash, stage_identities, stage_ids
from loupe.pipeline.registry import STAGES, _load, source_class
from loupe.pipeline.rundir import RunDir
from loupe.pipeline.stage import StageContext
from loupe.pipeline.storage import is_uri, open_storage


@dataclass
class StagePlan:
    id: str
    config: Any
    cls: type
    table: str | None
    is_global: bool
    reads: tuple[str, ...]
    evidence: tuple[str, ...]
    #: the columns the stage itself declared (``reads`` adds width/height to bound decoded pixels)
    stage_reads: tuple[str, ...] = ()


@dataclass
class Plan:
    loaded: LoadedRecipe
    run: RunDir
    lineage: str
    stages: list[StagePlan] = field(default_factory=list)
    #: ``{stage id: identity}`` (``loupe.pipeline.reuse``), ingest first
    identities: dict[str, str] = field(default_factory=dict)
    #: stages linked from another run dir when the run opened: ``{stage id: donor run dir}``
    reused: dict[str, str] = field(default_factory=dict)
    #: identities this run dir held before this run opened (adopted stages included)
    previous_identities: dict[str, str] = field(default_factory=dict)
    #: set once a stage of this run did any work: later stages can no longer be skipped as no-ops
    changed: bool = False
    #: ``--limit N``: ingest stops once the run holds N samples (not part of the lineage: dropping
    #: ``--limit`` later carries on in the same run dir)
    limit: int | None = None
    #: the Ray cluster's GCS address under ``--executor ray`` (set by the executor once connected)
    ray_address: str | None = None

    @property
    def location(self) -> str:
        """Where the run's outputs are: the run dir's path or URI."""
        return self.run.location

    @property
    def max_batch_pixels(self) -> int:
        return self.loaded.recipe.limits.max_batch_pixels

    def context(self, stage_id: str) -> StageContext:
        # every process that builds a stage (driver, Ray actor, Ray task) applies the recipe's budget
        set_pixel_budget(self.loaded.recipe.limits.max_image_pixels)
        return StageContext(
            run=self.run,
            recipe_dir=self.loaded.dir,
            stage_name=stage_id,
            seed=self.loaded.recipe.seed,
            ray_address=self.ray_address,
        )

    def sources(self):
        for i, cfg in enumerate(self.loaded.recipe.sources):
            yield i, source_class(cfg.type)(cfg, self.context("ingest"))


def run_root(loaded: LoadedRecipe, output: str | None = None) -> Path:
    """``<output>/<recipe name>`` for a local output; ``output`` (``--output``) overrides the recipe's."""
    where = output or loaded.recipe.output
    if where.lower().startswith("file://"):
        where = where[len("file://") :]
    if is_uri(where):
        raise LoupeError(f"{'--output' if output else 'output'}: {where!r} is a URI, not a local path")
    root = loaded.resolve(where)
    for p in (root, root / loaded.recipe.name):
        if p.exists() and not p.is_dir():
            raise LoupeError(
                f"{'--output' if output else 'output'}: {where!r} is not a folder ({p} is a file); "
                "name a folder for the runs"
            )
    return root / loaded.recipe.name


def make_plan(loaded: LoadedRecipe, output: str | None = None, limit: int | None = None) -> Plan:
    """The plan of a recipe. A URI output (s3://, gs://, ...) is an object-store run dir that workers
    write directly (``loupe.pipeline.storage``); the stages and executors do not know the difference."""
    lineage = lineage_hash(loaded)
    where = output or loaded.recipe.output
    if is_uri(where) and not where.lower().startswith("file://"):
        storage = open_storage(where, field="--output" if output else "output")
        run = RunDir(storage.child(f"{loaded.recipe.name}/{lineage}"), lineage=lineage)
    else:
        run = RunDir(run_root(loaded, output) / lineage, lineage=lineage)
    plan = Plan(
        loaded=loaded,
        run=run,
        lineage=lineage,
        limit=limit,
        identities=stage_identities(loaded),
    )
    for sid, cfg in zip(stage_ids(loaded.recipe), loaded.recipe.stages):
        cls = _load(STAGES[cfg.stage])
        plan.stages.append(
            StagePlan(
                id=sid,
                config=cfg,
                cls=cls,
                table=cls.table,
                is_global=cls.is_global,
                reads=tuple(
                    dict.fromkeys(("uid", *cls.reads, *(("width", "height") if "image" in cls.reads else ())))
                ),
                stage_reads=tuple(dict.fromkeys(("uid", *cls.reads))),
                evidence=tuple(cls.evidence),
            )
        )
    return plan


def open_run(plan: Plan, executor: str) -> None:
    from loupe import pipeline as _pkg  # noqa: F401  (version lookup below)
    from loupe.pipeline.integrity import verify_run
    from loupe.pipeline.reuse import adopt_upstream

    run = plan.run
    console = Console(stderr=True)
    # finished stages with the same identity in a sibling run dir are linked in, not recomputed
    # (hard links: a local run dir only)
    plan.reused = adopt_upstream(run, plan.identities) if run.is_local else {}
    plan.previous_identities = {
        **run.manifest().get("stage_identities", {}),
        **{sid: plan.identities[sid] for sid in plan.reused},
    }
    for sid, donor in plan.reused.items():
        LOG.info("stage %s: reused from %s", sid, donor)
    quarantined = verify_run(
        run, warn=lambda msg: console.print(f"warning: {msg}", style="yellow", highlight=False, markup=False)
    )
    removed = run.cleanup()
    m = run.manifest()
    run.update_manifest(
        recipe=plan.loaded.recipe.name,
        recipe_path=str(plan.loaded.path),
        lineage=plan.lineage,
        loupe_version=loupe_version(),
        python=platform.python_version(),
        executor=executor,
        created=m.get("created", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())),
        config=plan.loaded.recipe.model_dump(mode="json"),
        status="running",
        stage_order=["ingest", *[s.id for s in plan.stages]],
        stage_identities=plan.identities,
        cleaned_orphans=removed,
        quarantined=[*m.get("quarantined", []), *[{"shard": p, "reason": r} for p, r in quarantined]],
    )


def noop_metrics(plan: Plan, sp: StagePlan) -> dict | None:
    """This run's metrics of a stage a resume need not touch (nothing to do), or None to run it.

    A stage is a no-op when it completed here under the same identity, nothing earlier in this run did
    any work, and no live sample lacks its output. The manifest then keeps the stage's original entry,
    timings included, for the report. ``rerun_all`` stages (export: a pure function of the whole run)
    keep their contract and run on every run."""
    if plan.changed or sp.cls.rerun_all:
        return None
    prev = plan.run.manifest().get("stages", {}).get(sp.id, {})
    if prev.get("status") != "complete" or plan.previous_identities.get(sp.id) != plan.identities.get(sp.id):
        return None
    _, todo, skipped = plan.run.todo_uids(sp.id, sp.table)  # Arrow arrays: lighter than sets at scale
    if len(todo):
        return None
    extra = {"reused_from": prev["reused_from"]} if prev.get("reused_from") else {}
    return stage_metrics(0, 0, 0, 0.0, skipped, table=sp.table, noop=True, **extra)


def loupe_version() -> str:
    try:
        from importlib.metadata import version

        return version("loupe")
    except Exception:
        return "unknown"


def stage_metrics(rows_in: int, rows_out: int, drops: int, seconds: float, skipped: int, **extra) -> dict:
    return {
        "rows_in": rows_in,
        "rows_out": rows_out,
        "drops": drops,
        "skipped_done": skipped,
        "seconds": round(seconds, 3),
        "items_per_s": round(rows_in / seconds, 2) if seconds > 0 else None,
        **extra,
    }
