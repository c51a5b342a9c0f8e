"""The run directory: shard files, completion records and the manifest.

Layout: ``<output>/<recipe>/<lineage-hash>/`` holding one folder per table (see
``loupe.schemas.tables.TABLES``), ``_state/<stage>/`` for stages without a table,
``export/`` and ``manifest.json``. ``<output>`` is a local path or an object-store URI
(``s3://``, ``gs://``, ...): every read and write goes through :mod:`loupe.pipeline.storage`,
which publishes a shard atomically on both (rename on a filesystem, a marker object after the
shard on an object store); nothing here or in the stages knows which one holds the run.

Exactly-once protocol (why a killed run loses and duplicates nothing):
a stage's output for one batch is committed as at most two parquet shards, each published
atomically: first its drop rows (``drops/<shard>.parquet``, naming its partner), then its table
rows (``<table>/<shard>.parquet``) whose footer metadata lists every input uid the batch accounted
for. The table shard is the commit record: a uid is done for a stage iff some shard of that stage
covers it. A drops shard whose partner never landed is an orphan of a killed batch and is deleted
before the next run, so the batch is redone exactly once.

One writer: ``loupe run`` holds the run dir's writer lock for its whole life
(:meth:`RunDir.writer_lock`: an ``flock`` on ``_state/writer.lock``, or a lease object of that name
on an object store); a second writer is refused with the holder's pid, host and command. A lock left
by a dead process is taken over by the next run. Integrity of committed shards (footer metadata,
lineage, page checksums) is checked by :mod:`loupe.pipeline.integrity`.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path, PurePath
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from loupe.pipeline.storage import TMP_PREFIX, Storage, disk_error, open_storage
from loupe.schemas.tables import DROPS, TABLES

__all__ = ["RunDir", "TMP_PREFIX", "atomic_write_text", "disk_error"]

COVERED_KEY = b"loupe.covered"
STAGE_KEY = b"loupe.stage"
PARTNER_KEY = b"loupe.partner"
LINEAGE_KEY = b"loupe.lineage"
LOCK_FILE = "_state/writer.lock"
#: parquet page checksums (CRC32) are written with every shard and verified on every read, so a
#: garbled page is an error naming the shard, never silently different bytes
READ_OPTIONS = {"page_checksum_verification": True}


def unique_uids(col: pa.Array | pa.ChunkedArray) -> pa.Array:
    """The distinct values of a uid column as one ``large_string`` array (no 2 GB offset limit)."""
    if isinstance(col, pa.ChunkedArray) and col.num_chunks == 0:
        return pa.array([], pa.large_string())
    return pc.unique(col.cast(pa.large_string()))


def atomic_write_text(path: Path, text: str) -> None:
    """Replace the local file ``path`` with ``text`` atomically (temp name + rename)."""
    from loupe.pipeline.storage import LocalStorage

    LocalStorage(path.parent).write_text(path.name, text)


class RunDir:
    def __init__(self, path: str | Path | Storage, lineage: str | None = None):
        self.storage = open_storage(path)
        #: written into every shard's footer; shards of another lineage are foreign (integrity check)
        self.lineage = lineage

    # ------------------------------------------------------------------ where
    @property
    def is_local(self) -> bool:
        return self.storage.local

    @property
    def location(self) -> str:
        """The run dir as the user names it: a path or a URI."""
        return self.storage.location

    @property
    def path(self) -> Path:
        """The local folder of the run (a run on an object store has none: use the storage API)."""
        from loupe.pipeline.errors import LoupeError

        if not self.storage.local:
            raise LoupeError(f"{self.location}: this needs a local run dir; the run is on an object store")
        return self.storage.root  # type: ignore[attr-defined]

    @property
    def fs(self) -> pafs.FileSystem:
        """The ``pyarrow.fs`` filesystem that holds the run (shard paths are paths inside it)."""
        return self.storage.fs

    def rel(self, p: str | PurePath) -> str:
        """A shard path (as :meth:`shard_files` returns it) relative to the run dir."""
        return self.storage.rel(p)

    def __str__(self) -> str:
        return self.location

    # ------------------------------------------------------------------ one writer
    @property
    def lock_path(self) -> Path:
        return self.path / LOCK_FILE

    @contextmanager
    def writer_lock(self) -> Iterator[None]:
        """Hold the run dir's exclusive writer lock while the block runs.

        A second writer gets a one-line :class:`LoupeError` naming the holder. A lock whose holder
        died is taken over (see :meth:`loupe.pipeline.storage.ObjectStorage.writer_lock` for the
        object-store lease).
        """
        with self.storage.writer_lock(LOCK_FILE):
            yield

    # ------------------------------------------------------------------ layout
    @staticmethod
    def table_rel(table: str | None, stage: str | None = None) -> str:
        if table is None:
            return f"_state/{stage or 'unknown'}"
        return TABLES[table][0]

    def table_dir(self, table: str | None, stage: str | None = None) -> Path:
        return self.path / self.table_rel(table, stage)

    def shard_files(self, table: str | None, stage: str | None = None) -> list[PurePath]:
        """Committed shards of a table (of one stage), as paths inside :attr:`fs`."""
        files = self.storage.files(self.table_rel(table, stage), ".parquet")
        if stage is not None:
            files = [p for p in files if p.name.startswith(f"{stage}-")]
        return files

    def read_schema(self, f: str | PurePath) -> pa.Schema:
        return pq.read_schema(str(f), filesystem=self.fs)

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
        target = f"{self.table_rel(table, stage)}/{shard}.parquet"
        info = {"stage": stage, "lineage": self.lineage}
        if drops is not None and drops.num_rows:
            dmeta = {PARTNER_KEY: target.encode(), STAGE_KEY: stage.encode()}
            if self.lineage:
                dmeta[LINEAGE_KEY] = self.lineage.encode()
            drops = drops.cast(DROPS).replace_schema_metadata(dmeta)
            self.storage.write_parquet(f"{self.table_rel('drops')}/{shard}.parquet", drops, info)
        if rows is None:
            schema = TABLES[table][1] if table else pa.schema([("uid", pa.string())])
            rows = schema.empty_table()
        elif table is not None:
            rows = rows.select(TABLES[table][1].names).cast(TABLES[table][1])
        covered = sorted(set(covered))
        meta = {COVERED_KEY: json.dumps(covered).encode(), STAGE_KEY: stage.encode()}
        if self.lineage:
            meta[LINEAGE_KEY] = self.lineage.encode()
        self.storage.write_parquet(
            target, rows.replace_schema_metadata(meta), {**info, "covered": len(covered)}
        )
        return shard

    def write_table(self, table: str, rows: pa.Table, stage: str = "extra") -> None:
        """Write a whole extra table (e.g. clusters) as one shard, replacing the stage's earlier ones."""
        for old in self.shard_files(table, stage):
            self.storage.delete(self.rel(old))
        self.commit(stage, table, rows, None, [])

    def done_uids(self, stage: str, table: str | None) -> set[str]:
        done: set[str] = set()
        for f in self.shard_files(table, stage):
            meta = self.read_schema(f).metadata or {}
            done.update(json.loads(meta.get(COVERED_KEY, b"[]")))
        return done

    def shard_dirs(self) -> list[tuple[str | None, str]]:
        """``(table or None, relative folder)`` of every folder that may hold shards."""
        dirs: list[tuple[str | None, str]] = [(t, d) for t, (d, _) in TABLES.items()]
        return dirs + [(None, f"_state/{d}") for d in self.storage.subdirs("_state")]

    def cleanup(self) -> int:
        """Delete temp files, uncommitted shards and orphan drops shards of killed batches. Returns how many."""
        removed = self.storage.cleanup([d for _, d in self.shard_dirs()])
        for f in self.shard_files("drops"):
            partner = (self.read_schema(f).metadata or {}).get(PARTNER_KEY)
            if partner and not self.storage.committed(partner.decode()):
                self.storage.delete(self.rel(f))
                removed += 1
        return removed

    # ------------------------------------------------------------------ other files
    def exists(self, rel: str) -> bool:
        return self.storage.exists(rel)

    def read_text(self, rel: str) -> str:
        return self.storage.read_text(rel)

    def write_text(self, rel: str, text: str) -> None:
        """Replace the run dir's file ``rel`` atomically (manifest, export files, README)."""
        self.storage.write_text(rel, text)

    def write_bytes(self, rel: str, data: bytes) -> None:
        self.storage.write_bytes(rel, data)

    def write_parquet_file(self, rel: str, table: pa.Table) -> None:
        """A parquet file that is not a shard (export, stage input), replaced atomically."""
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink, write_page_checksum=True)
        self.storage.write_bytes(rel, sink.getvalue().to_pybytes())

    def delete(self, rel: str) -> None:
        self.storage.delete(rel)

    def delete_dir(self, rel: str) -> None:
        self.storage.delete_dir(rel)

    # ------------------------------------------------------------------ read
    def dataset(self, table: str) -> pads.Dataset | None:
        files = self.shard_files(table)
        if not files:
            return None
        fmt = pads.ParquetFileFormat(
            default_fragment_scan_options=pads.ParquetFragmentScanOptions(**READ_OPTIONS)
        )
        return pads.dataset([str(f) for f in files], format=fmt, schema=TABLES[table][1], filesystem=self.fs)

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

    # ------------------------------------------------------------------ uids as Arrow arrays
    # The same sets as the methods above, as unique ``large_string`` Arrow arrays in no particular
    # order: 72 B a uid (64 hex chars + an 8-byte offset) where a Python ``set[str]`` takes 147
    # (docs/benchmarks.md, "uid sets on the Ray driver"). The Ray driver uses these; set algebra is
    # ``pc.is_in`` (one hash table of the smaller side, built in C++).
    def sample_uid_array(self) -> pa.Array:
        # shard by shard: the dataset API keeps every footer it read, and a samples shard's footer
        # carries its covered list (twice: metadata and ARROW:schema): 774 -> 370 MB peak at 1 M uids
        chunks: list[pa.Array] = []
        for f in self.shard_files("samples"):
            shard = pq.ParquetFile(str(f), filesystem=self.fs, **READ_OPTIONS)
            chunks += shard.read(columns=["uid"])["uid"].cast(pa.large_string()).chunks
        return unique_uids(pa.chunked_array(chunks, pa.large_string()))

    def dropped_uid_array(self, samples: pa.Array | None = None) -> pa.Array:
        """:meth:`dropped_uids` as an array (``samples``: :meth:`sample_uid_array`, if at hand)."""
        drops = self.read_table("drops", ["uid", "stage"])
        ingest = pc.fill_null(pc.equal(drops["stage"], "ingest"), False)
        failed = unique_uids(drops["uid"].filter(ingest))
        samples = self.sample_uid_array() if samples is None else samples
        failed = failed.filter(pc.invert(pc.is_in(failed, value_set=samples)))
        others = drops["uid"].filter(pc.invert(ingest)).cast(pa.large_string())
        return unique_uids(pa.chunked_array([*others.chunks, failed], pa.large_string()))

    def live_uid_array(self) -> pa.Array:
        samples = self.sample_uid_array()
        dropped = self.dropped_uid_array(samples)
        return samples.filter(pc.invert(pc.is_in(samples, value_set=dropped)))

    def done_uid_array(self, stage: str, table: str | None) -> pa.Array:
        chunks = [
            pa.array(
                json.loads((self.read_schema(f).metadata or {}).get(COVERED_KEY, b"[]")), pa.large_string()
            )
            for f in self.shard_files(table, stage)
        ]  # one shard's covered list at a time as Python strings
        return unique_uids(pa.chunked_array(chunks, pa.large_string()))

    def todo_uids(
        self, stage: str, table: str | None, rerun_all: bool = False
    ) -> tuple[pa.Array, pa.Array, int]:
        """``(live, todo, skipped)`` of a stage as arrays: todo = live not done (every live uid for a
        ``rerun_all`` stage), skipped = how many live uids the stage already covers."""
        live = self.live_uid_array()
        is_done = pc.is_in(live, value_set=self.done_uid_array(stage, table))
        skipped = int(pc.sum(is_done.cast(pa.int64())).as_py() or 0)
        todo = live if rerun_all else live.filter(pc.invert(is_done))
        # hand the footers' and hash tables' freed pages back to the OS: mimalloc (Arrow's default
        # pool) keeps them, and they were most of the driver's RSS (docs/benchmarks.md)
        pa.default_memory_pool().release_unused()
        return live, todo, skipped

    # ------------------------------------------------------------------ manifest
    @property
    def manifest_path(self) -> Path:
        return self.path / "manifest.json"

    def has_manifest(self) -> bool:
        return self.storage.exists("manifest.json")

    def manifest(self) -> dict[str, Any]:
        try:
            return json.loads(self.storage.read_text("manifest.json"))
        except FileNotFoundError:
            return {}

    def update_manifest(self, **fields: Any) -> dict[str, Any]:
        m = self.manifest()
        m.update(fields)
        m["updated"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        self.storage.write_text("manifest.json", json.dumps(m, indent=2, sort_keys=True, default=str))
        return m

    def update_stage(self, stage: str, **fields: Any) -> None:
        m = self.manifest()
        stages = m.setdefault("stages", {})
        stages.setdefault(stage, {}).update(fields)
        self.update_manifest(stages=stages)
