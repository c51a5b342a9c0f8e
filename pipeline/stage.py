"""The stage contract.

A stage is a small class: ``__init__(config, ctx)`` loads models once, ``__call__(batch)`` maps
a pyarrow batch of samples (the columns named in ``reads``, plus one list column per table in
``evidence``) to a :class:`StageOutput`. Stages know nothing of Ray, shards or retries; the
executors (``loupe.pipeline.executors``) schedule them, write their shards and record drops.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import pyarrow as pa

from loupe.schemas.tables import DROPS, TABLES, drops_table

if TYPE_CHECKING:
    from loupe.pipeline.rundir import RunDir


@dataclass
class StageContext:
    run: RunDir
    recipe_dir: Path
    stage_name: str
    seed: int = 0
    #: the Ray cluster (GCS address) the run executes on, ``None`` under the local executor;
    #: sources that distribute their own work (url_list: img2dataset's Ray distributor) join it
    ray_address: str | None = None

    def resolve(self, path: str) -> Path:
        """A recipe path, relative to the recipe file."""
        p = Path(path).expanduser()
        return p if p.is_absolute() else (self.recipe_dir / p)


@dataclass
class StageOutput:
    """What a stage returns for one batch: rows for its table and rows for drops/."""

    rows: pa.Table | None = None
    drops: pa.Table | None = None
    #: uids this output accounts for (defaults to the input batch's uids)
    covered: list[str] | None = None
    #: free-form numbers merged into the stage's metrics in manifest.json
    metrics: dict[str, Any] = field(default_factory=dict)


class Stage:
    #: key in the recipe (``stage: ocr``) and in the registry
    name: ClassVar[str]
    #: table written (key of ``loupe.schemas.tables.TABLES``); None writes only drops
    table: ClassVar[str | None] = None
    #: columns of ``samples`` the stage reads
    reads: ClassVar[tuple[str, ...]] = ("uid",)
    #: other tables attached to each batch as a ``list<struct>`` column named after the table
    evidence: ClassVar[tuple[str, ...]] = ()
    #: global stages see every live sample at once (dedup, clustering, export)
    is_global: ClassVar[bool] = False
    #: stages that are a pure function of the whole run (export) see every live sample on every run
    rerun_all: ClassVar[bool] = False

    def __init__(self, config: Any, ctx: StageContext):
        self.config = config
        self.ctx = ctx

    @property
    def schema(self) -> pa.Schema | None:
        return TABLES[self.table][1] if self.table else None

    def __call__(self, batch: pa.Table) -> StageOutput:  # pragma: no cover - interface
        raise NotImplementedError

    def drop(self, uid: str, reason: str, detail: str | None = None, duplicate_of: str | None = None) -> dict:
        return {
            "uid": uid,
            "stage": self.name,
            "reason": reason,
            "detail": detail,
            "duplicate_of": duplicate_of,
        }


class FilterStage(Stage):
    """Keep or drop each row; subclasses write only :meth:`check`."""

    def check(self, row: dict[str, Any]) -> tuple[str, str] | None:
        """None to keep the row, or ``(reason, detail)`` to drop it."""
        raise NotImplementedError

    def __call__(self, batch: pa.Table) -> StageOutput:
        drops = []
        for row in batch.to_pylist():
            verdict = self.check(row)
            if verdict is not None:
                drops.append(self.drop(row["uid"], verdict[0], verdict[1]))
        return StageOutput(drops=drops_table(drops) if drops else DROPS.empty_table())


class Source:
    """Produces ``samples`` rows. ``read(skip)`` yields batches; uids in ``skip`` are already ingested."""

    def __init__(self, config: Any, ctx: StageContext):
        self.config = config
        self.ctx = ctx

    @property
    def name(self) -> str:
        return getattr(self.config, "name", None) or getattr(self.config, "dataset", "source")

    def read(self, skip: set[str]) -> Iterator[StageOutput]:  # pragma: no cover - interface
        raise NotImplementedError
