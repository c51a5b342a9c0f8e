"""Detectors: YOLO built from ultralytics' shipped yolov8n.yaml (random weights) and a tiny random
OWL-ViT saved to a folder and loaded back through the real loading code. Shape and contract tests:
real boxes need real weights, which these offline tests do not have."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from loupe.experts.detect import OwlVitDetector, YoloDetector, detection_rows, make_detector, yolo_weights
from loupe.pipeline.errors import ModelUnavailable, RecipeError
from loupe.schemas.recipe import DetectConfig

# ultralytics writes its settings file at import; keep it out of the home folder
os.environ.setdefault("YOLO_CONFIG_DIR", tempfile.mkdtemp(prefix="loupe-yolo-"))

MIXED = [(640, 480), (90, 700), (1, 1), (3000, 12)]


def images() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)) for w, h in MIXED]


def check_rows(rows_per_image: list[list[dict]], n: int, max_boxes: int, labels: set[str] | None = None):
    assert len(rows_per_image) == n
    for rows in rows_per_image:
        assert len(rows) <= max_boxes
        scores = [r["score"] for r in rows]
        assert scores == sorted(scores, reverse=True)
        for r in rows:
            x1, y1, x2, y2 = r["box"]
            assert 0 <= x1 < x2 <= 1 and 0 <= y1 < y2 <= 1, r
            assert all(round(v, 3) == v for v in r["box"])
            assert isinstance(r["label"], str) and r["label"]
            if labels is not None:
                assert r["label"] in labels


def test_detection_rows_normalise_clip_sort_and_cap():
    boxes = np.array([[-10, -10, 50, 50], [10, 10, 200, 120], [30, 30, 30, 60], [0, 0, 5, 5]], float)
    rows = detection_rows(
        boxes, np.array([0.5, 0.9, 0.8, 0.1]), ["a", "b", "c", "d"], (100, 100), max_boxes=2
    )
    # sorted by score, clipped to [0, 1], the zero-width box dropped, capped at 2
    assert rows == [
        {"label": "b", "box": [0.1, 0.1, 1.0, 1.0], "score": 0.9},
        {"label": "a", "box": [0.0, 0.0, 0.5, 0.5], "score": 0.5},
    ]


@pytest.fixture(scope="module")
def yolo():
    pytest.importorskip("ultralytics")
    return YoloDetector("yolov8n.yaml", min_score=0.0, iou=0.5, max_boxes=7, device="cpu", imgsz=320)


def test_yolo_batch_of_mixed_sizes(yolo):
    out = yolo.predict(images())
    check_rows(out, len(MIXED), 7, labels=set(yolo.model.names.values()))
    assert sum(len(r) for r in out) > 0  # random weights still yield (low-score) boxes at min_score 0
    assert yolo.model_id == "yolo:yolov8n.yaml"
    assert yolo.predict([]) == []


def test_yolo_named_weights_missing_offline_is_a_clear_error(monkeypatch, tmp_path):
    pytest.importorskip("ultralytics")
    monkeypatch.setenv("YOLO_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelUnavailable, match="yolo11x-not-here.pt"):
        yolo_weights("yolo11x-not-here.pt", base=tmp_path)
    (tmp_path / "mine.pt").write_bytes(b"x")
    assert yolo_weights("mine.pt", base=tmp_path) == str((tmp_path / "mine.pt").resolve())


def fake_hub_cache(cache: Path, repo: str, files: dict[str, bytes]) -> Path:
    """A Hugging Face cache entry laid out as ``hf download`` leaves it (refs/main -> snapshot)."""
    root = cache / f"models--{repo.replace('/', '--')}"
    commit = "0" * 40
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(commit)
    snap = root / "snapshots" / commit
    for name, data in files.items():
        (snap / name).parent.mkdir(parents=True, exist_ok=True)
        (snap / name).write_bytes(data)
    return snap


def test_yolo_weights_from_the_hub_cache(monkeypatch, tmp_path):
    pytest.importorskip("ultralytics")
    import huggingface_hub.constants
    from ultralytics import YOLO

    weights = tmp_path / "tiny.pt"
    YOLO("yolov8n.yaml").save(str(weights))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    snap = fake_hub_cache(tmp_path / "hub", "acme/yolo-tiny", {"weights/best.pt": weights.read_bytes()})
    assert yolo_weights("acme/yolo-tiny") == str(snap / "weights" / "best.pt")  # the repo's one .pt
    assert yolo_weights("hf-hub:acme/yolo-tiny/weights/best.pt") == str(snap / "weights" / "best.pt")
    det = YoloDetector("acme/yolo-tiny", min_score=0.0, device="cpu", imgsz=160)
    assert det.model_id == "yolo:yolo-tiny" and len(det.predict(images()[:2])) == 2
    fake_hub_cache(tmp_path / "hub", "acme/two", {"a.pt": b"x", "b.pt": b"y"})
    with pytest.raises(ModelUnavailable, match=r"\['a.pt', 'b.pt'\]"):
        yolo_weights("acme/two")
    with pytest.raises(ModelUnavailable, match="hf download acme/absent"):
        yolo_weights("acme/absent")


@pytest.fixture(scope="module")
def tiny_owl(tmp_path_factory) -> Path:
    pytest.importorskip("transformers")
    pytest.importorskip("open_clip")
    from tiny_models import make_tiny_owlvit

    return make_tiny_owlvit(tmp_path_factory.mktemp("owl") / "tiny-owlvit")


def test_owlvit_loads_from_a_folder_and_detects_with_per_image_queries(tiny_owl):
    det = OwlVitDetector(str(tiny_owl), min_score=0.0, iou=0.3, max_boxes=5, device="cpu")
    queries = [["cat", "dog"], ["car"], [], ["cat", "tree", "sky"]]
    out = det.predict(images(), queries=queries)
    assert out[2] == []  # no queries: nothing to look for
    for rows, q in zip(out, queries):
        check_rows([rows], 1, 5, labels=set(q))
    assert all(len(out[i]) > 0 for i in (0, 1, 3))
    # per-label NMS at iou 0.3: no two boxes of one label overlap more than that
    for rows in out:
        for a in rows:
            for b in rows:
                if a is not b and a["label"] == b["label"]:
                    assert iou(a["box"], b["box"]) <= 0.3 + 1e-6


def iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def test_owlvit_needs_queries(tiny_owl):
    det = OwlVitDetector(str(tiny_owl), device="cpu")
    with pytest.raises(RecipeError, match="queries"):
        det.predict(images()[:1])
    fixed = make_detector(
        DetectConfig(stage="detect", backend="owlvit", model=str(tiny_owl), queries=["cat"], min_score=0)
    )
    assert all(r["label"] == "cat" for r in fixed.predict(images()[:1])[0])


def test_owlvit_uncached_hub_id_is_model_unavailable(monkeypatch):
    pytest.importorskip("transformers")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelUnavailable, match="hf download google/owlv2-base-patch16"):
        make_detector(DetectConfig(stage="detect", backend="owlvit", model="google/owlv2-base-patch16"))


# ------------------------------------------------------------------ Haar cascades (weights in the OpenCV wheel)
DEMO = Path(__file__).resolve().parents[2] / "recipes" / "demo_images"


def test_haar_finds_the_astronauts_face_offline():
    det = make_detector(DetectConfig(stage="detect", backend="haar"))
    assert det.model_id == "haar:face,cat face,person"
    face, blank = det.predict([Image.open(DEMO / "astronaut.jpg"), Image.new("RGB", (320, 240), "gray")])
    assert blank == []
    faces = [r for r in face if r["label"] == "face"]
    assert len(faces) == 1 and faces[0]["score"] >= 0.5
    # Eileen Collins' face sits in the upper middle of the 512x512 NASA portrait
    x1, y1, x2, y2 = faces[0]["box"]
    assert 0.25 < x1 < x2 < 0.65 and 0.05 < y1 < y2 < 0.4
    check_rows([face, blank], 2, 50, {"face", "cat face", "person"})
    check_rows(det.predict(images()), len(MIXED), 50)  # tiny and extreme shapes do not break it


def test_haar_labels_must_have_a_cascade():
    with pytest.raises(
        RecipeError, match="queries: \\['dog'\\] have no Haar cascade; backend haar detects: face"
    ):
        make_detector(DetectConfig(stage="detect", backend="haar", queries=["face", "dog"]))


def test_importing_yolo_leaves_pil_open_alone(tmp_path):
    """ultralytics patches Image.open to pip-install pi-heif on an unknown file; offline that raised
    ModuleNotFoundError where a corrupt image must stay an OSError (a drop row)."""
    pytest.importorskip("ultralytics")
    from loupe.experts.detect import import_yolo

    import_yolo()
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    with pytest.raises(OSError):
        Image.open(bad)
