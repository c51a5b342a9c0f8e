"""One interface for every visual expert (OCR, detection, tagging, embeddings).

An expert loads its model once in ``__init__`` and maps a batch of decoded RGB images to
rows for its table (see ``loupe.schemas.tables``). It knows nothing of uids, shards or Ray:
the pipeline stage adds ``uid`` and ``model`` and isolates per-image failures.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

from PIL import Image


class Expert(ABC):
    #: table the rows go to: "ocr" | "detect" | "tags" | "embeddings"
    table: ClassVar[str]
    #: model id recorded in every row (hub id, path or packaged model name)
    model_id: str = "unknown"

    @abstractmethod
    def predict(self, images: list[Image.Image]) -> list[list[dict[str, Any]]]:
        """Return, per input image, a list of row dicts for ``table`` without ``uid``/``model``."""


def round_box(box, width: int, height: int) -> list[float]:
    """Pixel box (x1, y1, x2, y2) -> normalised to [0, 1], clipped, 3 decimals."""
    x1, y1, x2, y2 = (float(v) for v in box)
    w, h = float(max(width, 1)), float(max(height, 1))

    def c(v: float, d: float) -> float:
        return round(min(max(v / d, 0.0), 1.0), 3)

    return [c(min(x1, x2), w), c(min(y1, y2), h), c(max(x1, x2), w), c(max(y1, y2), h)]
