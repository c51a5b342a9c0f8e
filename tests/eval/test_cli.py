"""``loupe eval`` end to end with the tiny model, and its one-line errors (exit 2)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from loupe.pipeline.cli import app

from .fixtures import MAKERS

pytestmark = pytest.mark.slow  # loads torch + the tiny model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from loupe.eval.tiny import make_tiny_llava

    return make_tiny_llava(tmp_path_factory.mktemp("m") / "tiny-llava")


def test_eval_tasks_table_and_files(tmp_path, tiny):
    MAKERS["gqa"](tmp_path / "data" / "gqa")
    MAKERS["pope"](tmp_path / "data" / "pope")
    args = ["eval", "--tasks", "gqa,pope", "--model", str(tiny), "--data", str(tmp_path / "data"),
            "--out", str(tmp_path / "out"), "--max-new-tokens", "3", "--batch-size", "4"]  # fmt: skip
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    assert "DenseFusion-7B" in r.stdout and "64.0" in r.stdout and "POPE" in r.stdout
    for t in ("gqa", "pope"):
        s = json.loads((tmp_path / "out" / "tiny-llava" / t / "scores.json").read_text())
        assert s["task"] == t and s["n_missing"] == 0
    assert "| tiny-llava |" in (tmp_path / "out" / "tiny-llava" / "results.md").read_text()


def test_eval_errors(tmp_path, tiny):
    data = MAKERS["textvqa"](tmp_path / "tv")
    run = lambda *a: CliRunner().invoke(app, ["eval", *a])
    r = run("--task", "textvqa", "--model", str(tmp_path / "nope"), "--data", str(data))
    assert r.exit_code == 2 and "--model" in r.output and "does not exist" in r.output
    (data / "TextVQA_0.5.1_val.json").unlink()
    r = run("--task", "textvqa", "--model", str(tiny), "--data", str(data))
    assert r.exit_code == 2 and "TextVQA_0.5.1_val.json" in r.output
    r = run("--task", "textvqa", "--model", str(tiny))
    assert r.exit_code == 2 and "--data" in r.output
    r = run("--task", "gqa", "--model", str(tiny), "--data", str(data), "--policy", "beam")
    assert r.exit_code == 2 and "--policy" in r.output
    r = run("--tasks", "gqa,pope", "--model", str(tiny), "--data", str(tmp_path))
    assert r.exit_code == 2 and "no folder for task 'gqa'" in r.output
    assert "Traceback" not in r.output


def test_rescore_predictions_with_missing_ids(tmp_path):
    data = MAKERS["gqa"](tmp_path / "gqa")
    p = tmp_path / "predictions.jsonl"
    p.write_text(json.dumps({"question_id": "202", "text": "Red."}) + "\n")
    r = CliRunner().invoke(app, ["eval", "--task", "gqa", "--data", str(data), "--predictions", str(p)])
    assert r.exit_code == 0, r.output
    assert "1 of 2 questions have no prediction; scored as wrong" in r.output
    assert json.loads(r.stdout)["score"] == pytest.approx(50.0)
