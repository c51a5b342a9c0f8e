"""Object detectors: OpenCV Haar cascades (offline default), closed-set ultralytics YOLO, or
open-vocabulary OWL-ViT / OWLv2 (transformers).

Offline default. No general-purpose (COCO/LVIS) detector ships its weights inside a PyPI wheel that
we could find: ultralytics, torchvision, transformers/OWL-ViT, YOLOX, DETR and RT-DETR all fetch
weights from GitHub or a model hub at first use, and the wheels in the registry lists (``env``
packages: ``*yolo*``, ``*detr*``, ``*ssd*``, ``*detect*``...) are wrappers, trainers or task-specific
models. What does ship is OpenCV's Viola-Jones cascades, inside ``opencv-python-headless`` (a core
dependency): ``backend: haar`` detects faces, cat faces and full-body people with them, offline,
so the demo shows real boxes. For objects in general use ``yolo`` or ``owlvit`` with weights you
downloaded once (docs/experts.md).

Rows are ``{label, box, score}`` best first, boxes normalised to [0, 1] (``round_box``), at most
``max_boxes`` per image after the score threshold and class-wise NMS at ``iou``.

OWL-ViT (Minderer et al. 2022) scores every image patch against text queries; the detect stage
queries it with the image's own tags (from the tag stage) unless the recipe lists ``queries``.
Its post-processing has no NMS for text queries, so we apply torchvision's per-label NMS.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from loupe.experts.base import Expert, round_box
from loupe.experts.weights import (
    hub_offline,
    hub_snapshot,
    local_path,
    looks_like_hub_id,
    pick_device,
    require_package,
    resolve_weights,
)
from loupe.schemas.errors import ModelUnavailable, RecipeError

YOLO_CONFIG_SUFFIXES = (".yaml", ".yml")


def unpatch_pil_open() -> None:
    """Undo ultralytics' process-wide replacement of ``PIL.Image.open`` (``ultralytics/utils/patches.py``).

    On import, ultralytics swaps ``Image.open`` for a wrapper that meets an unidentifiable file by trying
    to pip-install ``pi-heif``; offline that raises ``ModuleNotFoundError``, so a corrupt image, an
    ``OSError`` that every stage turns into a drop row, would crash whatever opens it next in the same
    process (a training loader, an OCR batch). Loupe decodes HEIC itself where it needs to."""
    import sys

    patches = sys.modules.get("ultralytics.utils.patches")
    original = getattr(patches, "_image_open", None)
    if original is not None and Image.open is not original:
        Image.open = original


def import_yolo():
    """``ultralytics.YOLO``, imported without leaving ultralytics' ``Image.open`` patch behind."""
    from ultralytics import YOLO

    unpatch_pil_open()
    return YOLO


def detection_rows(
    boxes: np.ndarray, scores: np.ndarray, labels: list[str], size: tuple[int, int], max_boxes: int
) -> list[dict[str, Any]]:
    """Pixel xyxy boxes of one image -> rows best first; boxes with no area after rounding are dropped."""
    w, h = size
    rows = []
    for i in np.argsort(-np.asarray(scores), kind="stable"):
        box = round_box(boxes[i], w, h)
        if box[2] <= box[0] or box[3] <= box[1]:
            continue
        rows.append({"label": labels[i], "box": box, "score": round(float(scores[i]), 4)})
        if len(rows) >= max_boxes:
            break
    return rows


def yolo_hub_file(spec: str) -> str:
    """``[hf-hub:]org/name[/file.pt]`` -> the ``.pt`` file of that Hugging Face repo (local cache when
    offline). Without a file name the repo must hold exactly one ``.pt``."""
    parts = spec.removeprefix("hf-hub:").split("/")
    repo, filename = "/".join(parts[:2]), "/".join(parts[2:])
    what = "detect backend 'yolo'"
    if hub_offline():
        folder = hub_snapshot(repo, what)
    else:
        require_package("huggingface_hub", "huggingface_hub", what)
        from huggingface_hub import snapshot_download

        folder = Path(snapshot_download(repo, allow_patterns=[filename or "*.pt"]))
    if filename:
        found = [folder / filename] if (folder / filename).is_file() else []
    else:
        found = sorted(folder.rglob("*.pt"))
    if len(found) != 1:
        names = sorted(str(f.relative_to(folder)) for f in folder.rglob("*.pt"))
        raise ModelUnavailable(
            f"model: {spec!r} should name one YOLO .pt file in hub repo {repo!r}; it holds {names or 'none'}. "
            f"Name the file: {repo}/<file>.pt"
        )
    return str(found[0])


def is_hub_spec(spec: str) -> bool:
    """``hf-hub:org/name[/file]``, or a bare ``org/name`` that is not a weights file name."""
    return spec.startswith("hf-hub:") or (looks_like_hub_id(spec) and not spec.endswith((".pt", ".pth")))


def yolo_weights(spec: str, base: Path | None = None) -> str:
    """A YOLO model field -> a local weights file, or a model config (.yaml: random weights, for tests).

    Accepted: a path to a ``.pt``; a Hugging Face repo (``hf-hub:org/name/file.pt`` or ``org/name``
    with one ``.pt``), read from the local cache when offline; a released name (``yolov8n.pt``)
    taken from the recipe folder or ultralytics' ``weights_dir`` (ultralytics would otherwise fetch
    it from GitHub, which we allow only when not offline).
    """
    p = local_path(spec, base)
    if p is not None:
        return str(p.resolve())
    if is_hub_spec(spec):
        return yolo_hub_file(spec)
    if spec.endswith(YOLO_CONFIG_SUFFIXES):
        return spec  # an architecture shipped with ultralytics (cfg/models/...), randomly initialised
    from ultralytics.utils import SETTINGS

    unpatch_pil_open()
    # ultralytics looks a weights *name* up in weights_dir: join the name, not the recipe's relative
    # path (joining "weights/yolov8n.pt" named a non-existent weights_dir/weights/yolov8n.pt)
    cached = Path(SETTINGS.get("weights_dir", "")) / Path(spec).name
    if cached.is_file():
        return str(cached)
    if hub_offline() or os.environ.get("YOLO_OFFLINE", "").lower() in {"1", "true", "yes"}:
        rel = Path(spec).expanduser()
        tried = [rel] if rel.is_absolute() else [*([(base / rel).resolve()] if base else []), rel.resolve()]
        raise ModelUnavailable(
            f"model: YOLO weights {spec!r} are not on this machine (looked in "
            f"{', '.join(str(t) for t in dict.fromkeys([*tried, cached]))}) and downloads are off "
            "(YOLO_OFFLINE / HF_HUB_OFFLINE). Put the .pt file there or give its path in the recipe."
        )
    return spec  # ultralytics downloads its released weights by name


class YoloDetector(Expert):
    table = "detect"

    def __init__(
        self,
        model: str = "yolov8n.pt",
        min_score: float = 0.25,
        iou: float = 0.5,
        max_boxes: int = 50,
        device: str = "auto",
        base: Path | None = None,
        imgsz: int = 640,
    ):
        require_package("ultralytics", "ultralytics", "detect backend 'yolo'")
        YOLO = import_yolo()
        weights = yolo_weights(model, base)
        self.device = pick_device(device)
        self.model = YOLO(weights)
        self.min_score, self.iou, self.max_boxes, self.imgsz = min_score, iou, max_boxes, imgsz
        self.model_id = f"yolo:{Path(model).name}"
        # A batch of mixed shapes is letterboxed to imgsz x imgsz squares; one image alone gets the
        # smaller rectangle that fits it. On CPU that makes per-image calls ~2x faster than one
        # batched call (benchmarks/bench_experts.py), so only a GPU takes the batch at once.
        self.micro_batch = 1 if self.device == "cpu" else 64

    def predict(self, images: list[Image.Image]) -> list[list[dict[str, Any]]]:
        results = []
        for i in range(0, len(images), self.micro_batch):
            results += self.model.predict(
                [im.convert("RGB") for im in images[i : i + self.micro_batch]],
                conf=self.min_score,
                iou=self.iou,
                max_det=self.max_boxes,
                imgsz=self.imgsz,
                device=self.device,
                verbose=False,
            )
        out = []
        for im, r in zip(images, results):
            b = r.boxes
            names = r.names
            labels = [str(names[int(c)]) for c in b.cls.tolist()]
            out.append(
                detection_rows(b.xyxy.cpu().numpy(), b.conf.cpu().numpy(), labels, im.size, self.max_boxes)
            )
        return out


class OwlVitDetector(Expert):
    """OWL-ViT or OWLv2 from a hub id (local HF cache when offline) or a saved folder."""

    table = "detect"
    needs_queries = True

    def __init__(
        self,
        model: str = "google/owlv2-base-patch16",
        min_score: float = 0.1,
        iou: float = 0.5,
        max_boxes: int = 50,
        queries: list[str] | None = None,
        device: str = "auto",
        base: Path | None = None,
    ):
        require_package("transformers", "transformers", "detect backend 'owlvit'")
        import torch
        from transformers import AutoModelForZeroShotObjectDetection, AutoProcessor

        path = resolve_weights(model, "detect backend 'owlvit'", base)
        try:
            self.processor = AutoProcessor.from_pretrained(path)
            self.model = AutoModelForZeroShotObjectDetection.from_pretrained(path)
        except OSError as e:
            raise ModelUnavailable(f"model: OWL-ViT weights {model!r} could not be loaded here: {e}") from e
        self.device = pick_device(device)
        self.model.eval().to(self.device)
        # OWLv2 pads images to a square (bottom/right) before resizing; its boxes are relative to that square.
        self.pads_to_square = self.model.config.model_type == "owlv2"
        self.max_text_len = int(self.model.config.text_config.max_position_embeddings)
        self.torch = torch
        self.min_score, self.iou, self.max_boxes = min_score, iou, max_boxes
        self.queries = list(queries or [])
        self.model_id = f"owlvit:{model}"

    def predict(
        self, images: list[Image.Image], queries: list[list[str]] | None = None
    ) -> list[list[dict[str, Any]]]:
        if queries is None:
            if not self.queries:
                raise RecipeError(
                    "queries: OWL-ViT needs text queries (recipe queries, or tags from a tag stage)"
                )
            queries = [self.queries] * len(images)
        if len(queries) != len(images):
            raise ValueError(f"{len(queries)} query lists for {len(images)} images")
        out: list[list[dict[str, Any]]] = [[] for _ in images]
        todo = [i for i, q in enumerate(queries) if q]  # no tags, no queries: nothing to look for
        if not todo:
            return out
        from torchvision.ops import batched_nms

        imgs = [images[i].convert("RGB") for i in todo]
        texts = [list(queries[i]) for i in todo]
        inputs = self.processor(
            text=texts, images=imgs, return_tensors="pt", truncation=True, max_length=self.max_text_len
        ).to(self.device)
        with self.torch.inference_mode():
            outputs = self.model(**inputs)
        sizes = [(max(im.size),) * 2 if self.pads_to_square else (im.height, im.width) for im in imgs]
        results = self.processor.post_process_grounded_object_detection(
            outputs, threshold=self.min_score, target_sizes=sizes
        )
        for i, im, q, r in zip(todo, imgs, texts, results):
            boxes, scores, labels = r["boxes"].float(), r["scores"].float(), r["labels"]
            real = labels < len(q)  # the processor pads shorter query lists with " "
            boxes, scores, labels = boxes[real], scores[real], labels[real]
            keep = batched_nms(boxes, scores, labels, self.iou)
            b, s, lab = boxes[keep].cpu().numpy(), scores[keep].cpu().numpy(), labels[keep].tolist()
            out[i] = detection_rows(b, s, [q[j] for j in lab], im.size, self.max_boxes)
        return out


#: label -> cascade file in ``cv2.data.haarcascades`` (opencv-python-headless ships these XML files)
HAAR_CASCADES = {
    "face": "haarcascade_frontalface_default.xml",
    "cat face": "haarcascade_frontalcatface_extended.xml",
    "person": "haarcascade_fullbody.xml",
    "upper body": "haarcascade_upperbody.xml",
    "eye": "haarcascade_eye.xml",
    "smile": "haarcascade_smile.xml",
    "license plate": "haarcascade_russian_plate_number.xml",
}
HAAR_DEFAULT = ("face", "cat face", "person")


class HaarDetector(Expert):
    """OpenCV cascades (Viola & Jones 2001; Lienhart's extended Haar features), weights in the OpenCV wheel.

    ``score`` is the share of neighbour votes, ``n / (n + min_neighbors)`` with ``n`` the overlapping
    raw detections OpenCV merged into the box (``detectMultiScale2``): in [0.5, 1) for any accepted
    box and higher when more scales and shifts agree. It ranks boxes; it is not a calibrated probability.
    """

    table = "detect"

    def __init__(
        self,
        labels: list[str] | None = None,
        min_score: float = 0.5,
        max_boxes: int = 50,
        max_side: int = 640,
        min_neighbors: int = 5,
    ):
        import cv2

        labels = list(labels or HAAR_DEFAULT)
        unknown = [lb for lb in labels if lb not in HAAR_CASCADES]
        if unknown:
            raise RecipeError(
                f"queries: {unknown} have no Haar cascade; backend haar detects: {', '.join(HAAR_CASCADES)}"
            )
        if not hasattr(cv2, "CascadeClassifier"):
            # opencv-python 5.x (pulled by ultralytics) and the core's opencv-python-headless 4.x both
            # write cv2/; the mix imports but has lost most of its API (../shared/OFFLINE.md)
            raise ModelUnavailable(
                f"detect backend 'haar': the installed OpenCV ({getattr(cv2, '__file__', '?')}) is a broken mix of "
                "opencv-python 5.x and opencv-python-headless 4.x; fix it with: pip uninstall -y opencv-python "
                "&& pip install --force-reinstall --no-deps 'opencv-python-headless>=4.8,<5'"
            )
        self.cv2 = cv2
        self.cascades = {
            lb: cv2.CascadeClassifier(cv2.data.haarcascades + HAAR_CASCADES[lb]) for lb in labels
        }
        self.min_score, self.max_boxes, self.max_side, self.min_neighbors = (
            min_score,
            max_boxes,
            max_side,
            min_neighbors,
        )
        self.model_id = "haar:" + ",".join(labels)

    def _one(self, image: Image.Image) -> list[dict[str, Any]]:
        gray = np.asarray(image.convert("L"))
        h, w = gray.shape
        scale = min(1.0, self.max_side / max(h, w))
        if scale < 1.0:
            gray = self.cv2.resize(
                gray, (round(w * scale), round(h * scale)), interpolation=self.cv2.INTER_AREA
            )
        gray = self.cv2.equalizeHist(gray)
        boxes, scores, labels = [], [], []
        for label, cascade in self.cascades.items():
            found, votes = cascade.detectMultiScale2(gray, scaleFactor=1.1, minNeighbors=self.min_neighbors)
            for (x, y, bw, bh), n in zip(np.asarray(found).reshape(-1, 4), np.asarray(votes).reshape(-1)):
                score = float(n) / (float(n) + self.min_neighbors)
                if score >= self.min_score:
                    boxes.append([x / scale, y / scale, (x + bw) / scale, (y + bh) / scale])
                    scores.append(score)
                    labels.append(label)
        if not boxes:
            return []
        return detection_rows(np.array(boxes), np.array(scores), labels, image.size, self.max_boxes)

    def predict(self, images: list[Image.Image]) -> list[list[dict[str, Any]]]:
        return [self._one(im) for im in images]


def make_detector(config: Any, base: Path | None = None) -> Expert:
    """Build the detector of a recipe ``detect`` stage config (``DetectConfig``)."""
    c = config
    if c.backend == "haar":
        return HaarDetector(list(c.queries) or None, c.min_score, c.max_boxes)
    if c.backend == "yolo":
        return YoloDetector(c.model, c.min_score, c.iou, c.max_boxes, c.device, base, imgsz=c.imgsz)
    if c.backend == "owlvit":
        model = c.model if c.model != "yolov8n.pt" else "google/owlv2-base-patch16"
        return OwlVitDetector(model, c.min_score, c.iou, c.max_boxes, c.queries, c.device, base)
    raise RecipeError(f"detect backend={c.backend!r} is not valid; use haar, yolo or owlvit")
