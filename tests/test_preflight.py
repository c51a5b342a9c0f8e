"""Preflight: dependency and weight problems are rejected before anything runs, fast, naming the paths."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from loupe.pipeline.preflight import preflight
from loupe.pipeline.recipe import load_recipe
from loupe.schemas.recipe import CaptionConfig

TEMPLATE = CaptionConfig.model_fields["prompt_template"].default

CLI = [sys.executable, "-m", "loupe.pipeline.cli"]


def _recipe(tmp_path: Path, stages: str, output: str = "runs") -> Path:
    (tmp_path / "imgs").mkdir(exist_ok=True)
    p = tmp_path / "r.yaml"
    p.write_text(
        f"name: pf\noutput: {output}\nsources: [{{type: local_folder, path: imgs}}]\nstages:\n{stages}"
    )
    return p


def _problems(path: Path) -> tuple[list[str], list[str], float]:
    t0 = time.perf_counter()
    found = preflight(load_recipe(path))
    took = time.perf_counter() - t0
    return [str(p) for p in found if p.error], [str(p) for p in found if not p.error], took


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("YOLO_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setenv("YOLO_CONFIG_DIR", str(tmp_path / "yolo-cfg"))
    (tmp_path / "yolo-cfg").mkdir()
    (tmp_path / "yolo-cfg" / "settings.json").write_text(f'{{"weights_dir": "{tmp_path / "yolo-weights"}"}}')


def test_dependency_errors_in_under_a_second(tmp_path):
    p = _recipe(
        tmp_path,
        "  - {stage: semdedup}\n  - {stage: embed}\n  - {stage: select}\n  - {stage: clip_score_filter}\n"
        "  - {stage: detect, backend: owlvit, model: owl}\n  - {stage: caption}\n  - {stage: ocr}\n",
    )
    (tmp_path / "owl").mkdir()  # a local OWL-ViT folder: only the dependency is wrong
    errors, warnings, took = _problems(p)
    assert took < 1.0
    assert errors == [
        "stages[0]: semdedup clusters image embeddings: it needs an embed stage before it (it runs after, at stages[1])",
        "stages[3]: clip_score_filter needs an embed stage with `text: true` before it (image-text similarity needs "
        "text embeddings)",
        "stages[4]: OWL-ViT detect without `queries` asks for each image's tags: it needs a tag stage before it "
        "(none runs), or set queries",
        f"stages[5]: prompt template {TEMPLATE!r} uses ocr evidence but the ocr stage runs after the caption "
        "(stages[6]); move it before",
    ]


def test_missing_template_evidence_is_a_warning(tmp_path):
    p = _recipe(tmp_path, "  - {stage: caption, prompt_template: loupe_v1}\n")
    errors, warnings, _ = _problems(p)
    assert errors == []
    assert [w.split(" but ")[0] for w in warnings] == [
        f"stages[0]: prompt template 'loupe_v1' uses {e} evidence" for e in ("detect", "ocr", "tag")
    ]


def test_good_order_passes(tmp_path):
    p = _recipe(
        tmp_path,
        "  - {stage: embed, text: false}\n  - {stage: semdedup}\n  - {stage: select}\n  - {stage: tag}\n"
        "  - {stage: detect, backend: owlvit, model: owl}\n  - {stage: ocr}\n  - {stage: caption}\n",
    )
    (tmp_path / "owl").mkdir()
    errors, warnings, _ = _problems(p)
    assert errors == [] and warnings == []


def test_missing_weights_name_the_exact_paths(tmp_path):
    p = _recipe(
        tmp_path,
        "  - {stage: detect, model: weights/yolov8n.pt}\n"
        "  - {stage: detect, backend: owlvit, model: google/owlv2-base-patch16, queries: [cat]}\n"
        "  - {stage: caption, backend: transformers, model: ./models/llm}\n",
    )
    errors, _, took = _problems(p)
    assert took < 1.0
    yolo, owl, llm = errors
    # the recipe-relative path and ultralytics' weights_dir joined with the *name* (never weights/weights)
    assert f"looked in {tmp_path / 'weights' / 'yolov8n.pt'}, " in yolo  # the recipe folder
    assert f"{tmp_path / 'yolo-weights' / 'yolov8n.pt'})" in yolo and "weights/weights" not in yolo
    assert yolo.startswith("stages[0].model: YOLO weights 'weights/yolov8n.pt' are not on this machine")
    assert "models--google--owlv2-base-patch16" in owl and str(tmp_path / "hf-cache") in owl
    assert llm.startswith("stages[2].model: caption model './models/llm' not found (looked in ")
    assert str(tmp_path / "models" / "llm") in llm
    # put the files where preflight looked: no more errors
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "yolov8n.pt").write_bytes(b"x")
    snap = tmp_path / "hf-cache" / "models--google--owlv2-base-patch16" / "snapshots" / "abc"
    snap.mkdir(parents=True)
    (snap / "config.json").write_text("{}")
    (tmp_path / "models" / "llm").mkdir(parents=True)
    assert _problems(p)[0] == []


def test_unwritable_output(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        if os.access(ro, os.W_OK):
            pytest.skip("running as a user who can write anywhere (root)")
        errors, _, _ = _problems(_recipe(tmp_path, "  - {stage: exact_dedup}\n", output=str(ro / "runs")))
        assert errors == [
            f"output: {str(ro / 'runs')!r}: cannot create run folders: {ro} is not writable "
            f"(resolved to {ro / 'runs'})"
        ]
    finally:
        ro.chmod(0o700)


def test_output_that_is_a_file(tmp_path):
    (tmp_path / "afile").write_text("x")
    errors, _, _ = _problems(_recipe(tmp_path, "  - {stage: exact_dedup}\n", output="afile/runs"))
    assert errors == [
        f"output: 'afile/runs': {tmp_path / 'afile'} is not a folder "
        f"(it is a file; resolved to {tmp_path / 'afile' / 'runs'})"
    ]


def test_validate_and_run_reject_before_running(tmp_path):
    p = _recipe(tmp_path, "  - {stage: semdedup}\n")
    for cmd in (["validate", str(p)], ["run", str(p), "-q"]):
        r = subprocess.run([*CLI, *cmd], capture_output=True, text=True)
        assert r.returncode == 2, r.stderr
        assert "semdedup clusters image embeddings: it needs an embed stage before it (none runs)" in r.stderr
        assert "Traceback" not in r.stderr
    assert not (tmp_path / "runs").exists()  # run stopped before creating anything
