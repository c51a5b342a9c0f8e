"""Dataset-quality metrics on a hand-built run dir (tables in the run layout), via the CLI too."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from loupe.eval.quality import object_hallucination, quality_metrics
from loupe.pipeline.cli import app
from loupe.pipeline.query import connect, resolve_run
from loupe.schemas.tables import TABLES


def _write(run: Path, table: str, rows: list[dict]) -> None:
    d, schema = TABLES[table]
    (run / d).mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), run / d / "t-00000.parquet")


def make_run(root: Path) -> Path:
    run = root / "runs" / "demo" / "abc123"
    run.mkdir(parents=True)
    (run / "manifest.json").write_text(json.dumps({"stage_order": ["ingest", "dedup", "fuse"]}))
    _write(run, "samples", [{"uid": u, "source": "demo", "width": 10, "height": 10} for u in "abcd"])
    _write(run, "drops", [{"uid": "d", "stage": "dedup", "reason": "exact_duplicate"}])
    _write(run, "dedup", [{"uid": u, "method": "exact", "kept": u != "d"} for u in "abcd"])
    _write(
        run,
        "detect",
        [{"uid": "a", "label": "dog"}, {"uid": "b", "label": "cat"}, {"uid": "c", "label": "car"}],
    )
    _write(run, "tags", [{"uid": "a", "tag": "grass"}])
    _write(run, "ocr", [{"uid": "c", "line": 0, "text": "STOP"}, {"uid": "c", "line": 1, "text": "AHEAD"}])
    _write(run, "captions", [
        {"uid": "a", "caption": "Two dogs on grass.", "n_words": 4, "label_coverage": 1.0, "hallucinated": []},
        {"uid": "b", "caption": "A cat next to a dog.", "n_words": 6, "label_coverage": 1.0, "hallucinated": ["dog"]},
        {"uid": "c", "caption": "A sign reads STOP.", "n_words": 4, "ocr_coverage": 0.5, "label_coverage": 0.0, "hallucinated": []},
    ])  # fmt: skip
    (run / "export").mkdir()
    (run / "export" / "stats.json").write_text(
        json.dumps(
            {
                "tokenizer": "whitespace",
                "records": 3,
                "tokens": {"mean": 12.0, "p50": 12, "p95": 14, "max": 14, "total": 36},
            }
        )
    )
    return run


def test_object_hallucination_by_hand():
    caps = {"a": "Two dogs on grass.", "b": "A cat next to a dog.", "c": "A sign reads STOP."}
    objs = {"a": {"dog", "grass"}, "b": {"cat"}, "c": {"car"}}
    h = object_hallucination(caps, objs)
    # vocabulary {dog, grass, cat, car}; a names dog, grass (ok); b names cat (ok), dog (not seen); c none
    assert (
        h["object_mentions"] == 4
        and h["chair_i"] == pytest.approx(1 / 4)
        and h["chair_s"] == pytest.approx(1 / 2)
    )


def test_quality_metrics(tmp_path):
    run = make_run(tmp_path)
    con = connect(resolve_run(run))
    m = quality_metrics(con, run)
    con.close()
    assert (m["samples"], m["live"], m["live_ratio"]) == (4, 3, 0.75)
    assert m["captions"]["count"] == 3 and m["captions"]["words_mean"] == pytest.approx(14 / 3)
    assert m["evidence"]["ocr_coverage_mean"] == pytest.approx(0.5)
    assert m["evidence"]["label_coverage_mean"] == pytest.approx(2 / 3)
    assert m["evidence"]["flagged_hallucination_ratio"] == pytest.approx(1 / 3)
    assert m["hallucination"]["chair_s"] == pytest.approx(0.5)
    assert m["ocr"]["lines_per_sample"] == pytest.approx(2 / 3) and m["ocr"][
        "samples_with_text_ratio"
    ] == pytest.approx(1 / 3)
    assert m["dedup"]["exact"] == {"judged": 4, "kept_ratio": 0.75}
    assert m["drops"]["dedup"]["ratio"] == pytest.approx(0.25)
    assert m["tokens"]["mean"] == 12.0 and m["tokens"]["tokenizer"] == "whitespace"


def test_cli_run_quality(tmp_path):
    make_run(tmp_path)
    r = CliRunner().invoke(app, ["eval", "--run", str(tmp_path / "runs" / "demo"), "--format", "json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["live"] == 3
    r = CliRunner().invoke(app, ["eval", "--run", str(tmp_path / "nope")])
    assert r.exit_code == 2 and "not a run directory" in r.output


def test_report_shows_quality(tmp_path):
    from loupe.pipeline.report import build_report

    run = make_run(tmp_path)
    page = build_report(resolve_run(run)).read_text()
    assert 'id="quality"' in page and "hallucination.chair_s" in page and "captions.words_mean" in page


def test_hallucination_vocabulary_is_label_head_nouns():
    objs = {"a": {"black-and-tan coonhound"}, "b": {"street sign"}}
    h = object_hallucination({"a": "A black and tan dog.", "b": "A coonhound by the street sign."}, objs)
    # vocabulary {coonhound, sign}: "black", "and", "street" are not objects; b's coonhound is unsupported
    assert h["vocabulary"] == 2 and h["object_mentions"] == 2 and h["chair_i"] == pytest.approx(0.5)
