"""The run directory: shard files, completion records and the manifest.

Layout: ``<output>/<recipe>/<lineage-hash>/`` holding one folder per table (see
``loupe.schemas.tables.TABLES``), ``_state/<stage>/`` for stages without a table,
``export/`` and ``manifest.json``.

Exactly-once protocol (why a killed run loses and duplicates nothing):
a stage's output for one batch is committed as at most two parquet shards, each written to a
temp name and renamed: first its drop rows (``drops/<shard>.parquet``, naming its partner),
then its table rows (``<table>/<shard>.parquet``) whose footer metadata lists every input uid the
batch accounted for. The table shard is the commit record: a uid is done for a stage iff some
shard of that stage covers it. A drops shard whose partner never landed is an orphan of a
killed batch and is deleted before the next run, so the batch is redone exactly once.

One writer: ``loupe run`` holds an exclusive ``flock`` on ``_state/writer.lock`` for its whole
life (:meth:`RunDir.writer_lock`); a second writer is refused with the holder's pid, host and
command. The kernel drops the lock when its process dies (even by kill -9), so a lock file left by
a dead process is taken over by the next run. Integrity of committed shards (footer metadata,
lineage, page checksums) is checked by :mod:`loupe.pipeline.integrity`.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import sys
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from loupe.schemas.tables import DROPS, TABLES

COVERED_KEY = b"loupe.covered"
STAGE_KEY = b"loupe.stage"
PARTNER_KEY = b"loupe.partner"
LINEAGE_KEY = b"loupe.lineage"
TMP_PREFIX = ".tmp-"
LOCK_FILE = "_state/writer.lock"
#: parquet page checksums (CRC32) are written with every shard and verified on every read, so a
#: garbled page is an error naming the shard, never silently different bytes
READ_OPTIONS = {"page_checksum_verification": True}


def _atomic_write_parquet(table: pa.Table, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{TMP_PREFIX}{path.name}.{uuid.uuid4().hex[:8]}")
    try:
        pq.write_table(table, tmp, write_page_checksum=True)
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise disk_error(e, path) from None


def atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{TMP_PREFIX}{path.name}.{uuid.uuid4().hex[:8]}")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise disk_error(e, path) from None


def disk_error(e: OSError, path: Path) -> Exception:
    """A full or read-only disk as a one-line :class:`LoupeError` naming the path (others unchanged)."""
    from loupe.pipeline.errors import LoupeError

    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return LoupeError(f"{path}: no space left on the device; free space and rerun to resume")
    if e.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return LoupeError(f"{path}: cannot write ({os.strerror(e.errno)}); fix the permissions and rerun")
    return e


class RunDir:
    def __init__(self, path: str | Path, lineage: str | None = None):
        self.path = Path(path)
        #: written into every shard's footer; shards of another lineage are foreign (integrity check)
        self.lineage = lineage

    # ------------------------------------------------------------------ one writer
    @property
    def lock_path(self) -> Path:
        return self.path / LOCK_FILE

    @contextmanager
    def writer_lock(self) -> Iterator[None]:
        """Hold the run dir's exclusive writer lock (``flock``) while the block runs.

        A second writer gets a one-line :class:`LoupeError` naming the holder. The kernel releases
        the lock when the holder dies, so a file left by a dead process is simply taken over.
        """
        from loupe.pipeline.errors import LoupeError

        try:
            self.lock_path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise disk_error(e, self.lock_path) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "unknown process"
            os.close(fd)
            raise LoupeError(
                f"run dir {self.path} is being written by another run ({holder}); wait for it to finish "
                f"or stop it (lock {self.lock_path})"
            ) from None
        try:
            cmd = " ".join(os.path.basename(a) if i == 0 else a for i, a in enumerate(sys.argv))[:200]
            info = f"pid {os.getpid()} on {socket.gethostname()}, started {time.strftime('%H:%M:%S')}: {cmd}"
            os.ftruncate(fd, 0)
            os.pwrite(fd, info.encode(), 0)
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    # ------------------------------------------------------------------ layout
    def table_dir(self, table: str | None, stage: str | None = None) -> Path:
        if table is None:
            return self.path / "_state" / (stage or "unknown")
        return self.path / TABLES[table][0]

    def shard_files(self, table: str | None, stage: str | None = None) -> list[Path]:
        d = self.table_dir(table, stage)
        if not d.is_dir():
            return []
        files = sorted(p for p in d.glob("*.parquet") if not p.name.startswith(TMP_PREFIX))
        if stage is not None:
            files = [p for p in files if p.name.startswith(f"{stage}-")]
        return files

    # ------------------------------------------------------------------ commit
    def commit(
        self,
        stage: str,
        table: str | None,
        rows: pa.Table | None,
        drops: pa.Table | None,
        covered: Iterable[str],
    ) -> str:
        """Commit one batch of a stage exactly once (see module docstring). Returns the shard id."""
        shard = f"{stage}-{time.strftime('%Y%m%d%H%M%S')}-{uuid.uuid4().hex[:10]}"
        target = self.table_dir(table, stage) / f"{shard}.parquet"
        if drops is not None and drops.num_rows:
            dmeta = {PARTNER_KEY: str(target.relative_to(self.path)).encode(), STAGE_KEY: stage.encode()}
            if self.lineage:
                dmeta[LINEAGE_KEY] = self.lineage.encode()
            drops = drops.cast(DROPS).replace_schema_metadata(dmeta)
            _atomic_write_parquet(drops, self.table_dir("drops") / f"{shard}.parquet")
        if rows is None:
            schema = TABLES[table][1] if table else pa.schema([("uid", pa.string())])
            rows = schema.empty_table()
        elif table is not None:
            rows = rows.select(TABLES[table][1].names).cast(TABLES[table][1])
        meta = {COVERED_KEY: json.dumps(sorted(set(covered))).encode(), STAGE_KEY: stage.encode()}
        if self.lineage:
            meta[LINEAGE_KEY] = self.lineage.encode()
        _atomic_write_parquet(rows.replace_schema_metadata(meta), target)
        return shard

    def write_table(self, table: str, rows: pa.Table, stage: str = "extra") -> None:
        """Write a whole extra table (e.g. clusters) as one shard, replacing the stage's earlier ones."""
        for old in self.shard_files(table, stage):
            old.unlink()
        self.commit(stage, table, rows, None, [])

    def done_uids(self, stage: str, table: str | None) -> set[str]:
        done: set[str] = set()
        for f in self.shard_files(table, stage):
            meta = pq.read_schema(f).metadata or {}
            done.update(json.loads(meta.get(COVERED_KEY, b"[]")))
        return done

    def cleanup(self) -> int:
        """Delete temp files and orphan drops shards of killed batches. Returns how many."""
        removed = 0
        if not self.path.exists():
            return 0
        for tmp in self.path.rglob(f"{TMP_PREFIX}*"):
            tmp.unlink(missing_ok=True)
            removed += 1
        for f in self.shard_files("drops"):
            partner = (pq.read_schema(f).metadata or {}).get(PARTNER_KEY)
            if partner and not (self.path / partner.decode()).exists():
                f.unlink()
                removed += 1
        return removed

    # ------------------------------------------------------------------ read
    def dataset(self, table: str) -> pads.Dataset | None:
        files = self.shard_files(table)
        if not files:
            return None
        fmt = pads.ParquetFileFormat(
            default_fragment_scan_options=pads.ParquetFragmentScanOptions(**READ_OPTIONS)
        )
        return pads.dataset([str(f) for f in files], format=fmt, schema=TABLES[table][1])

    def read_table(
        self, table: str, columns: list[str] | None = None, filter_uids: Iterable[str] | None = None
    ) -> pa.Table:
        ds = self.dataset(table)
        schema = TABLES[table][1]
        if ds is None:
            empty = schema.empty_table()
            return empty.select(columns) if columns else empty
        flt = None
        if filter_uids is not None:
            flt = pads.field("uid").isin(pa.array(list(filter_uids), pa.string()))
        return ds.to_table(columns=columns, filter=flt)

    def sample_uids(self) -> set[str]:
        return set(self.read_table("samples", ["uid"]).column("uid").to_pylist())

    def dropped_uids(self) -> set[str]:
        """uids removed by any stage. An ingest failure that a later retry fixed no longer counts."""
        drops = self.read_table("drops", ["uid", "stage"])
        ingest_failed = {
            u for u, s in zip(drops["uid"].to_pylist(), drops["stage"].to_pylist()) if s == "ingest"
        }
        others = {u for u, s in zip(drops["uid"].to_pylist(), drops["stage"].to_pylist()) if s != "ingest"}
        return others | (ingest_failed - self.sample_uids())

    def live_uids(self) -> set[str]:
        return self.sample_uids() - self.dropped_uids()

    # ------------------------------------------------------------------ manifest
    @property
    def manifest_path(self) -> Path:
        return self.path / "manifest.json"

    def manifest(self) -> dict[str, Any]:
        if self.manifest_path.exists():
            return json.loads(self.manifest_path.read_text())
        return {}

    def update_manifest(self, **fields: Any) -> dict[str, Any]:
        m = self.manifest()
        m.update(fields)
        m["updated"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        atomic_write_text(self.manifest_path, json.dumps(m, indent=2, sort_keys=True, default=str))
        return m

    def update_stage(self, stage: str, **fields: Any) -> None:
        m = self.manifest()
        stages = m.setdefault("stages", {})
        stages.setdefault(stage, {}).update(fields)
        self.update_manifest(stages=stages)
