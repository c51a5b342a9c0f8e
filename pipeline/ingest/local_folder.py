"""Ingest images from a local folder, with optional sidecar alt-text files."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa

from loupe.pipeline.errors import RecipeError
from loupe.pipeline.images import DecodeError, decode
from loupe.pipeline.stage import Source, StageOutput
from loupe.schemas.tables import SAMPLES, drops_table
from loupe.schemas.uid import local_uid, sha256_hex

BATCH = 64


class LocalFolder(Source):
    """Walks ``path`` recursively in sorted order; corrupt files become ``drops/`` rows."""

    def files(self) -> list[Path]:
        root = self.ctx.resolve(self.config.path)
        if not root.is_dir():
            raise RecipeError(
                f"source {self.name!r}: path {self.config.path!r} is not a folder (resolved to {root})"
            )
        exts = {e.lower() for e in self.config.extensions}
        return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in exts)

    def read(self, skip: set[str]) -> Iterator[StageOutput]:
        root = self.ctx.resolve(self.config.path)
        rows: list[dict] = []
        drops: list[dict] = []
        for path in self.files():
            rel = path.relative_to(root).as_posix()
            data = path.read_bytes()
            digest = sha256_hex(data)
            uid = local_uid(self.name, rel, digest)
            if uid in skip:
                continue
            try:
                img = decode(data)
            except DecodeError as e:
                drops.append(
                    {"uid": uid, "stage": "ingest", "reason": "decode_error", "detail": f"{rel}: {e}"}
                )
            else:
                side = path.with_suffix(self.config.alt_text_ext)
                alt = side.read_text(errors="replace").strip() if side.is_file() else None
                rows.append(
                    {
                        "uid": uid,
                        "source": self.name,
                        "source_id": rel,
                        "url": None,
                        "image_path": str(path),
                        "image": data,
                        "width": img.width,
                        "height": img.height,
                        "sha256": digest,
                        "alt_text": alt or None,
                        "conversations": None,
                        "meta": json.dumps(
                            {"bytes": len(data), "format": (img.format or path.suffix[1:]).lower()}
                        ),
                    }
                )
            if len(rows) + len(drops) >= BATCH:
                yield self._out(rows, drops)
                rows, drops = [], []
        if rows or drops:
            yield self._out(rows, drops)

    @staticmethod
    def _out(rows: list[dict], drops: list[dict]) -> StageOutput:
        return StageOutput(rows=pa.Table.from_pylist(rows, schema=SAMPLES), drops=drops_table(drops))
