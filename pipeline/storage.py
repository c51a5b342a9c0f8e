"""Where a run dir lives: a local folder or an object store, behind one interface.

:class:`~loupe.pipeline.rundir.RunDir` reads and writes only through a :class:`Storage`, so stages
and executors never know which backend holds the run. Two backends, one visibility rule — *a reader
sees a shard only once it is complete*:

* :class:`LocalStorage` (a path, or ``file://``): a file is written to a temp name (``.tmp-*``) and
  renamed, which POSIX makes atomic; the run's single writer holds an ``flock``.
* :class:`ObjectStorage` (``s3://``, ``gs://``, ``hdfs://``, ``memory://``, ... through ``pyarrow.fs``,
  fsspec for schemes pyarrow lacks): object stores have no rename, so a shard is written straight to
  its final key and then **committed by a marker object** ``<key>.commit`` (size, sha256, stage,
  lineage), as DataTrove commits a task with a completion file (``src/datatrove/executor/base.py``,
  ``mark_rank_as_completed``: an empty ``completions/<rank>`` written after the task's output; here
  one marker per shard, so resume stays keyed to shards, not ranks). Listings return only shards whose
  marker exists; a shard without one (a worker killed mid-upload, or between the two PUTs) is ignored
  and deleted by :meth:`Storage.cleanup` when the next run opens. Small mutable files (manifest,
  lease, export files) are one PUT each, which S3 and GCS publish atomically (a killed multipart
  upload never becomes visible); a write that raises deletes its partial object. The single-writer
  lock is a lease object with holder and expiry (:meth:`ObjectStorage.writer_lock`; on S3 taken with
  conditional writes, :mod:`loupe.pipeline.s3`), and the first request to an S3 endpoint fails fast.

Workers reach the store themselves (the filesystem is rebuilt from the URI after unpickling), so a
multi-node Ray run needs no shared POSIX mount and nothing is staged on the driver. S3-compatible
servers: set ``AWS_ENDPOINT_URL`` (pyarrow reads it) or put ``?endpoint_override=host:port&scheme=http``
on the URI.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import re
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path, PurePath, PurePosixPath
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from loupe.pipeline.errors import LoupeError
from loupe.pipeline.s3 import ConditionalLease, first_line, probe

SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
TMP_PREFIX = ".tmp-"
#: suffix of the marker object that commits a shard on an object store
MARKER = ".commit"
#: seconds an object-store writer lease lasts without renewal (renewed every third of it)
LEASE_SECONDS = float(os.environ.get("LOUPE_LEASE_SECONDS", "60"))


def is_uri(where: str) -> bool:
    """True for ``scheme://...`` (``file://`` included); a plain or relative path is not a URI."""
    return bool(SCHEME.match(str(where)))


def resolve_filesystem(uri: str, field: str = "output") -> tuple[pafs.FileSystem, str]:
    """``(filesystem, path inside it)`` for ``uri``: ``pyarrow.fs`` first, fsspec for other schemes."""
    scheme = SCHEME.match(uri).group(1).lower()  # type: ignore[union-attr]
    try:
        fs, path = pafs.FileSystem.from_uri(uri)
        return fs, path.rstrip("/")
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
        arrow_error = first_line(e)  # pyarrow does not know the scheme: try fsspec
    except (OSError, pa.ArrowException) as e:  # a known scheme whose client failed (libhdfs, credentials)
        raise LoupeError(f"{field}: {uri!r}: pyarrow could not open it: {first_line(e)}") from None
    try:
        import fsspec
    except ImportError:
        raise LoupeError(
            f"{field}: {uri!r}: pyarrow does not know {scheme}:// ({arrow_error}) and fsspec is not "
            "installed; pip install 'loupe[remote]' (plus the scheme's fsspec package, e.g. gcsfs)"
        ) from None
    try:
        fs = fsspec.filesystem(scheme)
    except (ValueError, ImportError) as e:
        raise LoupeError(
            f"{field}: {uri!r}: neither pyarrow nor fsspec can open {scheme}:// ({first_line(e)}); "
            "give a local path or a URI such as s3://bucket/runs, gs://bucket/runs, file:///abs/path"
        ) from None
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), fs._strip_protocol(uri).rstrip("/")


def disk_error(e: OSError, path: Any) -> Exception:
    """A full or read-only disk as a one-line :class:`LoupeError` naming the path (others unchanged)."""
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return LoupeError(f"{path}: no space left on the device; free space and rerun to resume")
    if e.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return LoupeError(f"{path}: cannot write ({os.strerror(e.errno)}); fix the permissions and rerun")
    return e


def holder_info() -> dict[str, Any]:
    cmd = " ".join(os.path.basename(a) if i == 0 else a for i, a in enumerate(sys.argv))[:200]
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": time.strftime("%H:%M:%S"),
        "cmd": cmd,
    }


def describe_holder(h: dict[str, Any]) -> str:
    return f"pid {h.get('pid')} on {h.get('host')}, started {h.get('started')}: {h.get('cmd')}"


def open_storage(where: str | Path | Storage, field: str = "output") -> Storage:
    """The storage of a run dir given as a local path, a ``file://`` URI or an object-store URI."""
    if isinstance(where, Storage):
        return where
    s = str(where)
    if s.lower().startswith("file://"):
        return LocalStorage(Path(s[len("file://") :]))
    if is_uri(s):
        return ObjectStorage(s, field)
    return LocalStorage(Path(s))


class Storage:
    """A run dir's files, addressed by paths relative to its root (``samples/x.parquet``)."""

    local: bool
    #: the root as the user names it (a path or a URI)
    location: str

    # --- addressing
    @property
    def fs(self) -> pafs.FileSystem:
        raise NotImplementedError

    def key(self, rel: str) -> str:
        """``rel`` as a path inside :attr:`fs`."""
        raise NotImplementedError

    def rel(self, p: str | PurePath) -> str:
        """The relative path of a path inside :attr:`fs` (the inverse of :meth:`key`)."""
        return PurePosixPath(str(p)).relative_to(self.key("")).as_posix()

    def child(self, rel: str) -> Storage:
        raise NotImplementedError

    # --- reading
    def info(self, rel: str) -> pafs.FileInfo:
        return self.fs.get_file_info(self.key(rel))

    def exists(self, rel: str) -> bool:
        return self.info(rel).type == pafs.FileType.File

    def read_bytes(self, rel: str) -> bytes:
        with self.fs.open_input_stream(self.key(rel)) as f:
            return f.read()

    def read_text(self, rel: str) -> str:
        return self.read_bytes(rel).decode("utf-8")

    def _listing(self, rel_dir: str) -> list[pafs.FileInfo]:
        sel = pafs.FileSelector(self.key(rel_dir), recursive=False, allow_not_found=True)
        return self.fs.get_file_info(sel)

    def subdirs(self, rel_dir: str) -> list[str]:
        return sorted(i.base_name for i in self._listing(rel_dir) if i.type == pafs.FileType.Directory)

    def empty(self, rel_dir: str) -> bool:
        """Whether a folder holds nothing (or does not exist)."""
        return not self._listing(rel_dir)

    def files(self, rel_dir: str, suffix: str = "") -> list[PurePath]:
        """Committed shards of a folder ending in ``suffix``, sorted (paths inside :attr:`fs`)."""
        raise NotImplementedError

    def stats(self, rel_dir: str) -> dict[str, pafs.FileInfo]:
        """``{name: FileInfo}`` of the plain files of a folder (no temp files, no commit markers),
        from one listing (on an object store one LIST per 1 000 keys, not one HEAD per file)."""
        return {
            i.base_name: i
            for i in self._listing(rel_dir)
            if i.type == pafs.FileType.File
            and not i.base_name.startswith(TMP_PREFIX)
            and not i.base_name.endswith(MARKER)
        }

    def sizes(self, rel_dir: str) -> dict[str, int]:
        """``{name: size}`` of the plain files of a folder (no temp files, no commit markers)."""
        return {name: i.size for name, i in self.stats(rel_dir).items()}

    def committed(self, rel: str) -> bool:
        """Whether the shard ``rel`` is published (on an object store: its marker exists)."""
        return self.exists(rel)

    # --- writing
    def write_bytes(self, rel: str, data: bytes) -> None:
        """Replace ``rel`` with ``data`` atomically (a reader sees the old or the new bytes)."""
        with self.open_output(rel) as out:
            out.write(data)

    def write_text(self, rel: str, text: str) -> None:
        self.write_bytes(rel, text.encode("utf-8"))

    @contextmanager
    def open_output(self, rel: str) -> Iterator[Any]:
        raise NotImplementedError
        yield

    def write_parquet(self, rel: str, table: pa.Table, meta: dict[str, Any] | None = None) -> None:
        """Write a shard, visible to :meth:`files` only once complete (``meta`` goes in its marker)."""
        raise NotImplementedError

    def delete(self, rel: str) -> None:
        raise NotImplementedError

    def delete_dir(self, rel_dir: str) -> None:
        """Delete a folder and everything in it (no error when it does not exist)."""
        try:
            self.fs.delete_dir(self.key(rel_dir))
        except FileNotFoundError:
            pass

    def move(self, src: str, dst: str) -> None:
        raise NotImplementedError

    def cleanup(self, shard_dirs: list[str]) -> int:
        """Delete what killed writers left in ``shard_dirs`` (uncommitted shards). Returns how many."""
        raise NotImplementedError

    @contextmanager
    def writer_lock(self, rel: str) -> Iterator[None]:
        raise NotImplementedError
        yield


class LocalStorage(Storage):
    local = True

    def __init__(self, root: Path):
        self.root = Path(root)
        self.location = str(self.root)
        self._fs = pafs.LocalFileSystem()

    @property
    def fs(self) -> pafs.FileSystem:
        return self._fs

    def __getstate__(self) -> dict:
        return {"root": self.root, "location": self.location}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._fs = pafs.LocalFileSystem()

    def key(self, rel: str) -> str:
        return str(self.root / rel) if rel else str(self.root)

    def rel(self, p: str | PurePath) -> str:
        return Path(p).relative_to(self.root).as_posix()

    def child(self, rel: str) -> Storage:
        return LocalStorage(self.root / rel)

    def exists(self, rel: str) -> bool:
        return (self.root / rel).is_file()

    def read_bytes(self, rel: str) -> bytes:
        return (self.root / rel).read_bytes()

    def subdirs(self, rel_dir: str) -> list[str]:
        d = self.root / rel_dir
        return sorted(p.name for p in d.iterdir() if p.is_dir()) if d.is_dir() else []

    def files(self, rel_dir: str, suffix: str = "") -> list[PurePath]:
        d = self.root / rel_dir
        if not d.is_dir():
            return []
        return sorted(
            p
            for p in d.iterdir()
            if p.name.endswith(suffix) and not p.name.startswith(TMP_PREFIX) and p.is_file()
        )

    def _tmp(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        return path.with_name(f"{TMP_PREFIX}{path.name}.{uuid.uuid4().hex[:8]}")

    @contextmanager
    def open_output(self, rel: str) -> Iterator[Any]:
        path = self.root / rel
        try:
            tmp = self._tmp(path)
            with open(tmp, "wb") as out:
                try:
                    yield out
                except BaseException:
                    out.close()
                    tmp.unlink(missing_ok=True)
                    raise
            os.replace(tmp, path)
        except OSError as e:
            raise disk_error(e, path) from None

    def write_parquet(self, rel: str, table: pa.Table, meta: dict[str, Any] | None = None) -> None:
        path = self.root / rel
        tmp = self._tmp(path)
        try:
            pq.write_table(table, tmp, write_page_checksum=True)
            os.replace(tmp, path)
        except OSError as e:
            tmp.unlink(missing_ok=True)
            raise disk_error(e, path) from None

    def delete(self, rel: str) -> None:
        (self.root / rel).unlink(missing_ok=True)

    def delete_dir(self, rel_dir: str) -> None:
        import shutil

        shutil.rmtree(self.root / rel_dir, ignore_errors=True)

    def move(self, src: str, dst: str) -> None:
        (self.root / dst).parent.mkdir(parents=True, exist_ok=True)
        os.replace(self.root / src, self.root / dst)

    def cleanup(self, shard_dirs: list[str]) -> int:
        removed = 0
        if self.root.exists():
            for tmp in self.root.rglob(f"{TMP_PREFIX}*"):
                tmp.unlink(missing_ok=True)
                removed += 1
        return removed

    @contextmanager
    def writer_lock(self, rel: str) -> Iterator[None]:
        """An exclusive ``flock`` on ``rel``: the kernel drops it when its holder dies (even by kill -9),
        so a lock file left by a dead process is simply taken over."""
        path = self.root / rel
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise disk_error(e, path) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "unknown process"
            os.close(fd)
            raise LoupeError(
                f"run dir {self.root} is being written by another run ({holder}); wait for it to finish "
                f"or stop it (lock {path})"
            ) from None
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, describe_holder(holder_info()).encode(), 0)
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)


class ObjectStorage(Storage):
    local = False

    def __init__(self, uri: str, field: str = "output"):
        base, _, query = uri.partition("?")
        self.location = base.rstrip("/")
        self.query = query  # e.g. endpoint_override=127.0.0.1:9000&scheme=http (pyarrow's S3 options)
        self.field = field
        self._fs, self.base = resolve_filesystem(self._uri(self.location), field)  # fails early
        probe(self._fs, self.base, self.location, field)  # and fast: an unreachable S3 endpoint

    def _uri(self, location: str) -> str:
        return f"{location}?{self.query}" if self.query else location

    # the filesystem is rebuilt where the storage is unpickled (a Ray worker): fsspec handles may not pickle
    def __getstate__(self) -> dict:
        return {**self.__dict__, "_fs": None}

    @property
    def fs(self) -> pafs.FileSystem:
        if self._fs is None:
            self._fs, self.base = resolve_filesystem(self._uri(self.location), self.field)
        return self._fs

    def key(self, rel: str) -> str:
        return f"{self.base}/{rel}" if rel else self.base

    def child(self, rel: str) -> Storage:
        return ObjectStorage(self._uri(f"{self.location}/{rel}"), self.field)

    def committed(self, rel: str) -> bool:
        return self.exists(rel + MARKER) and self.exists(rel)

    def files(self, rel_dir: str, suffix: str = "") -> list[PurePath]:
        listed = [i for i in self._listing(rel_dir) if i.type == pafs.FileType.File]
        names = {i.base_name for i in listed}
        return sorted(
            PurePosixPath(i.path)
            for i in listed
            if i.base_name.endswith(suffix)
            and not i.base_name.endswith(MARKER)
            and i.base_name + MARKER in names
        )

    @contextmanager
    def open_output(self, rel: str) -> Iterator[Any]:
        key = self.key(rel)
        try:
            with self.fs.open_output_stream(key) as out:
                try:
                    yield out
                except BaseException:
                    out.close()  # pyarrow publishes what was written on close: take it back
                    self.fs.delete_file(key)
                    raise
        except (OSError, pa.ArrowException) as e:
            raise LoupeError(f"{self.location}/{rel}: cannot write: {first_line(e)}") from None

    def write_parquet(self, rel: str, table: pa.Table, meta: dict[str, Any] | None = None) -> None:
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink, write_page_checksum=True)
        data = sink.getvalue().to_pybytes()
        self.write_bytes(rel, data)  # the shard at its final key, invisible to readers until...
        marker = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest(), "rows": table.num_rows}
        self.write_text(rel + MARKER, json.dumps({**marker, **(meta or {})}))  # ...its marker lands

    def delete(self, rel: str) -> None:
        for k in (self.key(rel + MARKER), self.key(rel)):  # uncommit first, then the data
            try:
                self.fs.delete_file(k)
            except FileNotFoundError:
                pass

    def move(self, src: str, dst: str) -> None:
        """Copy then delete (no rename on an object store); ``src`` is uncommitted first."""
        try:
            self.fs.delete_file(self.key(src + MARKER))
        except FileNotFoundError:
            pass
        self.fs.copy_file(self.key(src), self.key(dst))
        self.fs.delete_file(self.key(src))

    def cleanup(self, shard_dirs: list[str]) -> int:
        removed = 0
        for d in shard_dirs:
            listed = {i.base_name: i for i in self._listing(d) if i.type == pafs.FileType.File}
            for name, i in listed.items():
                partner = name[: -len(MARKER)] if name.endswith(MARKER) else name + MARKER
                if partner not in listed:  # a shard never committed, or a marker whose shard is gone
                    self.fs.delete_file(i.path)
                    removed += 1
        return removed

    # ------------------------------------------------------------------ the writer lease
    def _read_lease(self, rel: str) -> dict[str, Any] | None:
        try:
            return json.loads(self.read_text(rel))
        except (FileNotFoundError, ValueError):
            return None

    @staticmethod
    def _stale(lease: dict[str, Any]) -> bool:
        if lease.get("expires", 0) < time.time():
            return True
        if lease.get("host") == socket.gethostname():  # same machine: a dead pid holds nothing
            try:
                os.kill(int(lease["pid"]), 0)
            except (ProcessLookupError, ValueError, KeyError):
                return True
            except PermissionError:
                return False
        return False

    def _busy(self, rel: str, current: dict[str, Any]) -> LoupeError:
        return LoupeError(
            f"run dir {self.location} is being written by another run ({describe_holder(current)}); "
            f"wait for it to finish or stop it (lease {self.location}/{rel}, expires in "
            f"{max(0, int(current.get('expires', 0) - time.time()))} s)"
        )

    def _raced(self, won: dict[str, Any] | None) -> LoupeError:
        return LoupeError(
            f"run dir {self.location}: another run took the writer lease at the same moment "
            f"({describe_holder(won or {})}); retry once it has finished"
        )

    @contextmanager
    def writer_lock(self, rel: str) -> Iterator[None]:
        """A lease object ``rel``: holder (pid, host, command), a token and an expiry renewed every
        ``LEASE_SECONDS / 3`` by a thread. A live lease refuses a second writer; one whose holder died
        is taken over once it expires (at once when the holder was on this machine).

        On ``s3://`` with boto3 installed the lease is created with ``If-None-Match: *`` and renewed,
        taken over and deleted with ``If-Match: <etag>`` (:class:`~loupe.pipeline.s3.ConditionalLease`):
        of N drivers starting together exactly one wins, and of N taking over a stale lease exactly one.
        Elsewhere (gs://, hdfs://, fsspec stores, no boto3, ``LOUPE_S3_CONDITIONAL_WRITES=0``) there
        is no compare-and-swap through ``pyarrow.fs``: the lease is written, read back after 0.2 s and
        the loser stops, which narrows the window of two writers starting together but does not close
        it. Executors also fence their workers (``_state/ray_owner``)."""
        token = uuid.uuid4().hex
        lease = {**holder_info(), "token": token}

        def body() -> bytes:
            return json.dumps({**lease, "expires": time.time() + LEASE_SECONDS}).encode()

        cas = ConditionalLease.for_key(self.fs, self.key(rel), self.location)
        if cas is not None:
            renew, release = self._lease_conditionally(cas, rel, body, token)
        else:
            renew, release = self._lease_by_read_back(rel, body, token)
        stop = threading.Event()

        def heartbeat() -> None:
            while not stop.wait(LEASE_SECONDS / 3):
                try:
                    renew()
                except Exception:  # noqa: BLE001  (a missed renewal is retried; the lease lasts 3 periods)
                    pass

        t = threading.Thread(target=heartbeat, name="loupe-lease", daemon=True)
        t.start()
        try:
            yield
        finally:
            stop.set()
            t.join()
            release()

    def _lease_conditionally(
        self, cas: ConditionalLease, rel: str, body: Callable[[], bytes], token: str
    ) -> tuple[Callable[[], None], Callable[[], None]]:
        """Take the lease with conditional writes; ``(renew, release)``."""
        etag = None
        for _ in range(5):  # a lease released between our create and our read: try again
            etag = cas.create(body())
            if etag:
                break
            found = cas.read()
            if found is None:
                continue
            current, theirs = found
            if not self._stale(current):
                raise self._busy(rel, current)
            etag = cas.replace(body(), theirs)  # take over the stale lease: only if nobody else did
            if etag:
                break
            raise self._raced((cas.read() or ({}, ""))[0])
        if not etag:
            raise self._raced(None)
        state = {"etag": etag, "lost": False}

        def renew() -> None:
            if state["lost"]:
                return
            new = cas.replace(body(), state["etag"])
            if new is None:  # our lease was taken over (we looked dead for a whole lease period)
                state["lost"] = True
                print(
                    f"loupe: warning: run dir {self.location}: another run took over the writer lease "
                    f"({describe_holder((cas.read() or ({}, ''))[0])})",
                    file=sys.stderr,
                )
            else:
                state["etag"] = new

        def release() -> None:
            if not state["lost"]:
                cas.delete(state["etag"], token)

        return renew, release

    def _lease_by_read_back(
        self, rel: str, body: Callable[[], bytes], token: str
    ) -> tuple[Callable[[], None], Callable[[], None]]:
        """Take the lease by writing it and reading it back after a pause; ``(renew, release)``."""
        current = self._read_lease(rel)
        if current is not None and not self._stale(current):
            raise self._busy(rel, current)

        def renew() -> None:
            self.write_bytes(rel, body())

        renew()
        time.sleep(0.2)
        won = self._read_lease(rel)
        if won is None or won.get("token") != token:
            raise self._raced(won)

        def release() -> None:
            if (self._read_lease(rel) or {}).get("token") == token:
                self.delete(rel)

        return renew, release
