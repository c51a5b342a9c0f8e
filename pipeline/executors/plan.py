"""What every executor shares: build stages and sources from a recipe, open the run dir, record metrics."""

from __future__ import annotations

import platform
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loupe.pipeline.errors import LoupeError
from loupe.pipeline.recipe import LoadedRecipe, lineage_hash, stage_ids
from loupe.pipeline.registry import STAGES, _load, source_class
from loupe.pipeline.rundir import RunDir
from loupe.pipeline.stage import StageContext


@dataclass
class StagePlan:
    id: str
    config: Any
    cls: type
    table: str | None
    is_global: bool
    reads: tuple[str, ...]
    evidence: tuple[str, ...]


@dataclass
class Plan:
    loaded: LoadedRecipe
    run: RunDir
    lineage: str
    stages: list[StagePlan] = field(default_factory=list)

    def context(self, stage_id: str) -> StageContext:
        return StageContext(
            run=self.run, recipe_dir=self.loaded.dir, stage_name=stage_id, seed=self.loaded.recipe.seed
        )

    def sources(self):
        for i, cfg in enumerate(self.loaded.recipe.sources):
            yield i, source_class(cfg.type)(cfg, self.context("ingest"))


def run_root(loaded: LoadedRecipe, output: str | None = None) -> Path:
    """``<output>/<recipe name>``; ``output`` (the ``--output`` flag) overrides the recipe's field."""
    where = output or loaded.recipe.output
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", where):
        # RunDir commits by atomic rename (os.replace), which object stores do not offer.
        field = "--output" if output else "output"
        raise LoupeError(
            f"{field}: {where!r}: URIs (s3://, gs://, file://, ...) are not supported; give a filesystem "
            "path (on a cluster, one every node mounts at the same path, e.g. NFS)"
        )
    return loaded.resolve(where) / loaded.recipe.name


def make_plan(loaded: LoadedRecipe, output: str | None = None) -> Plan:
    lineage = lineage_hash(loaded)
    run = RunDir(run_root(loaded, output) / lineage)
    plan = Plan(loaded=loaded, run=run, lineage=lineage)
    for sid, cfg in zip(stage_ids(loaded.recipe), loaded.recipe.stages):
        cls = _load(STAGES[cfg.stage])
        plan.stages.append(
            StagePlan(
                id=sid,
                config=cfg,
                cls=cls,
                table=cls.table,
                is_global=cls.is_global,
                reads=tuple(dict.fromkeys(("uid", *cls.reads))),
                evidence=tuple(cls.evidence),
            )
        )
    return plan


def open_run(plan: Plan, executor: str) -> None:
    from loupe import pipeline as _pkg  # noqa: F401  (version lookup below)

    run = plan.run
    run.path.mkdir(parents=True, exist_ok=True)
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
        cleaned_orphans=removed,
    )


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
