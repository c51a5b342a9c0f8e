"""One writer per run dir: a second `loupe run` on the same run dir is refused, naming the holder;
a lock left by a dead process is taken over; the surviving run's output equals a clean run's."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest

from loupe.pipeline.errors import LoupeError
from loupe.pipeline.query import resolve_run
from loupe.pipeline.rundir import RunDir

from .common import CLI, cli, export_files, fast_recipe, one_line_error


def _wait_for_lock(lock, pid: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    t0 = time.time()
    while time.time() - t0 < timeout:
        if lock.exists() and f"pid {pid} " in lock.read_text(errors="replace"):
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.005)
    raise AssertionError("the first run never took the lock")


@pytest.mark.slow
def test_second_concurrent_run_is_refused_and_first_equals_clean_run(tmp_path):
    recipe = fast_recipe(tmp_path / "a")
    first = subprocess.Popen(
        [*CLI, "run", str(recipe), "-q"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    runs = tmp_path / "a" / "runs" / "fast"
    try:
        # find the lock file once the run dir exists, then freeze the first run while it holds it
        t0 = time.time()
        while not list(runs.glob("*/_state/writer.lock")) and time.time() - t0 < 120:
            assert first.poll() is None, first.communicate()
            time.sleep(0.005)
        lock = next(runs.glob("*/_state/writer.lock"))
        _wait_for_lock(lock, first.pid, first)
        os.kill(first.pid, signal.SIGSTOP)
        second = cli("run", str(recipe), "-q")
        msg = one_line_error(second)
        assert f"pid {first.pid}" in msg and "being written by another run" in msg, msg
    finally:
        os.kill(first.pid, signal.SIGCONT)
    _, err = first.communicate(timeout=300)
    assert first.returncode == 0, err[-3000:]
    clean = cli("run", str(recipe), "-q", "--output", str(tmp_path / "clean"))
    assert clean.returncode == 0, clean.stderr[-3000:]
    got, want = resolve_run(runs), resolve_run(tmp_path / "clean" / "fast")
    assert got.path.name == want.path.name  # same lineage
    assert export_files(got.path) == export_files(want.path)
    assert (
        got.read_table("samples").num_rows == want.read_table("samples").num_rows == 36
    )  # 37 files, one truncated JPEG dropped


def test_writer_lock_in_process_and_stale_lock_taken_over(tmp_path):
    run = RunDir(tmp_path / "r")
    with run.writer_lock():
        # flock is per open file description: a second open in the same process is refused too
        try:
            with RunDir(tmp_path / "r").writer_lock():
                raise AssertionError("second writer got the lock")
        except LoupeError as e:
            assert f"pid {os.getpid()}" in str(e)
    # a lock file written by a process that died (kill -9 leaves the file, the kernel drops the lock)
    dead = subprocess.Popen(["true"])
    dead.wait()
    run.lock_path.write_text(f"pid {dead.pid} on elsewhere, started 00:00:00: loupe run x.yaml")
    with run.writer_lock():
        assert f"pid {os.getpid()} " in run.lock_path.read_text()


@pytest.mark.slow
def test_run_takes_over_a_lock_left_by_a_killed_run(tmp_path):
    recipe = fast_recipe(tmp_path)
    proc = subprocess.Popen(
        [*CLI, "run", str(recipe), "-q"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    runs = tmp_path / "runs" / "fast"
    t0 = time.time()
    while not list(runs.glob("*/_state/writer.lock")) and time.time() - t0 < 120:
        time.sleep(0.005)
    lock = next(runs.glob("*/_state/writer.lock"))
    _wait_for_lock(lock, proc.pid, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert f"pid {proc.pid} " in lock.read_text()  # the dead run's lock file is still there
    r = cli("run", str(recipe), "-q")
    assert r.returncode == 0, r.stderr[-3000:]
    assert resolve_run(runs).manifest()["status"] == "complete"
