"""OCR experts: PP-OCR through ``rapidocr`` (offline default) or PaddleOCR.

Both return one row per detected text box, ``{line, text, box, score}``, in reading order: boxes are
grouped into visual lines by vertical overlap, lines run top to bottom and boxes left to right
inside a line; ``line`` is the row's 0-based position in that order. Boxes are the axis-aligned
hull of PP-OCR's quadrilateral, normalised to [0, 1] (``round_box``).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from PIL import Image

from loupe.experts.base import Expert, round_box
from loupe.experts.weights import packaged_file, require_package, usable_cpus
from loupe.schemas.errors import ModelUnavailable, RecipeError

# PP-OCRv6 small det/rec and the v2 direction classifier ship inside the rapidocr wheel (>= 3.x).
RAPIDOCR_MODELS = {
    "Det": "models/PP-OCRv6_det_small.onnx",
    "Cls": "models/ch_ppocr_mobile_v2.0_cls_mobile.onnx",
    "Rec": "models/PP-OCRv6_rec_small.onnx",
}
# Two boxes share a line when their vertical overlap covers this share of the shorter box.
LINE_OVERLAP = 0.5
# Images are padded to at least this many pixels per side before OCR (see pad_short_side).
MIN_SIDE = 32
# PaddleOCR's own default det_db_box_thresh; rapidocr's 0.5 lets whole-photo boxes through
# (skimage's coffee photo is read as "8" at 0.90 with a 0.504 box).
DET_BOX_THRESH = 0.6
# Short side small images are upscaled to for the text detector (0 = never; rapidocr's own rule is 736).
# The sweep in benchmarks/bench_experts.py (--only ocr-sweep; docs/benchmarks.md) measures word
# recall on a labelled set: 640 misses 9 % of the words (small text blurs when upscaled 2x, a line
# of the scanned page goes), 320 reads all of them at 1.7x (text) to 2.7x (photos) less CPU; 0 is
# faster still but garbles the 191 px scanned page unless the direction classifier is off. Cost of
# 320 (as of 0): the coffee photo's cup is read as "8" (1 false word on 16 text-free photos).
DET_MIN_SIDE = 320


def quad_to_box(quad: Any) -> tuple[float, float, float, float]:
    """PP-OCR's 4-point polygon -> its axis-aligned hull (x1, y1, x2, y2) in pixels."""
    pts = np.asarray(quad, dtype=np.float64).reshape(-1, 2)
    return float(pts[:, 0].min()), float(pts[:, 1].min()), float(pts[:, 0].max()), float(pts[:, 1].max())


def reading_order(boxes: Sequence[Sequence[float]]) -> list[int]:
    """Indices of pixel boxes in reading order: lines top to bottom, boxes left to right in a line.

    A box joins the current line when it overlaps the line's vertical span by ``LINE_OVERLAP`` of the
    smaller height; scanning by box centre keeps slightly skewed lines together.
    """
    order = sorted(range(len(boxes)), key=lambda i: ((boxes[i][1] + boxes[i][3]) / 2, boxes[i][0]))
    lines: list[list[int]] = []
    span = (0.0, 0.0)
    for i in order:
        y1, y2 = boxes[i][1], boxes[i][3]
        if lines:
            overlap = min(y2, span[1]) - max(y1, span[0])
            if overlap >= LINE_OVERLAP * max(min(y2 - y1, span[1] - span[0]), 1e-9):
                lines[-1].append(i)
                span = (min(span[0], y1), max(span[1], y2))
                continue
        lines.append([i])
        span = (y1, y2)
    return [i for line in lines for i in sorted(line, key=lambda j: boxes[j][0])]


def ocr_rows(
    quads: Sequence[Any],
    texts: Sequence[str],
    scores: Sequence[float],
    size: tuple[int, int],
    min_score: float,
) -> list[dict[str, Any]]:
    """Backend output of one image -> table rows in reading order (``size`` = the OCR'd image's w, h)."""
    keep = [
        (quad_to_box(q), t.strip(), float(s))
        for q, t, s in zip(quads, texts, scores)
        if t and t.strip() and float(s) >= min_score
    ]
    order = reading_order([k[0] for k in keep])
    w, h = size
    return [
        {"line": n, "text": keep[i][1], "box": round_box(keep[i][0], w, h), "score": round(keep[i][2], 4)}
        for n, i in enumerate(order)
    ]


def limit_side(img: Image.Image, max_side: int) -> Image.Image:
    """Downscale so the long side is at most ``max_side`` (boxes are normalised, so no mapping back)."""
    w, h = img.size
    if max(w, h) <= max_side:
        return img
    s = max_side / max(w, h)
    return img.resize((max(1, round(w * s)), max(1, round(h * s))), Image.Resampling.BILINEAR)


def fit_for_detection(img: Image.Image, max_side: int, det_min_side: int) -> Image.Image:
    """Scale so the short side reaches ``det_min_side`` (small text needs it) without the long side
    passing ``max_side``; large images only shrink. rapidocr's own rule (short side >= 736, long side
    unbounded) turns a 10x10000 strip into 736x36800 and costs half a minute."""
    w, h = img.size
    s = min(max_side / max(w, h), max(det_min_side / max(min(w, h), 1), 1.0))
    if abs(s - 1.0) < 1e-3:
        return img
    return img.resize((max(1, round(w * s)), max(1, round(h * s))), Image.Resampling.BICUBIC)


def pad_short_side(img: Image.Image, min_side: int = MIN_SIDE) -> Image.Image:
    """Pad (right/bottom, edge colour) so both sides are at least ``min_side``.

    rapidocr would instead *upscale* the short side to 30 px without re-capping the long side: a
    1600x2 strip becomes 24000x30 and takes minutes. Padding keeps pixel coordinates unchanged.
    """
    w, h = img.size
    if min(w, h) >= min_side:
        return img
    canvas = Image.new("RGB", (max(w, min_side), max(h, min_side)), img.getpixel((w - 1, h - 1)))
    canvas.paste(img, (0, 0))
    return canvas


def onnx_cuda(device: str) -> bool:
    """Whether rapidocr's onnxruntime should use CUDA: ``cuda`` (required), ``auto`` (if present), ``cpu``."""
    if device == "cpu":
        return False
    if device not in ("auto", "cuda") and not device.startswith("cuda:"):
        raise RecipeError(f"device={device!r} is not valid for OCR; use cpu, cuda or auto")
    import onnxruntime

    has = "CUDAExecutionProvider" in onnxruntime.get_available_providers()
    if device != "auto" and not has:
        raise ModelUnavailable(
            f"device={device!r} but onnxruntime has no CUDAExecutionProvider here; "
            "pip install onnxruntime-gpu, or use device: cpu"
        )
    return has


class RapidOcr(Expert):
    """PP-OCRv6 (det + cls + rec) on onnxruntime via ``rapidocr``, models taken from its wheel."""

    table = "ocr"

    def __init__(
        self,
        min_score: float = 0.5,
        max_side: int = 1600,
        workers: int | None = None,
        det_min_side: int = DET_MIN_SIDE,
        engine_params: dict[str, Any] | None = None,
        device: str = "cpu",
    ):
        """``workers``: images OCR'd at once, each by its own engine with one onnxruntime thread
        (default: the CPUs this process may use, at most 4; one engine on a GPU). On 2 cores this
        reads 1.07x (photos) to 1.3x (text pages) more images per second than one engine using both
        cores (docs/benchmarks.md). ``det_min_side``: short side small images are upscaled to for the text detector
        (0 = never upscale). ``engine_params``: extra rapidocr settings (``"Global.use_cls": False``)."""
        require_package("rapidocr", "rapidocr", "OCR backend 'rapidocr'")
        use_cuda = onnx_cuda(device)
        paths = {k: packaged_file("rapidocr", rel, "rapidocr") for k, rel in RAPIDOCR_MODELS.items()}
        # Explicit model paths: rapidocr only downloads when model_path is null, so this pins the
        # shipped files and guarantees no network access.
        params: dict[str, Any] = {f"{k}.model_path": str(p) for k, p in paths.items()}
        params.update(
            {
                "Global.log_level": "error",  # not "detection result is empty" for every blank image
                "Global.text_score": float(min_score),
                # our own max_side resize runs first; rapidocr's would rescale boxes back anyway
                "Global.max_side_len": max(int(max_side), MIN_SIDE),
                "Det.box_thresh": DET_BOX_THRESH,
                # sizing is done by fit_for_detection; the detector only rounds to multiples of 32
                "Det.limit_type": "max",
                "Det.limit_side_len": max(int(max_side), MIN_SIDE),
            }
        )
        if use_cuda:
            params["EngineConfig.onnxruntime.use_cuda"] = True
        self.device = "cuda" if use_cuda else "cpu"
        self.workers = 1 if use_cuda else max(1, int(workers or min(usable_cpus(), 4)))
        if self.workers > 1:
            params["EngineConfig.onnxruntime.intra_op_num_threads"] = 1
            params["EngineConfig.onnxruntime.inter_op_num_threads"] = 1
        params.update(engine_params or {})
        # one engine per worker thread: rapidocr's __call__ mutates engine state, so never share one
        self._params = params
        self._local = threading.local()
        self._pool = (
            ThreadPoolExecutor(self.workers, thread_name_prefix="rapidocr") if self.workers > 1 else None
        )
        self.engine = self._engine()
        self.min_score = float(min_score)
        self.max_side = int(max_side)
        self.det_min_side = int(det_min_side)
        self.model_id = "rapidocr:" + "+".join(paths[k].stem for k in ("Det", "Rec"))

    def _engine(self):
        eng = getattr(self._local, "engine", None)
        if eng is None:
            from rapidocr import RapidOCR

            eng = self._local.engine = RapidOCR(params=dict(self._params))
        return eng

    def predict_one(self, img: Image.Image) -> list[dict[str, Any]]:
        img = fit_for_detection(img.convert("RGB"), self.max_side, self.det_min_side)
        out = self._engine()(pad_short_side(img))
        if getattr(out, "boxes", None) is None or getattr(out, "txts", None) is None:
            return []  # no text found (rapidocr returns an empty output object)
        # normalise by the unpadded size; round_box clips anything in the padding to the edge
        return ocr_rows(out.boxes, out.txts, out.scores, img.size, self.min_score)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def predict(self, images: list[Image.Image]) -> list[list[dict[str, Any]]]:
        # PP-OCR detection runs per image (sizes vary), so a batch is spread over worker threads;
        # onnxruntime releases the GIL, so the threads really run in parallel.
        if self._pool is None or len(images) < 2:
            return [self.predict_one(im) for im in images]
        return list(self._pool.map(self.predict_one, images))


class PaddleOcr(Expert):
    """PaddleOCR 3.x pipeline; only when ``paddleocr`` and its models are installed locally."""

    table = "ocr"

    def __init__(
        self, min_score: float = 0.5, max_side: int = 1600, model_dir: str | None = None, device: str = "cpu"
    ):
        require_package("paddleocr", "paddleocr", "OCR backend 'paddleocr'")
        require_package("paddle", "paddlepaddle", "OCR backend 'paddleocr'")
        from pathlib import Path

        # PaddleOCR 3 fetches its models into ~/.paddlex/official_models on first use; refuse instead.
        root = Path(model_dir or Path.home() / ".paddlex" / "official_models").expanduser()
        det, rec = root / "PP-OCRv5_server_det", root / "PP-OCRv5_server_rec"
        if not (det.is_dir() and rec.is_dir()):
            raise ModelUnavailable(
                f"OCR backend 'paddleocr' needs its models in {root} (PP-OCRv5_server_det, PP-OCRv5_server_rec); "
                "run PaddleOCR once with network to fetch them, or use backend: rapidocr (ships its models)"
            )
        from paddleocr import PaddleOCR

        self.engine = PaddleOCR(
            text_detection_model_dir=str(det),
            text_recognition_model_dir=str(rec),
            use_doc_orientation_classify=False,
            use_doc_unwarping=False,
            use_textline_orientation=False,
            device="gpu:0" if device.startswith("cuda") else "cpu",
        )
        self.min_score = float(min_score)
        self.max_side = int(max_side)
        self.model_id = "paddleocr:PP-OCRv5_server"

    def predict(self, images: list[Image.Image]) -> list[list[dict[str, Any]]]:
        out = []
        for im in images:
            im = limit_side(im.convert("RGB"), self.max_side)
            res = self.engine.predict(np.asarray(im)[:, :, ::-1].copy())  # paddle expects BGR
            r = res[0] if res else {}
            out.append(
                ocr_rows(
                    r.get("rec_polys", []),
                    r.get("rec_texts", []),
                    r.get("rec_scores", []),
                    im.size,
                    self.min_score,
                )
            )
        return out


def make_ocr(
    backend: str = "rapidocr",
    min_score: float = 0.5,
    max_side: int = 1600,
    det_min_side: int = DET_MIN_SIDE,
    workers: int | None = None,
    device: str = "cpu",
) -> Expert:
    """Build an OCR expert from the recipe's ``ocr`` stage fields."""
    if backend == "rapidocr":
        return RapidOcr(min_score, max_side, workers, det_min_side, device=device)
    if backend == "paddleocr":
        return PaddleOcr(min_score=min_score, max_side=max_side, device=device)
    raise ValueError(f"ocr backend={backend!r} is not valid; use 'rapidocr' or 'paddleocr'")
