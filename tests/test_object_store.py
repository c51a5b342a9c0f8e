"""Run dirs on an object store: a real S3-compatible server process (moto) on 127.0.0.1.

Workers write shards straight to their final keys and commit each with a marker object
(``loupe.pipeline.storage``); nothing is staged on the driver. A real ``kill -9`` of a run in a
subprocess, a resume, then ``loupe query`` and ``loupe report`` on the ``s3://`` URI.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pytest
from s3_helpers import BUCKET, free_port, moto_s3
from typer.testing import CliRunner

from loupe.pipeline.cli import app
from loupe.pipeline.errors import LoupeError
from loupe.pipeline.executors.plan import make_plan
from loupe.pipeline.recipe import load_recipe
from loupe.pipeline.rundir import RunDir
from loupe.pipeline.storage import MARKER, ObjectStorage, open_storage

pytest.importorskip("moto", reason="the S3 tests run against moto's server: pip install 'loupe[test]'")
pytest.importorskip("flask", reason="moto's server mode needs flask: pip install 'moto[server]'")

LIVE_DEMO = 33  # 37 files - 3 planted duplicates - 1 corrupt


@pytest.fixture(scope="module")
def s3_server():
    """``moto_server`` as its own process on a free local port (tests/s3_helpers.py)."""
    with moto_s3() as env:
        yield env


@pytest.fixture
def s3_root(s3_server) -> str:
    """A fresh prefix in the bucket for one test."""
    return f"s3://{BUCKET}/{uuid.uuid4().hex[:8]}"


def _recipe(tmp_path: Path, images: Path) -> Path:
    p = tmp_path / "recipe.yaml"
    p.write_text(
        textwrap.dedent(f"""\
        name: store
        output: runs
        sources:
          - {{type: local_folder, name: demo, path: {images}}}
        stages:
          - stage: exact_dedup
          - {{stage: caption, backend: composer, batch_size: 8}}
          - {{stage: export, formats: [llama3_jsonl, dragonfly_parquet, llava_json]}}
        """)
    )
    return p


# A tagging stage placed before the recipe's stages that SIGKILLs its own process on batch `kill_at`
# (no cleanup, no flushing); its tags feed the captions, so the export depends on it.
SCRIPT = """
import os, signal, sys
import pyarrow as pa
from loupe.pipeline.executors.local import run_local
from loupe.pipeline.executors.plan import StagePlan, make_plan
from loupe.pipeline.recipe import load_recipe
from loupe.pipeline.stage import Stage, StageOutput
from loupe.schemas.recipe import StageConfig
from loupe.schemas.tables import TAGS

KILL_AT = int(sys.argv[3])


class Doomed(Stage):
    name = "doomed"
    table = "tags"
    reads = ("uid", "source_id")
    calls = 0

    def __call__(self, batch):
        Doomed.calls += 1
        if Doomed.calls == KILL_AT:
            os.kill(os.getpid(), signal.SIGKILL)
        rows = [{"uid": r["uid"], "model": "doomed", "tag": r["source_id"].split(".")[0], "score": 0.9}
                for r in batch.to_pylist()]
        return StageOutput(rows=pa.Table.from_pylist(rows, schema=TAGS))


plan = make_plan(load_recipe(sys.argv[1]), sys.argv[2])
sp = StagePlan("doomed", StageConfig(batch_size=8), Doomed, "tags", False, Doomed.reads, ())
plan.stages.insert(1, sp)
m = run_local(plan, quiet=True)
print("METRICS", {k: v.get("skipped_done") for k, v in m.items()})
"""


def _run_script(tmp_path: Path, recipe: Path, output: str, kill_at: int) -> subprocess.CompletedProcess:
    script = tmp_path / "doomed.py"
    script.write_text(SCRIPT)
    return subprocess.run(
        [sys.executable, str(script), str(recipe), output, str(kill_at)],
        capture_output=True,
        text=True,
        timeout=300,
    )


def _tags(run: RunDir) -> list[str]:
    return sorted(run.read_table("tags", ["uid"]).column("uid").to_pylist())


def _export(run: RunDir) -> dict[str, bytes]:
    return {
        name: run.storage.read_bytes(f"export/{name}")
        for name in ("conversations.jsonl", "llava.json", "stats.json", "dragonfly/loupe_00000.parquet")
    }


@pytest.mark.slow  # ~45 s: three runs in subprocesses
@pytest.mark.timeout(600)
def test_kill_9_on_s3_then_resume_equals_a_clean_local_run(tmp_path, demo_images, s3_root):
    recipe = _recipe(tmp_path, demo_images)
    clean = _run_script(tmp_path, recipe, str(tmp_path / "local"), 0)
    assert clean.returncode == 0, clean.stderr[-3000:]
    local = make_plan(load_recipe(recipe), str(tmp_path / "local")).run

    killed = _run_script(tmp_path, recipe, s3_root, 3)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    run = make_plan(load_recipe(recipe), s3_root).run
    assert not run.is_local and run.location.startswith(f"{s3_root}/store/")
    # two batches of 8 committed before the kill; the run's writer lease is still there
    assert len(_tags(run)) == 16
    assert run.exists("_state/writer.lock")
    # a shard a killed worker uploaded without its marker is not committed: readers skip it
    orphan = f"{run.table_rel('tags')}/doomed-20260101000000-{'0' * 10}.parquet"
    run.storage.write_bytes(orphan, b"half a shard")
    assert len(_tags(run)) == 16

    resumed = _run_script(tmp_path, recipe, s3_root, 0)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "'doomed': 16" in resumed.stdout  # the committed batches were not redone
    tags = _tags(run)
    assert tags == _tags(local) and len(tags) == len(set(tags)) == LIVE_DEMO
    assert not run.exists(orphan)  # the uncommitted upload was cleaned when the run opened
    assert run.manifest()["status"] == "complete" and run.manifest()["cleaned_orphans"] >= 1
    assert not run.exists("_state/writer.lock")  # the lease is released at the end
    # every committed shard has its marker; the export equals the clean local run's, byte for byte
    for f in run.shard_files("samples") + run.shard_files("tags") + run.shard_files("captions"):
        marker = json.loads(run.storage.read_text(run.rel(f) + MARKER))
        assert marker["size"] == run.fs.get_file_info(str(f)).size and marker["lineage"] == run.lineage
    assert _export(run) == _export(local)
    lines = _export(run)["conversations.jsonl"].decode().splitlines()
    assert len(lines) == LIVE_DEMO and len({json.loads(x)["uid"] for x in lines}) == LIVE_DEMO

    # loupe query on the URI (the run dir, and the recipe's folder: newest run inside)
    for where in (run.location, f"{s3_root}/store"):
        res = CliRunner().invoke(app, ["query", where, "SELECT count(*) AS n FROM live", "--format", "json"])
        assert res.exit_code == 0, res.output
        assert json.loads(res.output)["n"] == LIVE_DEMO
    res = CliRunner().invoke(
        app, ["query", run.location, "SELECT count(*) AS n FROM tags", "--format", "csv"]
    )
    assert res.exit_code == 0 and res.output.split() == ["n", str(LIVE_DEMO)]
    # the lockdown holds on an object-store run too: no file access from SQL
    res = CliRunner().invoke(app, ["query", run.location, "SELECT * FROM read_csv('/etc/passwd')"])
    assert res.exit_code == 2 and "query failed" in res.output

    # loupe report on the URI: the report lands in the run's report/ on the store
    res = CliRunner().invoke(app, ["report", run.location])
    assert res.exit_code == 0, res.output
    page = run.storage.read_text("report/index.html")
    assert "<html" in page.lower() and str(LIVE_DEMO) in page
    assert any(n.endswith(".png") for n in run.storage.sizes("report/plots"))
    # and to a local folder with --output
    res = CliRunner().invoke(app, ["report", run.location, "--output", str(tmp_path / "rep")])
    assert res.exit_code == 0 and (tmp_path / "rep" / "index.html").exists()


def test_cli_run_on_s3_writes_the_whole_run_dir_there(tmp_path, demo_images, s3_root):
    recipe = tmp_path / "small.yaml"
    recipe.write_text(
        f"name: small\noutput: {s3_root}\nsources:\n  - {{type: local_folder, name: demo, path: {demo_images}}}\n"
        "stages:\n  - stage: exact_dedup\n"
    )
    res = CliRunner().invoke(app, ["run", str(recipe), "-q"])
    assert res.exit_code == 0, res.output
    run = make_plan(load_recipe(recipe)).run
    assert f"run dir: {run.location}" in " ".join(res.output.split())
    assert len(run.live_uids()) == LIVE_DEMO and run.manifest()["status"] == "complete"
    assert f"loupe query {run.location}" in run.read_text("README.md")
    assert pq_rows(run, "live.parquet") == LIVE_DEMO
    assert "loupe run" in run.read_text("run.log")
    assert not list((tmp_path).glob("runs"))  # nothing was written next to the recipe
    # a second writer is refused while the first holds the lease
    with run.writer_lock():
        res = CliRunner().invoke(app, ["run", str(recipe), "-q"])
    assert res.exit_code == 2 and "is being written by another run" in res.output


def pq_rows(run: RunDir, rel: str) -> int:
    import pyarrow.parquet as pq

    return pq.read_metadata(run.storage.key(rel), filesystem=run.fs).num_rows


def test_uncommitted_shards_are_invisible_and_cleaned(s3_root):
    run = RunDir(open_storage(f"{s3_root}/r"), lineage="abc")
    t = pa.table({"uid": ["a", "b"]})
    shard = run.commit("st", None, t, None, ["a", "b"])
    files = run.shard_files(None, "st")
    assert [f.name for f in files] == [f"{shard}.parquet"]
    assert run.done_uids("st", None) == {"a", "b"}
    # data without marker (killed between the two PUTs) and a marker without data
    run.storage.write_bytes("_state/st/st-1-x.parquet", b"partial")
    run.storage.write_text("_state/st/st-2-y.parquet" + MARKER, "{}")
    assert [f.name for f in run.shard_files(None, "st")] == [f"{shard}.parquet"]
    assert run.cleanup() == 2
    assert sorted(run.storage.sizes("_state/st")) == [f"{shard}.parquet"]
    # a write that raises leaves no partial object behind
    with pytest.raises(RuntimeError):
        with run.storage.open_output("export/x.jsonl") as out:
            out.write(b"half")
            raise RuntimeError("boom")
    assert not run.exists("export/x.jsonl")


@pytest.mark.parametrize("conditional", ["1", "0"], ids=["conditional-writes", "read-back"])
def test_writer_lease_refuses_a_live_holder_and_takes_over_a_dead_one(s3_root, conditional, monkeypatch):
    monkeypatch.setenv("LOUPE_S3_CONDITIONAL_WRITES", conditional)
    store = ObjectStorage(f"{s3_root}/lease")
    lease = "_state/writer.lock"
    live = {"pid": 1, "host": "elsewhere", "started": "00:00:00", "cmd": "loupe run x.yaml"}
    store.write_text(lease, json.dumps({**live, "token": "t", "expires": time.time() + 60}))
    with pytest.raises(LoupeError, match=r"being written by another run \(pid 1 on elsewhere.*lease"):
        with store.writer_lock(lease):
            pass
    # an expired lease, and one of a dead process on this machine, are taken over at once
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    for stale in (
        {**live, "expires": time.time() - 1},
        {**live, "host": socket.gethostname(), "pid": dead.pid, "expires": time.time() + 60},
    ):
        store.write_text(lease, json.dumps({**stale, "token": "old"}))
        with store.writer_lock(lease):
            held = json.loads(store.read_text(lease))
            assert held["pid"] == os.getpid() and held["token"] != "old"
        assert not store.exists(lease)


def test_storage_pickles_without_its_filesystem(s3_root):
    import pickle

    store = ObjectStorage(f"{s3_root}/p")
    store.write_text("a.txt", "x")
    back = pickle.loads(pickle.dumps(store))
    assert back._fs is None and back.location == store.location
    assert back.read_text("a.txt") == "x"  # rebuilt from the URI where it is unpickled (a worker)


def test_unknown_scheme_is_a_clear_error_naming_the_field(tmp_path, demo_images):
    loaded = load_recipe(_recipe(tmp_path, demo_images))
    with pytest.raises(LoupeError, match=r"^--output: 'nope://bucket/runs': neither pyarrow nor fsspec"):
        make_plan(loaded, "nope://bucket/runs")
    loaded.recipe.output = "nope://bucket/runs"
    with pytest.raises(LoupeError, match=r"^output: 'nope://"):
        make_plan(loaded)
    result = CliRunner().invoke(app, ["run", str(_recipe(tmp_path, demo_images)), "--output", "nope://b/r"])
    assert result.exit_code == 2 and "neither pyarrow nor fsspec can open nope://" in result.output


def test_file_uri_is_a_local_run_dir(tmp_path, demo_images):
    plan = make_plan(load_recipe(_recipe(tmp_path, demo_images)), f"file://{tmp_path / 'out'}")
    assert plan.run.is_local and plan.run.path == tmp_path / "out" / "store" / plan.lineage


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.timeout(420)
def test_ray_workers_write_the_s3_run_dir_directly(tmp_path, demo_images, s3_root):
    """Under Ray the actors and the global tasks commit to the store themselves (no driver staging)."""
    from ray_helpers import private_ray

    from loupe.pipeline.executors.ray import run_ray

    recipe = _recipe(tmp_path, demo_images)
    with private_ray(__name__):
        plan = make_plan(load_recipe(recipe), s3_root)
        m = run_ray(plan, quiet=True)
    assert m["exact_dedup"]["drops"] == 3 and m["caption"]["rows_out"] == LIVE_DEMO
    run = plan.run
    caps = run.read_table("captions", ["uid"]).column("uid").to_pylist()
    assert len(caps) == len(set(caps)) == LIVE_DEMO
    assert run.manifest()["executor"] == "ray" and run.manifest()["status"] == "complete"
    assert len(run.storage.read_text("export/conversations.jsonl").splitlines()) == LIVE_DEMO
    assert isinstance(run.fs, pafs.S3FileSystem)


def test_fsspec_memory_store_runs_and_resumes(tmp_path, demo_images):
    """A scheme pyarrow lacks goes through fsspec (``memory://``, in-process): same protocol, same run."""
    from loupe.pipeline.executors.local import run_local
    from loupe.pipeline.query import query

    recipe = tmp_path / "mem.yaml"
    recipe.write_text(
        f"name: mem\noutput: memory://loupe-{uuid.uuid4().hex[:8]}/runs\nsources:\n"
        f"  - {{type: local_folder, name: demo, path: {demo_images}}}\nstages:\n  - stage: exact_dedup\n"
    )
    plan = make_plan(load_recipe(recipe))
    first = run_local(plan, quiet=True)
    assert first["exact_dedup"]["drops"] == 3 and isinstance(plan.run.fs, pafs.PyFileSystem)
    again = run_local(make_plan(load_recipe(recipe)), quiet=True)
    assert again["ingest"]["skipped_done"] == 37 and again["exact_dedup"]["noop"]
    assert query(plan.run, "SELECT count(*) AS n FROM live").column("n").to_pylist() == [LIVE_DEMO]
    assert all(plan.run.exists(plan.run.rel(f) + MARKER) for f in plan.run.shard_files("samples"))


# ---------------------------------------------------------------- the lease under a race (S3 conditional writes)
LEASE = "_state/writer.lock"


def _race(store: ObjectStorage, n: int) -> list[str]:
    """``n`` threads take the lease at once; a winner holds it until every other racer has answered."""
    results: list[str] = []
    barrier = threading.Barrier(n)

    def racer() -> None:
        barrier.wait()
        try:
            with store.writer_lock(LEASE):
                results.append("won")
                deadline = time.time() + 30
                while len(results) < n and time.time() < deadline:
                    time.sleep(0.02)
        except LoupeError as e:
            results.append(str(e))

    threads = [threading.Thread(target=racer) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return results


def _one_winner(results: list[str], n: int) -> list[str]:
    assert len(results) == n and results.count("won") == 1, results
    lost = [r for r in results if r != "won"]
    assert all("\n" not in r and r.startswith("run dir s3://") for r in lost), lost
    assert all("being written by another run" in r or "at the same moment" in r for r in lost), lost
    return lost


def test_conditional_lease_is_used_on_s3(s3_root):
    from loupe.pipeline.s3 import ConditionalLease

    store = ObjectStorage(f"{s3_root}/cas")
    cas = ConditionalLease.for_key(store.fs, store.key(LEASE), store.location)
    assert cas is not None and cas.bucket == BUCKET and cas.key == f"{s3_root.split('/', 3)[3]}/cas/{LEASE}"
    # moto honours both preconditions: a second create and a replace of a changed version are refused
    first = cas.create(b"{}")
    assert first and cas.create(b"{}") is None
    second = cas.replace(b'{"a": 1}', first)
    assert second and second != first and cas.replace(b"{}", first) is None
    cas.delete(first, "t")  # a stale version: not deleted
    assert cas.read() == ({"a": 1}, second)
    cas.delete(second, "t")
    assert cas.read() is None


def test_threads_racing_for_the_lease_exactly_one_wins(s3_root):
    store = ObjectStorage(f"{s3_root}/race")
    lost = _one_winner(_race(store, 8), 8)
    assert any("being written by another run" in r for r in lost)
    assert not store.exists(LEASE)  # released by the winner


def test_a_stale_lease_is_taken_over_by_exactly_one(s3_root):
    store = ObjectStorage(f"{s3_root}/stale")
    dead = {"pid": 1, "host": "elsewhere", "started": "00:00:00", "cmd": "loupe run x.yaml", "token": "old"}
    for _ in range(2):
        store.write_text(LEASE, json.dumps({**dead, "expires": time.time() - 1}))
        _one_winner(_race(store, 6), 6)
        assert not store.exists(LEASE)


def test_a_writer_that_looked_before_the_holder_wrote_is_refused(s3_root, monkeypatch):
    """The window the read-back protocol leaves open, closed by ``If-None-Match``: B read "no lease"
    just before A wrote its own, and B's write lands after A's read-back."""
    holder = ObjectStorage(f"{s3_root}/late")
    late = ObjectStorage(f"{s3_root}/late")
    real = late._read_lease
    views = iter([None])  # B's first look at the lease: before A wrote it

    def look(rel: str) -> dict | None:
        seen = next(views, "real")
        return real(rel) if seen == "real" else seen

    monkeypatch.setattr(late, "_read_lease", look)
    with holder.writer_lock(LEASE):
        with pytest.raises(LoupeError, match="being written by another run"):
            with late.writer_lock(LEASE):
                pass
        monkeypatch.setenv("LOUPE_S3_CONDITIONAL_WRITES", "0")  # the read-back protocol: both hold it
        views = iter([None])
        entered = False
        with late.writer_lock(LEASE):
            entered = True  # a second writer while A holds the lease: the documented window
        assert entered
        monkeypatch.delenv("LOUPE_S3_CONDITIONAL_WRITES")


RACER = """
import os, sys, time
from pathlib import Path
from loupe.pipeline.errors import LoupeError
from loupe.pipeline.storage import ObjectStorage
store, tmp, i = ObjectStorage(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
(tmp / f"ready-{i}").touch()
while not (tmp / "go").exists():
    time.sleep(0.001)
try:
    with store.writer_lock("_state/writer.lock"):
        print("WON", flush=True)
        while not (tmp / "release").exists():
            time.sleep(0.02)
except LoupeError as e:
    print("LOST", e, flush=True)
"""


def test_processes_racing_for_the_lease_exactly_one_wins(tmp_path, s3_root):
    n = 3
    script = tmp_path / "racer.py"
    script.write_text(RACER)
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), f"{s3_root}/procs", str(tmp_path), str(i)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(n)
    ]
    try:
        deadline = time.time() + 120
        while len(list(tmp_path.glob("ready-*"))) < n and time.time() < deadline:
            time.sleep(0.05)
        (tmp_path / "go").touch()
        time.sleep(1.0)  # let them race; the losers exit, the winner waits for "release"
        while sum(p.poll() is not None for p in procs) < n - 1 and time.time() < deadline:
            time.sleep(0.05)
        (tmp_path / "release").touch()
        outs = [p.communicate(timeout=60) for p in procs]
    finally:
        for p in procs:
            p.kill()
    lines = [o.strip() for o, _ in outs]
    assert sorted(x.split()[0] for x in lines) == ["LOST"] * (n - 1) + ["WON"], (lines, [e for _, e in outs])
    assert all("being written by another run" in x or "at the same moment" in x for x in lines if x != "WON")


def test_renewal_keeps_the_lease_and_a_stolen_lease_is_left_to_its_taker(s3_root, monkeypatch, capfd):
    from loupe.pipeline import storage

    monkeypatch.setattr(storage, "LEASE_SECONDS", 0.6)  # renewed every 0.2 s
    store = ObjectStorage(f"{s3_root}/renew")
    with store.writer_lock(LEASE):
        first = json.loads(store.read_text(LEASE))
        time.sleep(0.7)
        renewed = json.loads(store.read_text(LEASE))
        assert renewed["token"] == first["token"] and renewed["expires"] > first["expires"]
        thief = {**renewed, "pid": 2, "host": "elsewhere", "token": "thief", "expires": time.time() + 60}
        store.write_text(LEASE, json.dumps(thief))  # another run took it over (we looked dead)
        time.sleep(0.6)  # the next renewal fails its If-Match
    assert json.loads(store.read_text(LEASE))["token"] == "thief"  # not overwritten, not deleted
    assert "another run took over the writer lease (pid 2 on elsewhere" in capfd.readouterr().err


# ---------------------------------------------------------------- an unreachable endpoint fails fast
def test_unreachable_s3_endpoint_is_a_quick_one_line_error(tmp_path, demo_images, monkeypatch):
    for k, v in {
        "AWS_ACCESS_KEY_ID": "x",
        "AWS_SECRET_ACCESS_KEY": "x",
        "AWS_EC2_METADATA_DISABLED": "true",
    }.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    port = free_port()  # nothing listens there
    uri = f"s3://{BUCKET}/runs?endpoint_override=127.0.0.1:{port}&scheme=http"
    t0 = time.time()
    with pytest.raises(
        LoupeError,
        match=rf"^output: s3://{BUCKET}/runs: cannot reach the S3 endpoint http://127.0.0.1:{port} ",
    ):
        ObjectStorage(uri)
    assert time.time() - t0 < 5
    t0 = time.time()
    res = CliRunner().invoke(app, ["run", str(_recipe(tmp_path, demo_images)), "--output", uri, "-q"])
    assert res.exit_code == 2 and f"cannot reach the S3 endpoint http://127.0.0.1:{port}" in res.output
    assert "Traceback" not in res.output and time.time() - t0 < 8
