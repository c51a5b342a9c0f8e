"""`loupe pipeline`: curate -> split -> train -> eval in one command, resumed after a kill during training."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from loupe.pipeline.errors import LoupeError
from loupe.pipeline.loop.split import heldout_fraction, is_heldout
from loupe.pipeline.recipe import load_recipe, parse_recipe
from tests.conftest import write_recipe

RECIPE = """
name: fdloop
output: runs
sources:
  - type: finedetail
    count: 14
    image_size: 96
    text_height: 14
    length: 2
    exact_duplicates: 0.1
    near_duplicates: 0.0
stages:
  - stage: exact_dedup
  - stage: ocr
    det_min_side: 0
  - stage: export
    formats: [llama3_jsonl]
    tasks: [ocr]
train:
  strategies: [llava, dragonfly]
  seeds: [0]
  heldout: 0.3
  steps: 40
  batch_size: 2
  eval_every: 20
  save_every: 2
  base_resolution: 16
  patch: 4
  vit_width: 16
  lm_width: 32
  layers: 1
  workers: 1
"""


def _cli(*args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "loupe.pipeline.cli", *args],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True, **kw,
    )  # fmt: skip


def test_split_is_a_pure_function_of_the_uid():
    assert heldout_fraction("00000000" + "f" * 56) == 0.0
    assert is_heldout("3fffffff" + "0" * 56, 0.25) and not is_heldout("40000000" + "0" * 56, 0.25)


def test_train_and_eval_sections_are_not_part_of_the_lineage(tmp_path):
    from loupe.pipeline.recipe import lineage_hash

    a = load_recipe(write_recipe(tmp_path, RECIPE, "a.yaml"))
    b = load_recipe(write_recipe(tmp_path, RECIPE.replace("steps: 40", "steps: 7"), "b.yaml"))
    assert lineage_hash(a) == lineage_hash(b)


def test_bad_train_section_names_the_field():
    raw = {"name": "x", "sources": [{"type": "finedetail"}], "train": {"strategies": ["zoom"]}}
    with pytest.raises(LoupeError, match=r"train\.strategies"):
        parse_recipe(raw)


def test_pipeline_without_train_section_is_a_clear_error(tmp_path):
    p = write_recipe(tmp_path, RECIPE.split("train:")[0])
    r = subprocess.run(
        [sys.executable, "-m", "loupe.pipeline.cli", "pipeline", str(p)], capture_output=True, text=True
    )
    assert r.returncode == 2 and "no `train` section" in r.stderr and "Traceback" not in r.stderr


def test_pipeline_trains_and_scores_with_the_bundled_trainer_and_evaluator(tmp_path):
    """The chained loop at a tiny budget: loupe train outputs, loupe eval scores per checkpoint,
    the manifest and the report; a rerun redoes nothing."""
    recipe = write_recipe(
        tmp_path, RECIPE.replace("steps: 40", "steps: 4").replace("eval_every: 20", "eval_every: 2")
    )
    from typer.testing import CliRunner

    from loupe.pipeline.cli import app

    r = CliRunner().invoke(app, ["pipeline", str(recipe), "-q"])
    assert r.exit_code == 0, r.output[-3000:]
    (run,) = tmp_path.glob("runs/fdloop/*/")
    m = json.loads((run / "manifest.json").read_text())
    (entry,) = m["pipeline"].values()
    assert entry["status"] == "complete"
    for name in ("llava-seed0", "dragonfly-seed0"):
        rec = entry["runs"][name]
        out = Path(rec["checkpoint"])
        # a loupe train output folder: its config, the Trainer's checkpoints (each loadable on its own)
        assert (out / "loupe_train.yaml").is_file() and (out / "loss.jsonl").is_file()
        assert set(rec["checkpoints"]) == {"2", "4"}
        assert (out / "checkpoint-2" / "loupe_train.yaml").is_file()
        # loupe eval's files: predictions per held-out image, scores with the VQA accuracy headline
        scores = json.loads((out / "eval" / "step-4" / "scores.json").read_text())
        assert scores["task"] == "vqa_jsonl" and scores["n_questions"] == entry["split"]["heldout"]
        assert [p["step"] for p in rec["curve"]] == [2, 4]
        assert rec["accuracy"] == round(scores["accuracy"] / 100, 4)
        assert rec["cpu_seconds"] > 0 and rec["resumed_from"] == []
    page = (run / "report" / "index.html").read_text()
    assert "Training and evaluation" in page and "dragonfly-seed0" in page
    again = CliRunner().invoke(app, ["pipeline", str(recipe), "-q", "--no-report"])
    assert again.exit_code == 0 and "resumed" not in again.output
    assert ": step 4 held-out accuracy" not in again.output


@pytest.mark.slow
def test_pipeline_resumes_after_a_kill_during_training(tmp_path):
    recipe = write_recipe(tmp_path, RECIPE)
    proc = _cli("pipeline", str(recipe), "-q", "--no-report", cwd=tmp_path)
    first = None  # the first job trained (the costliest strategy goes first)
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        ck = list(tmp_path.glob("runs/fdloop/*/loop/*/dragonfly-seed0/checkpoint-*/loupe_train.yaml"))
        if ck:
            first = ck[0].parents[1]
            os.killpg(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.02)
    proc.wait()
    assert first is not None, f"no checkpoint before the pipeline ended:\n{proc.stdout.read()}"
    assert not (first / "done.json").exists(), "killed too late: training had finished"
    run = first.parents[2]
    assert json.loads((run / "manifest.json").read_text())["pipeline"]  # the loop was recorded as running

    again = _cli("pipeline", str(recipe), "-q", cwd=tmp_path)
    out, _ = again.communicate(timeout=900)
    assert again.returncode == 0, out
    assert "resumed dragonfly-seed0 at step" in out
    m = json.loads((run / "manifest.json").read_text())
    (entry,) = m["pipeline"].values()
    assert entry["status"] == "complete" and m["status"] == "complete"
    runs = entry["runs"]
    assert set(runs) == {"llava-seed0", "dragonfly-seed0"}
    assert runs["dragonfly-seed0"]["resumed_from"] and runs["dragonfly-seed0"]["resumed_from"][0] >= 2
    assert runs["llava-seed0"]["resumed_from"] == []
    for r in runs.values():
        assert r["status"] == "complete" and r["steps"] == 40 and Path(r["checkpoint"]).is_dir()
        assert [p["step"] for p in r["curve"]] == [20, 40]
        assert all(0.0 <= p["accuracy"] <= 1.0 for p in r["curve"])
    # the Trainer's loss log holds every step exactly once, resumed or not
    steps = [json.loads(x)["step"] for x in (first / "loss.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 41))
    assert set(entry["summary"]) == {"llava", "dragonfly"} and Path(entry["plot"]).is_file()
    split = entry["split"]
    assert split["train"] > 0 and split["heldout"] > 0 and split["leaked_copies"] == 0
    page = (run / "report" / "index.html").read_text()
    assert "Training and evaluation" in page and "dragonfly-seed0" in page


def test_each_run_is_a_loupe_train_config_built_from_the_recipe(tmp_path):
    from loupe.pipeline.loop.jobs import train_config
    from loupe.schemas.recipe import TrainStep
    from loupe.train.config import ConfigError, parse_train_config

    tr = TrainStep(
        steps=30,
        save_every=5,
        eval_every=10,
        base_resolution=32,
        patch=8,
        options={"dragonfly": {"pool_kernel": 2}},
    )
    c = parse_train_config(train_config(tr, "dragonfly", 3, tmp_path / "t.jsonl", tmp_path / "o")).config
    assert (c.model.strategy, c.model.tokenizer, c.model.options) == ("dragonfly", "tiny", {"pool_kernel": 2})
    assert c.model.vision.config["image_size"] == 32 and c.model.vision.config["patch_size"] == 8
    assert c.model.vision.path is None and c.model.llm.path is None  # random init, nothing downloaded
    assert (c.train.stage, c.train.trainable, c.train.seed, c.train.max_steps, c.train.save_steps) == (
        "custom",
        ["*"],
        3,
        30,
        5,
    )
    assert c.train.save_total_limit is None  # every checkpoint is a point of the accuracy curve
    bad = TrainStep(options={"dragonfly": {"zoom": 3}})
    with pytest.raises(ConfigError, match=r"model\.options\.zoom"):
        parse_train_config(train_config(bad, "dragonfly", 0, tmp_path / "t.jsonl", tmp_path / "o"))
    from loupe.pipeline.loop.jobs import check_configs

    with pytest.raises(LoupeError, match=r"train\.options\.dragonfly\.zoom"):  # before any training
        check_configs(bad, tmp_path, tmp_path / "t.jsonl")


def test_eval_every_must_fall_on_checkpoints():
    raw = {"name": "x", "sources": [{"type": "finedetail"}], "train": {"save_every": 25, "eval_every": 30}}
    with pytest.raises(LoupeError, match=r"train.*multiple of save_every"):
        parse_recipe(raw)
