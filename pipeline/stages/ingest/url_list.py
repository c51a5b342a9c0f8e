"""LAION-style URL source: a URL + caption table downloaded with img2dataset.

Flow for one run (``config`` is a :class:`loupe.schemas.recipe.UrlListSource`):

1. read the URL table (parquet/csv/tsv/jsonl/txt, one file or a folder of them); each row's uid is
   ``url_uid(source, url)``; a URL listed twice is one sample;
2. choose the URLs to fetch: those not ingested yet, plus (``retry_failed``) those whose earlier
   download failed (an ingest ``drops/`` row and no sample) -- the re-queue of the failed only;
3. SSRF guard (unless ``allow_private_urls``): URLs whose host resolves to a non-public address
   become ``ssrf_refused`` drops and are never fetched (:mod:`loupe.pipeline.stages.ingest.ssrf`);
4. run the real ``img2dataset.download`` (``output_format: parquet``) in a child process
   (:mod:`loupe.pipeline.stages.ingest.img2dataset_worker`) into ``_state/ingest/url_list/<source>/``
   of the run dir, and read each output shard as soon as its ``_stats.json`` says it is complete:
   ``status == success`` rows are decoded (a truncated or non-image body becomes a
   ``decode_error`` drop) and become samples; every other row becomes a drop whose ``detail`` is
   img2dataset's ``error_message``. A URL img2dataset never reported is a ``missing_output`` drop.
   Under ``--executor ray`` the child joins the run's Ray cluster and img2dataset distributes its
   shards as Ray tasks over the nodes (``distributor="ray"``); the output folder is in the run dir,
   which every node sees.

A URL that fails again on a retry keeps its first drop row (one row per failed URL); a URL that
succeeds on a retry gets a sample, which supersedes its drop (``RunDir.dropped_uids``).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from loupe.pipeline.errors import LoupeError, ModelUnavailable, RecipeError
from loupe.pipeline.images import DecodeError, decode
from loupe.pipeline.stage import Source, StageOutput
from loupe.pipeline.stages.ingest import ssrf
from loupe.pipeline.stages.ingest.img2dataset_worker import GUARD_ENV, PARENT_ENV, RAY_ENV
from loupe.schemas.tables import SAMPLES, drops_table
from loupe.schemas.uid import sha256_hex, url_uid

BATCH = 256
#: URLs per img2dataset shard: a shard is read (and its scratch files deleted) once complete
SHARD_SIZE = 1000
#: failures that a retry cannot fix (the same URL is refused again without a fetch)
FINAL_REASONS = frozenset({"ssrf_refused", "invalid_url", "duplicate_url"})
#: columns img2dataset writes itself; a saved extra column may not reuse these names
RESERVED = frozenset(
    {
        "uid",
        "url",
        "caption",
        "key",
        "status",
        "error_message",
        "width",
        "height",
        "original_width",
        "original_height",
        "sha256",
        "exif",
        "jpg",
        "txt",
    }
)
SUFFIXES = {
    "parquet": (".parquet",),
    "csv": (".csv",),
    "tsv": (".tsv",),
    "json": (".json", ".jsonl"),
    "txt": (".txt",),
}


class DownloadError(LoupeError):
    """img2dataset itself failed (not a URL): the batches read so far are kept, the rest is redone."""


def failure_reason(status: str | None, message: str | None) -> str:
    """A short machine-friendly reason for one img2dataset failure (the message goes to ``detail``)."""
    msg = message or ""
    low = msg.lower()
    if ssrf.REFUSED in msg:
        return ssrf.REFUSED
    if msg.startswith("dns_error") or "<urlopen error dns_error" in msg:
        return "dns_error"
    if "infinite loop" in low or "redirect" in low:
        return "redirect_error"
    m = re.search(r"HTTP Error (\d{3})", msg)
    if m:
        return f"http_{m.group(1)}"
    if "timed out" in low or "timeout" in low:
        return "timeout"
    if "connection refused" in low:
        return "connection_refused"
    if status == "failed_to_resize":
        if "too small" in low:
            return "image_too_small"
        return "decode_error" if "decod" in low else "resize_error"
    return "download_error"


class UrlList(Source):
    """Downloads a URL table with img2dataset; see the module docstring."""

    # ------------------------------------------------------------------ the URL table
    def files(self) -> list[Path]:
        cfg = self.config
        root = self.ctx.resolve(cfg.path)
        if root.is_file():
            return [root]
        if root.is_dir():
            found = sorted(
                p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in SUFFIXES[cfg.input_format]
            )
            if found:
                return found
            raise RecipeError(
                f"source {self.name!r}: path {cfg.path!r} holds no {'/'.join(SUFFIXES[cfg.input_format])} "
                f"file for input_format {cfg.input_format!r} (resolved to {root})"
            )
        raise RecipeError(f"source {self.name!r}: path {cfg.path!r} does not exist (resolved to {root})")

    def _read_file(self, path: Path) -> pa.Table:
        fmt = self.config.input_format
        try:
            if fmt == "parquet":
                return pq.read_table(path)
            if fmt in ("csv", "tsv"):
                import pyarrow.csv as pacsv

                return pacsv.read_csv(
                    path, parse_options=pacsv.ParseOptions(delimiter="\t" if fmt == "tsv" else ",")
                )
            if fmt == "json":
                import pyarrow.json as pajson

                return pajson.read_json(path)
            lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines()]
            return pa.table({self.config.url_col: [ln for ln in lines if ln]})
        except (pa.ArrowInvalid, OSError) as e:
            raise RecipeError(
                f"source {self.name!r}: {path} is not a readable {fmt} URL table: {e}"
            ) from None

    def url_table(self) -> pa.Table:
        """Columns ``url``, ``caption`` (maybe null) and the saved extras, one row per listed URL."""
        cfg = self.config
        extras = list(cfg.save_additional_columns)
        clash = sorted(RESERVED.intersection(extras))
        if clash:
            raise RecipeError(
                f"source {self.name!r}: save_additional_columns {clash} clash with img2dataset's own "
                f"columns; rename them (reserved: {', '.join(sorted(RESERVED))})"
            )
        parts = []
        for f in self.files():
            t = self._read_file(f)
            wanted = [cfg.url_col] + ([cfg.caption_col] if cfg.caption_col else []) + extras
            missing = [c for c in wanted if c not in t.column_names]
            if missing:
                raise RecipeError(
                    f"source {self.name!r}: {f.name} has no column {missing[0]!r} (url_col / caption_col / "
                    f"save_additional_columns); its columns: {', '.join(t.column_names)}"
                )
            url, bad = _text_column(t[cfg.url_col], strict=True)
            cols = {"url": url}
            cols["caption"] = (
                _text_column(t[cfg.caption_col])[0] if cfg.caption_col else pa.nulls(t.num_rows, pa.string())
            )
            for c in extras:
                cols[c] = _text_column(t[c])[0]
            # a URL that is not UTF-8 text becomes an invalid_url drop naming the file and row
            cols["url_error"] = pa.array(
                [
                    f"{f.name} row {i}: {cfg.url_col!r} is not UTF-8 text" if i in bad else None
                    for i in range(t.num_rows)
                ],
                pa.string(),
            )
            parts.append(pa.table(cols))
        return pa.concat_tables(parts, promote_options="default") if len(parts) > 1 else parts[0]

    def _failed_before(self, uids: set[str]) -> set[str]:
        """uids of this table whose download failed in an earlier run (retryable reasons) and never succeeded."""
        run = self.ctx.run
        if run is None or not self.config.retry_failed:
            return set()
        d = run.read_table("drops", ["uid", "stage", "reason"]).to_pydict()
        failed = {
            u
            for u, s, r in zip(d["uid"], d["stage"], d["reason"])
            if s == "ingest" and r not in FINAL_REASONS and u in uids
        }
        return failed - run.sample_uids() if failed else failed

    # ------------------------------------------------------------------ read
    def read(self, skip: set[str]) -> Iterator[StageOutput]:
        cfg = self.config
        table = self.url_table()
        urls = table["url"].to_pylist()
        drops: list[dict] = []
        index: dict[str, int] = {}  # uid -> row index, first listing wins
        url_errors = table["url_error"].to_pylist()
        for i, url in enumerate(urls):
            if url_errors[i]:
                uid = url_uid(self.name, f"<{url_errors[i]}>")
                if uid not in skip:
                    drops.append(self._drop(uid, "invalid_url", url_errors[i]))
                continue
            if not url or not url.strip():
                uid = url_uid(self.name, f"<row {i}: empty url>")
                if uid not in skip:
                    drops.append(self._drop(uid, "invalid_url", f"row {i}: empty {cfg.url_col!r}"))
                continue
            index.setdefault(url_uid(self.name, url), i)  # listed twice: one sample
        retry = self._failed_before(skip.intersection(index))
        todo = {u: i for u, i in index.items() if u not in skip or u in retry}

        if not cfg.allow_private_urls:
            ssrf.prefetch({_host(urls[i]) for i in todo.values()} - {""}, cfg.thread_count)
        fetch: dict[str, int] = {}
        for uid, i in todo.items():
            verdict = ssrf.url_refusal(urls[i]) if not cfg.allow_private_urls else _scheme_refusal(urls[i])
            if verdict is None:
                fetch[uid] = i
            elif uid not in retry:
                drops.append(self._drop(uid, verdict[0], verdict[1]))
        for k in range(0, len(drops), BATCH):
            yield StageOutput(drops=drops_table(drops[k : k + BATCH]))
        if fetch:
            rows = pa.array(sorted(fetch.values()), pa.int64())
            yield from self._download(table.drop_columns(["url_error"]).take(rows), retry)

    def _drop(self, uid: str, reason: str, detail: str | None) -> dict:
        return {"uid": uid, "stage": "ingest", "reason": reason, "detail": detail}

    # ------------------------------------------------------------------ img2dataset
    def scratch_dir(self) -> Path:
        run = self.ctx.run
        if run is None or not run.is_local:  # img2dataset writes local files (object store: a temp dir)
            return Path(tempfile.mkdtemp(prefix="loupe-url-list-"))
        return run.path / "_state" / "ingest" / "url_list" / self.name

    def img2dataset_args(self, input_path: Path, output: Path, extras: list[str]) -> dict:
        """Keyword arguments of ``img2dataset.download`` for this source."""
        cfg = self.config
        keep_bytes = cfg.resize_mode == "no"
        return {
            "url_list": str(input_path),
            "input_format": "parquet",
            "url_col": "url",
            "caption_col": "caption",
            "save_additional_columns": ["uid", *extras],
            "output_folder": str(output),
            "output_format": "parquet",
            "image_size": cfg.image_size,
            "resize_mode": cfg.resize_mode,
            "resize_only_if_bigger": cfg.resize_only_if_bigger,
            # resize_mode "no" keeps the served bytes (sha256 = what the server sent); then
            # img2dataset decodes nothing, and min_image_size is checked here after our decode
            "disable_all_reencoding": keep_bytes,
            "min_image_size": 0 if keep_bytes else cfg.min_image_size,
            "processes_count": cfg.processes_count,
            "thread_count": cfg.thread_count,
            "timeout": cfg.timeout,
            "retries": cfg.retries,
            "number_sample_per_shard": SHARD_SIZE,
            "extract_exif": False,
            "compute_hash": "sha256",
            "enable_wandb": False,
            # under --executor ray each img2dataset shard is one Ray task on the run's cluster
            # (img2dataset/distributor.py ``ray_distributor``); locally, spawned processes
            "distributor": "ray" if self.ctx.ray_address else "multiprocessing",
        }

    def _download(self, table: pa.Table, retry: set[str]) -> Iterator[StageOutput]:
        cfg = self.config
        if importlib.util.find_spec("img2dataset") is None:
            raise ModelUnavailable(
                f"source {self.name!r}: type url_list downloads with img2dataset, which is not "
                "installed; pip install 'loupe[ingest]'"
            )
        scratch = self.scratch_dir()
        run = self.ctx.run
        if run is not None and run.is_local and not scratch.resolve().is_relative_to(run.path.resolve()):
            # source names are validated (one folder name), so this is a last line of defence:
            # never delete anything outside the run dir
            raise RecipeError(f"source {self.name!r}: scratch folder {scratch} is outside the run dir")
        stop_previous_worker(scratch)  # a worker of a killed run must not write into what we clean
        shutil.rmtree(scratch, ignore_errors=True)  # leftovers of a killed run: its URLs are redone
        scratch.mkdir(parents=True)
        out = scratch / "out"
        extras = list(cfg.save_additional_columns)
        uids = [url_uid(self.name, u) for u in table["url"].to_pylist()]
        pq.write_table(table.append_column("uid", pa.array(uids, pa.string())), scratch / "input.parquet")
        args_path = scratch / "args.json"
        args_path.write_text(
            json.dumps(self.img2dataset_args(scratch / "input.parquet", out, extras), indent=1)
        )
        env = dict(os.environ, WANDB_MODE="disabled", NO_ALBUMENTATIONS_UPDATE="1")
        env[GUARD_ENV] = "0" if cfg.allow_private_urls else "1"
        env[PARENT_ENV] = str(os.getpid())
        if self.ctx.ray_address:
            env[RAY_ENV] = self.ctx.ray_address
        log_path = scratch / "img2dataset.log"
        expected = set(uids)
        reported: set[str] = set()
        read_shards: set[str] = set()
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "loupe.pipeline.stages.ingest.img2dataset_worker", str(args_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,  # its own process group: stopping it stops its workers too
            )
            (scratch / WORKER_PID).write_text(str(proc.pid))
            try:
                while True:
                    rc = proc.poll()  # read before scanning: after exit, one last scan sees every shard
                    for stats in sorted(out.glob("*_stats.json")) if out.is_dir() else []:
                        shard = stats.name.split("_", 1)[0]
                        if shard in read_shards:
                            continue
                        yield from self._read_shard(out / f"{shard}.parquet", expected, reported, retry)
                        read_shards.add(shard)
                        (out / f"{shard}.parquet").unlink(missing_ok=True)
                    if rc is not None:
                        break
                    time.sleep(0.1)
            finally:
                if proc.poll() is None:
                    os.killpg(proc.pid, signal.SIGTERM)
                    proc.wait()
        if rc != 0:
            tail = log_path.read_text(errors="replace")[-2000:]
            raise DownloadError(
                f"source {self.name!r}: img2dataset exited with status {rc}; {len(reported)} of "
                f"{len(expected)} URLs were ingested, rerun to continue. Log {log_path}:\n{tail}"
            )
        missing = sorted(expected - reported)
        drops = [
            self._drop(u, "missing_output", "img2dataset wrote no status for this URL (its shard failed)")
            for u in missing
            if u not in retry
        ]
        if missing:
            yield StageOutput(drops=drops_table(drops), covered=missing)
        shutil.rmtree(scratch, ignore_errors=True)

    def _read_shard(
        self, path: Path, expected: set[str], reported: set[str], retry: set[str]
    ) -> Iterator[StageOutput]:
        if not path.exists():
            return
        for rb in pq.ParquetFile(path).iter_batches(batch_size=BATCH):
            rows: list[dict] = []
            drops: list[dict] = []
            covered: list[str] = []
            for r in rb.to_pylist():
                uid = r["uid"]
                if uid not in expected or uid in reported:
                    continue
                reported.add(uid)
                covered.append(uid)
                sample, drop = self._to_row(r)
                if sample is not None:
                    rows.append(sample)
                elif uid not in retry:  # a URL failing again keeps its first drop row
                    drops.append(drop)
            if covered:
                yield StageOutput(
                    rows=pa.Table.from_pylist(rows, schema=SAMPLES), drops=drops_table(drops), covered=covered
                )

    def _to_row(self, r: dict) -> tuple[dict | None, dict | None]:
        uid, url = r["uid"], r["url"]
        if r["status"] != "success" or r.get("jpg") is None:
            reason = failure_reason(r["status"], r["error_message"])
            return None, self._drop(uid, reason, r["error_message"] or r["status"])
        data: bytes = r["jpg"]
        try:
            img = decode(data)
        except DecodeError as e:
            return None, self._drop(uid, e.reason, f"{url}: {e}")
        cfg = self.config
        if cfg.resize_mode == "no" and min(img.width, img.height) < cfg.min_image_size:
            return None, self._drop(
                uid, "image_too_small", f"{img.width}x{img.height} < min_image_size {cfg.min_image_size}"
            )
        meta = {c: r.get(c) for c in cfg.save_additional_columns}
        meta.update(
            bytes=len(data),
            format=(img.format or "").lower(),
            original_width=r.get("original_width") or img.width,
            original_height=r.get("original_height") or img.height,
            download_sha256=r.get("sha256"),
        )
        return {
            "uid": uid,
            "source": self.name,
            "source_id": url,
            "url": url,
            "image_path": None,
            "image": data,
            "width": img.width,
            "height": img.height,
            "sha256": sha256_hex(data),
            "alt_text": r.get("caption") or None,
            "conversations": None,
            "meta": json.dumps(meta),
        }, None


WORKER_PID = "worker.pid"


def stop_previous_worker(scratch: Path, grace: float = 10.0) -> bool:
    """Stop the img2dataset worker a killed run left in ``scratch`` (its process group), if alive.

    Workers die with their parent (``PR_SET_PDEATHSIG``), so this is the fallback for platforms or
    races where that did not happen. Returns True when a live worker was stopped."""
    try:
        pid = int((scratch / WORKER_PID).read_text())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return False
    if b"img2dataset_worker" not in cmdline:
        return False  # the pid was reused by an unrelated process
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, grace)):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return True
        t0 = time.time()
        while time.time() - t0 < wait:
            if not _group_alive(pid):
                return True
            time.sleep(0.05)
    return True


def _group_alive(pgid: int) -> bool:
    """True while some process of group ``pgid`` is running (zombies, awaiting their reaper, are not)."""
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def _text_column(col: pa.ChunkedArray, strict: bool = False) -> tuple[pa.Array, set[int]]:
    """A string column from any column; binary values (pyarrow reads non-UTF-8 CSV as binary) are
    decoded as UTF-8: with ``strict`` an invalid value becomes null and its row index is returned,
    otherwise invalid bytes are replaced (U+FFFD)."""
    if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
        return col.combine_chunks().cast(pa.string()), set()
    if not (pa.types.is_binary(col.type) or pa.types.is_large_binary(col.type)):
        return pc.cast(col, pa.string()).combine_chunks(), set()
    out: list[str | None] = []
    bad: set[int] = set()
    for i, v in enumerate(col.to_pylist()):
        if v is None:
            out.append(None)
            continue
        try:
            out.append(v.decode("utf-8"))
        except UnicodeDecodeError:
            if strict:
                bad.add(i)
                out.append(None)
            else:
                out.append(v.decode("utf-8", errors="replace"))
    return pa.array(out, pa.string()), bad


def _host(url: str) -> str:
    try:
        return urlsplit(url).hostname or ""
    except ValueError:
        return ""


def _scheme_refusal(url: str) -> tuple[str, str] | None:
    """With private URLs allowed, only the scheme/host check remains (img2dataset handles http(s) only)."""
    try:
        parts = urlsplit(url)
        ok = parts.scheme.lower() in ssrf.SCHEMES and bool(parts.hostname)
    except ValueError:
        ok = False
    return None if ok else ("invalid_url", f"{url!r}: need an http(s) URL with a host")
