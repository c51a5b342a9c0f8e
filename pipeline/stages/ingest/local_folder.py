"""Ingest images from a local folder, with optional sidecar alt-text files.

A file's uid includes its bytes' sha256, so a file edited since the last run is a new sample. The
samples of files that changed or disappeared since they were ingested get a ``source_check`` drop
row (``source_changed`` / ``source_missing``) on the next run, so they are never exported stale.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa

from loupe.pipeline.errors import RecipeError
from loupe.pipeline.images import DecodeError, decode
from loupe.pipeline.stage import Source, StageOutput
from loupe.schemas.tables import SAMPLES, drops_table
from loupe.schemas.uid import local_uid, sha256_hex

BATCH = 64


def _utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
        return True
    except UnicodeEncodeError:  # undecodable bytes arrive as lone surrogates (surrogateescape)
        return False


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
        seen: dict[str, str] = {}  # uid -> relative path of every file found now
        for path in self.files():
            rel = path.relative_to(root).as_posix()
            data = path.read_bytes()
            digest = sha256_hex(data)
            if not _utf8(rel):
                # a file name that is not valid UTF-8 (Linux allows any bytes) cannot be stored as
                # text: the sample is dropped, its detail shows the bytes escaped
                rel = os.fsencode(rel).decode("utf-8", errors="backslashreplace")
                uid = local_uid(self.name, rel, digest)
                seen[uid] = rel
                if uid not in skip:
                    detail = f"{rel}: the file name is not valid UTF-8; rename the file"
                    drops.append(
                        {"uid": uid, "stage": "ingest", "reason": "invalid_file_name", "detail": detail}
                    )
                continue
            uid = local_uid(self.name, rel, digest)
            seen[uid] = rel
            if uid in skip:
                continue
            try:
                img = decode(data)
            except DecodeError as e:
                drops.append({"uid": uid, "stage": "ingest", "reason": e.reason, "detail": f"{rel}: {e}"})
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
        stale = self._stale(seen)
        if stale:
            yield StageOutput(drops=drops_table(stale), covered=[])

    def _stale(self, seen: dict[str, str]) -> list[dict]:
        """Drop rows for this source's ingested samples whose file changed or vanished since."""
        run = self.ctx.run
        if run is None:
            return []
        old = run.read_table("samples", ["uid", "source", "source_id", "sha256"]).to_pylist()
        dropped = run.read_table("drops", ["uid", "stage"]).to_pylist()
        already = {d["uid"] for d in dropped if d["stage"] == "source_check"}
        now = set(seen.values())
        out = []
        for r in old:
            if r["source"] != self.name or r["uid"] in seen or r["uid"] in already:
                continue
            rel = r["source_id"]
            reason = "source_changed" if rel in now else "source_missing"
            what = "its bytes changed" if rel in now else "it is gone"
            detail = f"{rel}: {what} since it was ingested (sha256 was {(r['sha256'] or '')[:12]})"
            out.append({"uid": r["uid"], "stage": "source_check", "reason": reason, "detail": detail})
        return out

    @staticmethod
    def _out(rows: list[dict], drops: list[dict]) -> StageOutput:
        return StageOutput(rows=pa.Table.from_pylist(rows, schema=SAMPLES), drops=drops_table(drops))
