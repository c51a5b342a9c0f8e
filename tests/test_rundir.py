"""The exactly-once shard protocol of the run directory."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq

from loupe.pipeline.rundir import RunDir
from loupe.schemas.tables import OCR, drops_table


def _ocr_rows(uids):
    return pa.Table.from_pylist(
        [
            {"uid": u, "model": "m", "line": 0, "text": f"t{u}", "box": [0, 0, 1, 1], "score": 0.9}
            for u in uids
        ],
        schema=OCR,
    )


def test_commit_records_covered_uids_including_rowless_ones(tmp_path):
    run = RunDir(tmp_path)
    run.commit("ocr", "ocr", _ocr_rows(["a"]), None, ["a", "b"])  # b had no text: no row, still done
    assert run.done_uids("ocr", "ocr") == {"a", "b"}
    assert run.read_table("ocr")["uid"].to_pylist() == ["a"]


def test_done_uids_are_per_stage_in_a_shared_table(tmp_path):
    run = RunDir(tmp_path)
    run.commit("exact_dedup", "dedup", None, None, ["a"])
    run.commit("phash_dedup", "dedup", None, None, ["b"])
    assert run.done_uids("exact_dedup", "dedup") == {"a"}
    assert run.done_uids("phash_dedup", "dedup") == {"b"}


def test_orphan_drops_of_a_killed_batch_are_removed(tmp_path):
    run = RunDir(tmp_path)
    shard = run.commit("f", None, None, drops_table([{"uid": "x", "stage": "f", "reason": "r"}]), ["x"])
    assert run.dropped_uids() == {"x"}
    # simulate a kill between the drops shard and the commit shard: remove the commit shard
    (run.table_dir(None, "f") / f"{shard}.parquet").unlink()
    (run.path / "drops" / ".tmp-half-written.parquet").write_bytes(b"garbage")
    assert run.cleanup() == 2
    assert run.dropped_uids() == set() and run.done_uids("f", None) == set()
    assert not list((run.path / "drops").iterdir())


def test_shards_are_valid_parquet_with_table_schema(tmp_path):
    run = RunDir(tmp_path)
    run.commit("ocr", "ocr", _ocr_rows(["a", "b"]), None, ["a", "b"])
    (f,) = run.shard_files("ocr")
    t = pq.read_table(f)
    assert t.schema.remove_metadata() == OCR
    assert t.num_rows == 2


def test_live_uids_ignore_ingest_failures_fixed_by_retry(tmp_path):
    from loupe.schemas.tables import SAMPLES

    run = RunDir(tmp_path)
    run.commit(
        "ingest",
        "samples",
        None,
        drops_table([{"uid": "u1", "stage": "ingest", "reason": "http_404"}]),
        ["u1"],
    )
    assert run.live_uids() == set()
    row = {
        "uid": "u1",
        "source": "s",
        "source_id": "1",
        "image": b"x",
        "width": 1,
        "height": 1,
        "sha256": "h",
    }
    run.commit("ingest", "samples", pa.Table.from_pylist([row], schema=SAMPLES), None, ["u1"])
    assert run.live_uids() == {"u1"}


def test_manifest_updates_merge(tmp_path):
    run = RunDir(tmp_path)
    run.update_manifest(recipe="r")
    run.update_stage("ocr", status="running")
    run.update_stage("ocr", status="complete", rows_in=3)
    m = run.manifest()
    assert m["recipe"] == "r" and m["stages"]["ocr"] == {"status": "complete", "rows_in": 3}


def test_uid_arrays_equal_the_uid_sets(tmp_path):
    """The Ray driver's Arrow arrays (RunDir.*_uid_array, todo_uids) hold the local executor's sets."""
    from loupe.schemas.tables import SAMPLES

    run = RunDir(tmp_path)
    empty = run.todo_uids("ocr", "ocr")
    assert [len(empty[0]), len(empty[1]), empty[2]] == [0, 0, 0]

    def samples(uids):
        rows = [
            {"uid": u, "source": "s", "source_id": u, "image": b"x", "width": 1, "height": 1} for u in uids
        ]
        return pa.Table.from_pylist(rows, schema=SAMPLES)

    def drops(pairs):
        return drops_table([{"uid": u, "stage": s, "reason": "r"} for u, s in pairs])

    run.commit(
        "ingest", "samples", samples(["a", "b", "c"]), drops([("x", "ingest"), ("c", "ingest")]), "abcx"
    )
    run.commit("ingest", "samples", samples(["c", "d", "e", "f"]), None, "cdef")  # c: fixed by a retry
    run.commit(
        "exact_dedup", "dedup", None, drops([("b", "exact_dedup"), ("zz", "exact_dedup")]), ["b", "zz"]
    )
    run.commit("ocr", "ocr", _ocr_rows(["a"]), None, ["a", "b", "d"])
    run.commit("ocr", "ocr", None, None, ["d", "q"])  # d twice, q not live
    got = {
        "samples": run.sample_uid_array(),
        "dropped": run.dropped_uid_array(),
        "live": run.live_uid_array(),
        "done": run.done_uid_array("ocr", "ocr"),
    }
    want = {
        "samples": run.sample_uids(),
        "dropped": run.dropped_uids(),
        "live": run.live_uids(),
        "done": run.done_uids("ocr", "ocr"),
    }
    for k, arr in got.items():
        assert sorted(arr.to_pylist()) == sorted(want[k]), k  # and no uid twice
    assert want["live"] == {"a", "c", "d", "e", "f"} and want["dropped"] == {"b", "x", "zz"}
    live, todo, skipped = run.todo_uids("ocr", "ocr")
    assert sorted(todo.to_pylist()) == sorted(want["live"] - want["done"]) == ["c", "e", "f"]
    assert skipped == len(want["live"] & want["done"]) == 2
    _, todo, skipped = run.todo_uids("ocr", "ocr", rerun_all=True)
    assert sorted(todo.to_pylist()) == sorted(live.to_pylist()) and skipped == 2
