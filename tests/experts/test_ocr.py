"""OCR expert: rapidocr's shipped PP-OCR models on rendered text and a real scanned page."""

from __future__ import annotations

import random
import re
from pathlib import Path

import pytest
from PIL import Image, ImageDraw, ImageFont

from loupe.experts.ocr import make_ocr, ocr_rows, quad_to_box, reading_order
from loupe.pipeline.errors import ModelUnavailable

WORDS = (
    "market river orange window garden silver planet coffee yellow morning station museum bridge winter "
    "summer forest island camera letter number purple castle pocket dinner rocket simple happy quiet"
).split()
FACES = ("DejaVuSans.ttf", "DejaVuSerif-Bold.ttf", "DejaVuSansMono.ttf", "DejaVuSans-Oblique.ttf")


def fonts() -> list[tuple[str, object]]:
    """Pillow's bundled TrueType font (Pillow >= 10.1) plus DejaVu faces shipped in matplotlib's wheel
    (matplotlib is a core dependency, so these are present wherever Loupe is installed)."""
    import matplotlib

    ttf = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    missing = [f for f in FACES if not (ttf / f).is_file()]
    assert not missing, f"matplotlib's DejaVu fonts are missing: {missing}"
    return [("pillow-default", None), *((name, ttf / name) for name in FACES)]


def render(font_path, size: int, seed: int, w: int = 640, h: int = 360) -> tuple[Image.Image, list[str]]:
    rng = random.Random(seed)
    font = (
        ImageFont.load_default(size=size) if font_path is None else ImageFont.truetype(str(font_path), size)
    )
    img = Image.new("RGB", (w, h), (rng.randint(200, 255),) * 3)
    draw = ImageDraw.Draw(img)
    words: list[str] = []
    y = 10
    while y + size * 1.4 < h:
        line = rng.sample(WORDS, 3)
        if draw.textlength(" ".join(line), font=font) > w - 20:
            line = line[:2]
        draw.text((10, y), " ".join(line), fill=(rng.randint(0, 60),) * 3, font=font)
        words += line
        y += int(size * 1.6)
    return img, words


@pytest.fixture(scope="module")
def ocr():
    return make_ocr("rapidocr", min_score=0.5, max_side=1600)


def words_of(rows: list[dict]) -> set[str]:
    return {w.lower() for r in rows for w in re.findall(r"[A-Za-z0-9_]+", r["text"])}


@pytest.mark.slow  # 15 rendered pages: ~7 s on 2 idle cores, minutes at load 30
def test_rendered_text_recall_several_fonts_and_sizes(ocr):
    cases = [(name, path, size) for name, path in fonts() for size in (14, 22, 34)]
    images, truth = zip(*(render(path, size, seed=i) for i, (_, path, size) in enumerate(cases)))
    results = ocr.predict(list(images))
    assert len(results) == len(images)
    total = found = 0
    for (name, _, size), words, rows in zip(cases, truth, results):
        got = words_of(rows)
        hit = sum(w.lower() in got for w in words)
        assert hit / len(words) >= 0.8, f"{name} size {size}: read {sorted(got)}, drew {words}"
        total, found = total + len(words), found + hit
    assert found / total >= 0.9, f"recall {found}/{total}"


def test_rows_are_in_reading_order_with_normalised_boxes(ocr):
    img = Image.new("RGB", (800, 300), "white")
    d = ImageDraw.Draw(img)
    font = ImageFont.load_default(size=36)
    d.text((420, 30), "second", fill="black", font=font)  # right of "first", same line
    d.text((30, 32), "first", fill="black", font=font)
    d.text((30, 200), "third", fill="black", font=font)
    rows = ocr.predict([img])[0]
    assert [r["text"].lower() for r in rows] == ["first", "second", "third"]
    assert [r["line"] for r in rows] == [0, 1, 2]
    for r in rows:
        x1, y1, x2, y2 = r["box"]
        assert 0 <= x1 < x2 <= 1 and 0 <= y1 < y2 <= 1
        assert all(round(v, 3) == v for v in r["box"])
        assert 0.5 <= r["score"] <= 1
    # "first" sits in the left half, near the top
    assert rows[0]["box"][2] < 0.5 and rows[0]["box"][3] < 0.5


def test_real_scanned_page_from_scikit_image(ocr):
    skdata = pytest.importorskip("skimage.data")
    page = Image.fromarray(skdata.page()).convert("RGB")  # photo of a printed page, ships in the wheel
    rows = ocr.predict([page])[0]
    text = " ".join(r["text"] for r in rows).lower()
    for phrase in ("region-based segmentation", "markers", "background", "histogram of grey values"):
        assert phrase in text, text
    assert rows[0]["text"].lower().startswith("region-based")  # the title comes first


def test_real_scene_text_photo(ocr):
    """A street photo (the bus that ships with ultralytics): sign text on a vehicle, not a page."""
    pytest.importorskip("ultralytics")
    import ultralytics

    path = Path(ultralytics.__file__).parent / "assets" / "bus.jpg"
    rows = ocr.predict([Image.open(path).convert("RGB")])[0]
    got = words_of(rows)
    assert {"cero", "emisiones"} <= got, rows
    cero = next(r for r in rows if r["text"].lower() == "cero")
    emisiones = next(r for r in rows if r["text"].lower() == "emisiones")
    # the two-line sign on the bus's side, "cero" above "emisiones", in the right half of the photo
    centre = lambda r: (r["box"][1] + r["box"][3]) / 2
    assert cero["line"] < emisiones["line"] and centre(cero) < centre(emisiones)
    assert cero["box"][0] > 0.5 and 0.4 < cero["box"][1] < 0.6


def test_photos_without_text_give_no_rows(ocr):
    skdata = pytest.importorskip("skimage.data")
    imgs = [Image.fromarray(skdata.coffee()), Image.fromarray(skdata.rocket())]
    # the known cost of the default det_min_side 320 (docs/benchmarks.md, OCR sweep): the coffee cup's
    # rim is read as a lone "8"; at 640 the detector sees nothing. Nothing else is read on either photo.
    assert make_ocr("rapidocr", det_min_side=640).predict(imgs) == [[], []]
    coffee, rocket = ocr.predict(imgs)
    assert rocket == [] and [r["text"] for r in coffee] in ([], ["8"])


def test_default_det_min_side_reads_small_text_that_640_blurs(ocr):
    """Text 8-14 px high on a 320 px image: upscaled 2x for the detector it loses words; at 320 not."""
    img = Image.new("RGB", (640, 360), "white")
    draw = ImageDraw.Draw(img)
    rng = random.Random(3)
    words = []
    for y in range(10, 330, 34):
        line = rng.sample(WORDS, 4)
        draw.text(
            (10, y), " ".join(line), fill="black", font=ImageFont.load_default(size=rng.choice([16, 22, 28]))
        )
        words += line
    small = img.resize((320, 180), Image.Resampling.LANCZOS)

    def found(o) -> int:
        return len(set(words) & words_of(o.predict([small])[0]))

    at_default, at_640 = found(ocr), found(make_ocr("rapidocr", det_min_side=640))
    assert at_default == len(set(words)) and at_640 <= at_default, (at_default, at_640, len(set(words)))


def test_degenerate_images_are_fast_and_empty(ocr):
    import time

    t = time.process_time()  # CPU time of all threads: robust to a busy shared machine, unlike wall time
    out = ocr.predict([Image.new("RGB", s, "white") for s in [(1, 1), (10000, 10), (10, 10000)]])
    assert out == [[], [], []]
    assert time.process_time() - t < 10  # rapidocr's own sizing took minutes of CPU on the strips


def test_min_score_filters_rows():
    rows = ocr_rows(
        [[[0, 0], [10, 0], [10, 5], [0, 5]], [[0, 10], [10, 10], [10, 15], [0, 15]]],
        ["kept", "dropped"],
        [0.9, 0.3],
        (20, 20),
        min_score=0.5,
    )
    assert [r["text"] for r in rows] == ["kept"]
    assert rows[0]["box"] == [0.0, 0.0, 0.5, 0.25]


def test_reading_order_groups_lines_by_vertical_overlap():
    boxes = [
        (300, 12, 400, 40),  # line 1, right (slightly lower than its neighbour)
        (10, 100, 90, 130),  # line 2
        (10, 10, 120, 38),  # line 1, left
        (150, 104, 260, 128),  # line 2, right
    ]
    assert reading_order(boxes) == [2, 0, 1, 3]
    assert reading_order([]) == []


def test_quad_to_box_takes_the_hull_of_a_rotated_quad():
    assert quad_to_box([[5, 0], [10, 5], [5, 10], [0, 5]]) == (0, 0, 10, 10)


def test_paddleocr_backend_without_paddle_is_a_clear_error():
    import importlib.util

    if importlib.util.find_spec("paddleocr") and importlib.util.find_spec("paddle"):
        pytest.skip("paddleocr is installed here")
    with pytest.raises(ModelUnavailable, match="pip install paddle"):
        make_ocr("paddleocr")


def test_det_min_side_zero_never_upscales():
    from loupe.experts.ocr import fit_for_detection

    small, big = Image.new("RGB", (320, 180)), Image.new("RGB", (4000, 1000))
    assert fit_for_detection(small, 1600, 0).size == (320, 180)
    assert fit_for_detection(small, 1600, 640).size == (1138, 640)
    assert fit_for_detection(big, 1600, 0).size == (1600, 400)


def test_device_choices():
    import onnxruntime

    from loupe.experts.ocr import onnx_cuda
    from loupe.pipeline.errors import RecipeError

    has_cuda = "CUDAExecutionProvider" in onnxruntime.get_available_providers()
    assert onnx_cuda("cpu") is False and onnx_cuda("auto") is has_cuda
    with pytest.raises(RecipeError, match="'gpu'"):
        onnx_cuda("gpu")
    if not has_cuda:
        with pytest.raises(ModelUnavailable, match="onnxruntime-gpu"):
            make_ocr("rapidocr", device="cuda")


def test_unknown_backend_names_the_value():
    with pytest.raises(ValueError, match="'tesseract'"):
        make_ocr("tesseract")
