"""Logs for machines as well as terminals.

* ``run.log`` in every run dir: stage starts and ends, a progress line per running stage every few
  seconds, warnings and the final summary. Written whatever the terminal is.
* When stdout is not a TTY (a CI job, ``nohup``, ``ray job submit``, a pipe) there are no progress
  bars: the same plain progress lines go to stdout, one per stage every ``interval`` seconds
  (``LOUPE_PROGRESS_INTERVAL``, default 5), flushed so ``tail -f`` shows them as they come.
* Third-party progress bars (tqdm, Hugging Face downloads, Ray Data) and Ray's startup banner are
  silenced by :func:`quiet_third_party`; Loupe's own progress is the one to read.

:class:`RunProgress` offers the part of ``rich.progress.Progress`` the executors use
(``add_task``, ``update``, ``tasks[i].completed``) so they need not know which of the two they drive.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

LOG = logging.getLogger("loupe")
DEFAULT_INTERVAL = 5.0


def progress_interval() -> float:
    try:
        return max(0.05, float(os.environ.get("LOUPE_PROGRESS_INTERVAL", DEFAULT_INTERVAL)))
    except ValueError:
        return DEFAULT_INTERVAL


def quiet_third_party() -> None:
    """Environment that turns off progress bars and banners of the libraries Loupe drives.
    Set before they are imported (the CLI calls it first); an explicit user setting wins."""
    for k, v in {
        "TQDM_DISABLE": "1",  # tqdm >= 4.66 (transformers, ultralytics, img2dataset use tqdm)
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "TRANSFORMERS_VERBOSITY": "error",
        "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
        "RAY_DATA_DISABLE_PROGRESS_BARS": "1",
        "RAY_DEDUP_LOGS": "1",
        "RAY_USAGE_STATS_ENABLED": "0",  # no "Usage stats collection is enabled" banner
        "PYTHONWARNINGS": os.environ.get("PYTHONWARNINGS", "ignore::DeprecationWarning"),
    }.items():
        os.environ.setdefault(k, v)
    for name in ("ray", "ray.data", "ray._private", "transformers", "ultralytics", "httpx", "urllib3"):
        logging.getLogger(name).setLevel(logging.WARNING)


def run_log_path(run) -> Path:
    """The local folder whose ``run.log`` a run appends to: the run dir itself, or for a run on an
    object store (no appends there) a folder under ``$LOUPE_LOG_DIR`` (default ``~/.cache/loupe/logs``)
    that :func:`keep_run_log` copies to ``<run>/run.log`` when the command ends."""
    if run.is_local:
        return run.path
    import hashlib

    root = Path(os.environ.get("LOUPE_LOG_DIR") or Path.home() / ".cache" / "loupe" / "logs")
    return root / hashlib.sha1(run.location.encode()).hexdigest()[:12]


def keep_run_log(run) -> None:
    """Put the local run.log of an object-store run into the run dir. Best effort and silent: a log is
    no result, the local copy stays, and a store that refused it has already failed the run with its
    own one-line error."""
    if run.is_local:
        return
    try:
        run.write_bytes("run.log", (run_log_path(run) / "run.log").read_bytes())
    except Exception:  # noqa: BLE001
        pass


def open_run_log(run_path: Path) -> list[logging.Handler]:
    """Append everything logged under ``loupe`` to ``<run>/run.log``, and show warnings on stderr.
    Returns the handlers for :func:`close_run_log`."""
    run_path.mkdir(parents=True, exist_ok=True)
    h = logging.FileHandler(run_path / "run.log", encoding="utf-8")
    h.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%dT%H:%M:%S"))
    warn = logging.StreamHandler(sys.stderr)
    warn.setLevel(logging.WARNING)
    warn.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    LOG.addHandler(h)
    LOG.addHandler(warn)
    LOG.setLevel(logging.INFO)
    logging.captureWarnings(True)
    logging.getLogger("py.warnings").addHandler(h)
    return [h, warn]


def close_run_log(handlers: list[logging.Handler]) -> None:
    for h in handlers:
        LOG.removeHandler(h)
        logging.getLogger("py.warnings").removeHandler(h)
        h.close()


def _fmt_seconds(s: float) -> str:
    s = int(round(s))
    h, rest = divmod(s, 3600)
    m, sec = divmod(rest, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m}:{sec:02d}"


@dataclass
class TaskState:
    description: str
    total: float | None
    completed: float = 0
    fields: dict[str, Any] = field(default_factory=dict)
    start: float = field(default_factory=time.time)
    finished: bool = False


def progress_line(t: TaskState, now: float | None = None) -> str:
    """``stage  done/total (pct)  rate/s  ETA m:ss  drops n  elapsed m:ss``: one greppable line."""
    now = time.time() if now is None else now
    elapsed = max(now - t.start, 1e-9)
    done = int(t.completed)
    rate = done / elapsed
    parts = [f"{t.description:<18}"]
    if t.total:
        parts.append(f"{done}/{int(t.total)} ({100 * done / t.total:.0f}%)")
    else:
        parts.append(f"{done}/?")
    parts.append(f"{rate:.1f}/s")
    if t.total and rate > 0 and done < t.total:
        parts.append(f"ETA {_fmt_seconds((t.total - done) / rate)}")
    elif t.total and done >= t.total:
        parts.append("done")
    parts.append(f"drops {t.fields.get('drops', 0)}")
    parts.append(f"elapsed {_fmt_seconds(elapsed)}")
    return "  ".join(parts)


class RunProgress:
    """Rich bars on a terminal; plain timed lines on stdout otherwise; ``run.log`` lines always."""

    def __init__(
        self,
        console: Console | None = None,
        quiet: bool = False,
        plain: bool | None = None,
        interval: float | None = None,
        stream: Any = None,
    ):
        self.stream = stream or sys.stdout
        self.plain = (not _isatty(self.stream)) if plain is None else plain
        self.quiet = quiet
        self.interval = progress_interval() if interval is None else interval
        self.tasks: dict[int, TaskState] = {}
        self._bars = Progress(
            TextColumn("[bold]{task.description:<18}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]:>9}"),
            TextColumn("drops {task.fields[drops]}"),
            TimeElapsedColumn(),
            console=console or Console(stderr=True),
            disable=quiet or self.plain,
            transient=False,
        )
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -------------------------------------------------------------- rich-compatible part
    def add_task(self, description: str, total: float | None = None, **fields: Any) -> int:
        tid = self._bars.add_task(description, total=total, **fields)
        with self._lock:
            self.tasks[tid] = TaskState(description, total, fields=dict(fields))
        LOG.info("stage %s: started%s", description, f" ({int(total)} samples to do)" if total else "")
        return tid

    def update(self, task: int, advance: float | None = None, **kw: Any) -> None:
        self._bars.update(task, advance=advance, **kw)
        with self._lock:
            t = self.tasks[task]
            if advance:
                t.completed += advance
            if "completed" in kw:
                t.completed = kw.pop("completed")
            if "total" in kw:
                t.total = kw.pop("total")
            t.fields.update(kw)

    def finish(self, task: int) -> None:
        """Mark a stage done: its final line goes out now, and no more timed lines."""
        with self._lock:
            t = self.tasks[task]
            if t.finished:
                return
            t.finished = True
            line = progress_line(t)
        self._emit(line)

    # -------------------------------------------------------------- timed lines
    def _emit(self, line: str) -> None:
        LOG.info("progress %s", line)
        if self.plain and not self.quiet:
            print(line, file=self.stream, flush=True)

    def _tick(self) -> None:
        while not self._stop.wait(self.interval):
            with self._lock:
                lines = [progress_line(t) for t in self.tasks.values() if not t.finished]
            for line in lines:
                self._emit(line)

    def __enter__(self) -> RunProgress:
        self._bars.__enter__()
        self._thread = threading.Thread(target=self._tick, name="loupe-progress", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=1)
        for tid in list(self.tasks):
            self.finish(tid)
        self._bars.__exit__(*exc)


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False
