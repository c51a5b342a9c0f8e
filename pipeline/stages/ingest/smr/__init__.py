"""SMR source: the SliME mixture's datasets, each read from its native release files.

SliME (Zhang et al. 2024, "Beyond LLaVA-HD: Diving into High-Resolution Large Multimodal
Models") trains on an "SMR" mixture of science/math/chart reasoning sets. Users point a recipe at
their local copy of each dataset::

    sources:
      - {type: smr, dataset: chartqa, path: data/smr/chartqa, split: train}

One adapter module per dataset (``loupe.pipeline.stages.ingest.smr.<dataset>``) maps the release's files
to :class:`SmrRecord`; this class turns records into ``samples`` rows: image bytes stored as they
are on disk, size from decoding, uid from the record's native id. A missing or corrupt image is a
``drops/`` row, never a crashed batch; a path that does not hold the dataset, or an adapter that
finds no record at all there, is a RecipeError (an empty source would silently train on nothing).
"""

from __future__ import annotations

import importlib
import inspect
import json
from collections.abc import Iterator
from types import ModuleType
from typing import get_args

import pyarrow as pa

from loupe.pipeline.errors import RecipeError
from loupe.pipeline.images import DecodeError, decode
from loupe.pipeline.stage import Source, StageOutput
from loupe.pipeline.stages.ingest.smr.base import AdapterError, SmrRecord
from loupe.schemas.recipe import SmrDataset
from loupe.schemas.tables import SAMPLES, drops_table
from loupe.schemas.uid import record_uid, sha256_hex

__all__ = ["ADAPTERS", "Smr", "SmrRecord", "adapter"]

BATCH = 64

#: recipe ``dataset`` -> adapter module (imported lazily: only the datasets a recipe names load)
ADAPTERS: dict[str, str] = {name: f"loupe.pipeline.stages.ingest.smr.{name}" for name in get_args(SmrDataset)}


def adapter(dataset: str) -> ModuleType:
    if dataset not in ADAPTERS:
        raise RecipeError(f"unknown SMR dataset {dataset!r}; valid: {', '.join(ADAPTERS)}")
    return importlib.import_module(ADAPTERS[dataset])


class Smr(Source):
    """Reads one SMR dataset split; ``config`` is a :class:`loupe.schemas.recipe.SmrSource`."""

    def records(self) -> Iterator[SmrRecord]:
        cfg = self.config
        root = self.ctx.resolve(cfg.path)
        where = f"source {self.name!r} ({cfg.dataset}): path {cfg.path!r} (resolved to {root})"
        if not root.is_dir():
            raise RecipeError(f"{where} is not a folder")
        module = adapter(cfg.dataset)
        params = inspect.signature(module.iter_records).parameters
        opts = {
            k: v
            for k, v in (("answer_style", cfg.answer_style), ("annotation", cfg.annotation))
            if k in params
        }
        if cfg.annotation and "annotation" not in params:
            raise RecipeError(
                f"source {self.name!r}: annotation: only dataset 'release' reads an annotation file"
            )
        n = 0
        try:
            for rec in module.iter_records(root, cfg.split, **opts):
                n += 1
                yield rec
        except AdapterError as e:
            if e.field == "split":
                raise RecipeError(f"source {self.name!r}: split {cfg.split!r}: {e}") from None
            raise RecipeError(f"{where} does not look like a {cfg.dataset} release: {e}") from None
        if n == 0:
            raise RecipeError(f"{where}: the {cfg.dataset} adapter found no records (split {cfg.split!r})")

    def read(self, skip: set[str]) -> Iterator[StageOutput]:
        rows: list[dict] = []
        drops: list[dict] = []
        seen: set[str] = set()
        limit = self.config.limit
        for n, rec in enumerate(self.records()):
            if limit is not None and n >= limit:
                break
            uid = record_uid(self.name, rec.record_id)
            # a release listing the same id twice would give two rows one uid: keep the first
            if uid in skip or uid in seen or not rec.conversations:
                continue
            seen.add(uid)
            row, drop = self._row(uid, rec)
            (rows if row else drops).append(row or drop)
            if len(rows) + len(drops) >= BATCH:
                yield self._out(rows, drops)
                rows, drops = [], []
        if rows or drops:
            yield self._out(rows, drops)

    def _row(self, uid: str, rec: SmrRecord) -> tuple[dict | None, dict | None]:
        path = str(rec.image_path) if rec.image_path is not None else None
        data = rec.image_bytes
        if data is None:
            if rec.image_path is None:
                return None, self._drop(uid, "missing_image", f"{rec.record_id}: the release has no image")
            if not rec.image_path.is_file():
                return None, self._drop(uid, "missing_image", f"{rec.record_id}: no image file at {path}")
            try:
                data = rec.image_path.read_bytes()
            except OSError as e:
                return None, self._drop(uid, "missing_image", f"{rec.record_id}: {path}: {e}")
        try:
            img = decode(data)
        except DecodeError as e:
            return None, self._drop(uid, "decode_error", f"{rec.record_id}: {path}: {e}")
        meta = {
            "dataset": self.config.dataset,
            "split": self.config.split,
            "format": (img.format or "").lower() or None,
            **rec.meta,
        }
        row = {
            "uid": uid,
            "source": self.name,
            "source_id": rec.record_id,
            "url": None,
            "image_path": path,
            "image": data,
            "width": img.width,
            "height": img.height,
            "sha256": sha256_hex(data),
            "alt_text": rec.alt_text or None,
            "conversations": rec.conversations,
            "meta": json.dumps(meta, ensure_ascii=False, default=str),
        }
        return row, None

    @staticmethod
    def _drop(uid: str, reason: str, detail: str) -> dict:
        return {"uid": uid, "stage": "ingest", "reason": reason, "detail": detail}

    @staticmethod
    def _out(rows: list[dict], drops: list[dict]) -> StageOutput:
        return StageOutput(rows=pa.Table.from_pylist(rows, schema=SAMPLES), drops=drops_table(drops))
