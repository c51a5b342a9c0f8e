"""Every task end to end with a tiny random LLaVA on CPU: predictions.jsonl + scores.json."""

from __future__ import annotations

import json

import pytest

from loupe.eval.runner import run_task
from loupe.eval.tasks import get_task
from loupe.pipeline.errors import LoupeError

from .fixtures import MAKERS

pytestmark = pytest.mark.slow  # ~40 s wall on the shared 2-core box, mostly importing torch/transformers


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from loupe.eval.model import load_vlm
    from loupe.eval.tiny import make_tiny_llava

    path = make_tiny_llava(tmp_path_factory.mktemp("tiny") / "llava")
    return path, load_vlm(path)


@pytest.mark.parametrize("name", sorted(MAKERS))
def test_task_end_to_end(tmp_path, tiny_model, name):
    path, model = tiny_model
    task = get_task(name, MAKERS[name](tmp_path / "data"))
    out = tmp_path / "out"
    scores = run_task(task, model, out, model_id=path.name, batch_size=4, max_new_tokens=3)
    preds = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(preds) == len(task.samples()) and all(isinstance(p["text"], str) for p in preds)
    assert {p["question_id"] for p in preds} == {s.qid for s in task.samples()}
    saved = json.loads((out / "scores.json").read_text())
    assert saved["task"] == name and saved["n_missing"] == 0 and saved["headline"] in saved
    assert saved["score"] == scores["score"] and saved["score"] is not None
    assert saved["questions_per_s"] > 0


def test_dualfocus_policy_end_to_end(tmp_path, tiny_model):
    _, model = tiny_model
    task = get_task("seed", MAKERS["seed"](tmp_path / "data"))
    run_task(task, model, tmp_path / "out", policy="dualfocus", batch_size=2, max_new_tokens=3)
    preds = [json.loads(x) for x in (tmp_path / "out" / "predictions.jsonl").read_text().splitlines()]
    assert all(p["dualfocus"]["chosen"] in ("base", "focus") for p in preds)


def test_batched_equals_one_at_a_time(tmp_path, tiny_model):
    _, model = tiny_model
    task = get_task("pope", MAKERS["pope"](tmp_path / "data"))
    a = run_task(task, model, tmp_path / "a", batch_size=6, max_new_tokens=4)
    b = run_task(task, model, tmp_path / "b", batch_size=1, max_new_tokens=4)
    texts = lambda d: [
        json.loads(x)["text"] for x in (tmp_path / d / "predictions.jsonl").read_text().splitlines()
    ]
    assert texts("a") == texts("b") and a["score"] == b["score"]


def test_bad_model_path(tmp_path):
    from loupe.eval.model import load_vlm

    with pytest.raises(LoupeError, match="does not exist"):
        load_vlm(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(LoupeError, match="has no config.json"):
        load_vlm(tmp_path / "empty")
    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(LoupeError, match="'bert' model"):
        load_vlm(tmp_path / "bert")
