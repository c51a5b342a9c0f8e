"""Child processes die with the run: after kill -9 of `loupe run`, img2dataset's worker and its
download processes stop (PR_SET_PDEATHSIG), and the resume downloads everything exactly once."""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from loupe.pipeline.query import query, resolve_run

try:  # tests/ingest is a plain folder on sys.path (pytest's default "prepend" import mode)
    from url_server import ImageServer, make_images
except ImportError:
    from .url_server import ImageServer, make_images

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("img2dataset") is None or not sys.platform.startswith("linux"),
    reason="needs img2dataset and Linux",
)


def _group(pgid: int) -> list[int]:
    """Live (non-zombie) pids whose process group is ``pgid``."""
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[2]) == pgid and fields[0] != "Z":
            out.append(int(d.name))
    return out


@pytest.mark.slow
def test_kill_9_of_loupe_stops_its_downloads_and_resume_is_exact(tmp_path):
    srv = ImageServer(make_images(6), delay=20.0).start()
    try:
        urls = [srv.url(f"/slow/{n}") for n in srv.images]
        pq.write_table(pa.table({"url": urls, "caption": ["c"] * len(urls)}), tmp_path / "u.parquet")
        (tmp_path / "r.yaml").write_text(
            "name: kids\noutput: runs\nsources:\n  - type: url_list\n    name: web\n    path: u.parquet\n"
            "    allow_private_urls: true\n    processes_count: 1\n    thread_count: 2\n    timeout: 120\n"
        )
        loupe = subprocess.Popen(
            [sys.executable, "-m", "loupe.pipeline.cli", "run", str(tmp_path / "r.yaml"), "-q"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        t0 = time.time()
        pid_files: list[Path] = []
        while time.time() - t0 < 120 and not pid_files:
            pid_files = list((tmp_path / "runs").glob("kids/*/_state/ingest/url_list/web/worker.pid"))
            time.sleep(0.1)
        worker = int(pid_files[0].read_text())
        while time.time() - t0 < 120 and len(srv.log) < 2:  # downloads are in flight
            time.sleep(0.1)
        assert len(_group(worker)) >= 2, "worker and its download processes should be running"
        loupe.send_signal(signal.SIGKILL)
        loupe.wait()
        t1 = time.time()
        while _group(worker) and time.time() - t1 < 15:
            time.sleep(0.1)
        left = _group(worker)
        assert not left, f"img2dataset processes outlived loupe: {left}"
        print(f"img2dataset processes gone {time.time() - t1:.2f} s after kill -9 of loupe")
        srv.delay = 0.0
        r = subprocess.run(
            [sys.executable, "-m", "loupe.pipeline.cli", "run", str(tmp_path / "r.yaml"), "-q"],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert r.returncode == 0, r.stderr[-3000:]
        run = resolve_run(tmp_path / "runs" / "kids")
        n = query(run, "SELECT count(*) AS n, count(DISTINCT uid) AS u FROM samples").to_pylist()[0]
        assert n == {"n": 6, "u": 6}
    finally:
        srv.stop()
        os.environ.pop("LOUPE_PARENT_PID", None)


def test_resume_stops_a_worker_left_alive(tmp_path):
    from loupe.pipeline.stages.ingest.url_list import WORKER_PID, stop_previous_worker

    # a stand-in for an orphaned worker: its own process group, "img2dataset_worker" on its command line
    orphan = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(120)", "loupe.pipeline.stages.ingest.img2dataset_worker"],
        start_new_session=True,
    )
    # until it has exec'd, /proc/PID/cmdline still shows the forked pytest (a loaded box made that a flake)
    deadline = time.time() + 30
    while b"img2dataset_worker" not in Path(f"/proc/{orphan.pid}/cmdline").read_bytes():
        assert time.time() < deadline, "the stand-in worker never started"
        time.sleep(0.02)
    (tmp_path / WORKER_PID).write_text(str(orphan.pid))
    t0 = time.time()
    assert stop_previous_worker(tmp_path, grace=5)
    assert orphan.wait(timeout=5) == -signal.SIGTERM and time.time() - t0 < 5
    # a pid file naming an unrelated live process is left alone
    (tmp_path / WORKER_PID).write_text(str(os.getpid()))
    assert not stop_previous_worker(tmp_path)
