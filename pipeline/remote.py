"""Run outputs on a URI (``s3://``, ``gs://``, ``hdfs://``, ``memory://``, ``file://``, ...) by staging.

:class:`~loupe.pipeline.rundir.RunDir` commits by atomic rename, which object stores do not offer,
so a run whose ``output`` is a URI executes in a local **staging** run dir
(``$LOUPE_STAGING_DIR/<recipe>/<lineage>/``, default ``~/.cache/loupe/staging``) and is mirrored to
``<uri>/<recipe>/<lineage>/``:

* before the run, the remote run dir's files are copied down (resume after a job killed on another
  machine); each download goes to a temp name and is renamed, so a killed download never leaves a
  truncated shard that would look committed;
* after every stage, and at the end (also, best effort, on failure or Ctrl-C), new or changed
  files are uploaded and files the run deleted are deleted remotely. Shards never change once
  renamed, so a name+size check finds what is new; ``manifest.json`` and ``export/`` always
  re-upload.

``.loupe-sync.json`` in the staging dir records what the remote held at the last sync. It tells the
two kinds of local-only files apart: files the remote held and lost (deleted there: removed here too)
and local progress not yet uploaded (kept). When another machine committed shards of a stage that
also has un-uploaded local shards here, the remote wins and the local ones are deleted (their drops
shards become orphans that ``RunDir.cleanup`` removes), so no uid is committed twice.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import uuid
from pathlib import Path, PurePosixPath

import pyarrow as pa
import pyarrow.fs as pafs

from loupe.pipeline.errors import LoupeError
from loupe.pipeline.rundir import TMP_PREFIX, atomic_write_text

SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
SYNC_RECORD = ".loupe-sync.json"
#: Files that change in place: uploaded on every sync, whatever their size.
MUTABLE = ("manifest.json", "export/")
#: Files that belong to one machine only (the Ray driver's fencing token).
LOCAL_ONLY = ("_state/ray_owner", "_state/writer.lock", "_state/verified.json")


def is_uri(where: str) -> bool:
    """True for ``scheme://...`` (``file://`` included); a plain or relative path is not a URI."""
    return bool(SCHEME.match(where))


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:300]


def resolve_filesystem(uri: str, field: str = "output") -> tuple[pafs.FileSystem, str]:
    """``(filesystem, path inside it)`` for ``uri``: ``pyarrow.fs`` first, fsspec for other schemes."""
    scheme = SCHEME.match(uri).group(1).lower()  # type: ignore[union-attr]
    try:
        fs, path = pafs.FileSystem.from_uri(uri)
        return fs, path.rstrip("/")
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
        arrow_error = _first_line(e)  # pyarrow does not know the scheme: try fsspec
    except (OSError, pa.ArrowException) as e:  # a known scheme whose client failed (libhdfs, credentials)
        raise LoupeError(f"{field}: {uri!r}: pyarrow could not open it: {_first_line(e)}") from None
    try:
        import fsspec
    except ImportError:
        raise LoupeError(
            f"{field}: {uri!r}: pyarrow does not know {scheme}:// ({arrow_error}) and fsspec is not "
            "installed; pip install 'loupe[remote]' (plus the scheme's fsspec package, e.g. s3fs, gcsfs)"
        ) from None
    try:
        fs = fsspec.filesystem(scheme)
    except (ValueError, ImportError) as e:
        raise LoupeError(
            f"{field}: {uri!r}: neither pyarrow nor fsspec can open {scheme}:// ({_first_line(e)}); "
            "give a local path or a URI such as s3://bucket/runs, gs://bucket/runs, file:///abs/path"
        ) from None
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), fs._strip_protocol(uri).rstrip("/")


def staging_root() -> Path:
    return Path(os.environ.get("LOUPE_STAGING_DIR") or Path.home() / ".cache" / "loupe" / "staging")


class RemoteRun:
    """The remote copy ``<uri>/<recipe>/<lineage>`` of a local staging run dir."""

    def __init__(self, uri: str, recipe: str, lineage: str, field: str = "output"):
        self.uri = f"{uri.rstrip('/')}/{recipe}/{lineage}"
        self.field = field
        self._fs, self.base = resolve_filesystem(self.uri, field)  # fails early on a bad URI
        # one staging dir per remote: two URIs of one recipe must never share (and mix) shards
        tag = hashlib.sha1(self.uri.encode()).hexdigest()[:8]
        self.staging = staging_root() / recipe / f"{lineage}-{tag}"

    # pickled into Ray workers with the plan; they never sync, and an fsspec handle may not pickle
    def __getstate__(self) -> dict:
        return {**self.__dict__, "_fs": None}

    @property
    def fs(self) -> pafs.FileSystem:
        if self._fs is None:
            self._fs, self.base = resolve_filesystem(self.uri, self.field)
        return self._fs

    # ------------------------------------------------------------------ listings
    def _remote_files(self) -> dict[str, int]:
        sel = pafs.FileSelector(self.base, recursive=True, allow_not_found=True)
        base = PurePosixPath("/" + self.base.lstrip("/"))
        out: dict[str, int] = {}
        for info in self.fs.get_file_info(sel):
            if info.type == pafs.FileType.File:
                rel = str(PurePosixPath("/" + info.path.lstrip("/")).relative_to(base))
                if self._synced(rel):
                    out[rel] = info.size
        return out

    def _local_files(self, root: Path) -> dict[str, int]:
        if not root.is_dir():
            return {}
        out = {}
        for p in root.rglob("*"):
            rel = p.relative_to(root).as_posix()
            if p.is_file() and self._synced(rel):
                out[rel] = p.stat().st_size
        return out

    @staticmethod
    def _synced(rel: str) -> bool:
        name = rel.rsplit("/", 1)[-1]
        return not (name.startswith(TMP_PREFIX) or rel == SYNC_RECORD or rel in LOCAL_ONLY)

    def _record(self, root: Path) -> dict[str, int]:
        p = root / SYNC_RECORD
        return json.loads(p.read_text()) if p.exists() else {}

    def _save_record(self, root: Path, files: dict[str, int]) -> None:
        atomic_write_text(root / SYNC_RECORD, json.dumps(files, sort_keys=True))

    # ------------------------------------------------------------------ copies
    def _download(self, rel: str, root: Path) -> None:
        dst = root / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = dst.with_name(f"{TMP_PREFIX}{dst.name}.{uuid.uuid4().hex[:8]}")
        with self.fs.open_input_stream(f"{self.base}/{rel}") as src, open(tmp, "wb") as out:
            shutil.copyfileobj(src, out, 1 << 20)
        os.replace(tmp, dst)

    def _upload(self, rel: str, root: Path) -> None:
        target = f"{self.base}/{rel}"
        parent, name = target.rsplit("/", 1)
        self.fs.create_dir(parent, recursive=True)
        # object stores publish a put atomically; a filesystem needs a temp name and a rename
        atomic = self.fs.type_name != "local"
        dst = target if atomic else f"{parent}/{TMP_PREFIX}{name}.{uuid.uuid4().hex[:8]}"
        with open(root / rel, "rb") as src, self.fs.open_output_stream(dst) as out:
            shutil.copyfileobj(src, out, 1 << 20)
        if not atomic:
            self.fs.move(dst, target)

    # ------------------------------------------------------------------ sync
    def download(self, root: Path) -> int:
        """Bring the staging dir ``root`` up to the remote run dir before a run. Returns files copied."""
        try:
            remote = self._remote_files()
        except (OSError, pa.ArrowException) as e:
            raise LoupeError(f"{self.field}: cannot list {self.uri}: {_first_line(e)}") from None
        local, record = self._local_files(root), self._record(root)
        foreign_stages: set[str] = set()
        copied = 0
        for rel, size in remote.items():
            mine = local.get(rel)
            if mine == size:
                continue
            if mine is None and rel in record:
                continue  # deleted here after the last sync (a replaced table): the upload deletes it
            if mine is not None and record.get(rel) != mine:
                continue  # changed here since the last sync (manifest, export): local is newer
            self._download(rel, root)
            copied += 1
            if mine is None:
                foreign_stages.add(_stage_of(rel))
        for rel in set(local) - set(remote):
            # gone from the remote since the last sync, or another machine's shards of this stage won
            if rel in record or _stage_of(rel) in foreign_stages:
                (root / rel).unlink()
        self._save_record(root, remote)
        return copied

    def upload(self, root: Path) -> int:
        """Mirror the staging dir ``root`` to the remote run dir. Returns files copied."""
        local, remote = self._local_files(root), self._remote_files()
        copied = 0
        for rel, size in sorted(local.items(), key=lambda kv: kv[0] == "manifest.json"):  # manifest last
            if remote.get(rel) != size or rel.startswith(MUTABLE):
                self._upload(rel, root)
                copied += 1
        for rel in set(remote) - set(local):
            self.fs.delete_file(f"{self.base}/{rel}")
        self._save_record(root, local)
        return copied


def _stage_of(rel: str) -> str:
    """The stage that wrote a shard (``<stage>-<time>-<hex>.parquet``); other files map to themselves."""
    name = rel.rsplit("/", 1)[-1]
    parts = name.rsplit("-", 2)
    return parts[0] if name.endswith(".parquet") and len(parts) == 3 else rel
