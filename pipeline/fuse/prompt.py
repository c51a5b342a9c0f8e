"""DenseFusion's perceptual-fusion prompt: expert evidence + alt-text -> captioner input.

The captioner sees an "External Information" block (DenseFusion, Li et al. 2024, Sec. 3.2):
*World Knowledge* (the alt-text), *Detection Box* lines ``- label: [x1, y1, x2, y2]`` with boxes
normalised to [0, 1] and 3 decimals, image tags, and OCR lines in reading order, followed by the
instruction to write one dense paragraph (~190 words) that uses the evidence without inventing
anything. Templates are data files in ``templates/<name>.txt``; their sha256 enters the run's
lineage hash, so editing a template starts a new run directory.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loupe.pipeline.errors import RecipeError

TEMPLATE_DIR = Path(__file__).parent / "templates"
NONE = "(none)"


def template_path(name: str) -> Path:
    p = TEMPLATE_DIR / f"{name}.txt"
    if not p.is_file():
        valid = sorted(t.stem for t in TEMPLATE_DIR.glob("*.txt"))
        raise RecipeError(f"prompt_template: {name!r} is not a template; valid: {', '.join(valid)}")
    return p


def template_fingerprint(name: str) -> str:
    return hashlib.sha256(template_path(name).read_bytes()).hexdigest()[:12]


def fmt_box(box) -> str:
    return "[" + ", ".join(f"{float(v):.3f}" for v in box) + "]"


@dataclass
class Evidence:
    """Everything the experts and the source said about one image."""

    alt_text: str | None = None
    boxes: list[dict[str, Any]] = field(default_factory=list)  # {label, box, score}
    ocr: list[dict[str, Any]] = field(default_factory=list)  # {line, text, box, score}, reading order
    tags: list[dict[str, Any]] = field(default_factory=list)  # {tag, score}, best first
    width: int | None = None
    height: int | None = None

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Evidence:
        """From a batch row with ``alt_text``, ``width``, ``height`` and evidence list columns."""
        ocr = sorted(row.get("ocr") or [], key=lambda r: r.get("line") or 0)
        boxes = sorted(row.get("detect") or [], key=lambda r: -(r.get("score") or 0))
        tags = sorted(row.get("tags") or [], key=lambda r: -(r.get("score") or 0))
        alt = (row.get("alt_text") or "").strip() or None
        return cls(alt, boxes, ocr, tags, row.get("width"), row.get("height"))

    def to_json(self) -> str:
        return json.dumps(
            {
                "alt_text": self.alt_text,
                "detect": [{"label": b["label"], "box": [round(float(v), 3) for v in b["box"]],
                            "score": round(float(b["score"]), 3)} for b in self.boxes],
                "ocr": [{"text": o["text"], "box": [round(float(v), 3) for v in o["box"]]} for o in self.ocr],
                "tags": [t["tag"] for t in self.tags],
            },
            ensure_ascii=False,
        )


class PerceptualFusionPrompt:
    """``PerceptualFusionPrompt("densefusion_v1").render(evidence)`` -> the captioner input string."""

    def __init__(self, template: str = "densefusion_v1"):
        self.name = template
        self.text = template_path(template).read_text(encoding="utf-8")
        self.version = f"{template}@{template_fingerprint(template)}"

    def render(self, ev: Evidence) -> str:
        boxes = "\n".join(f"- {b['label']}: {fmt_box(b['box'])}" for b in ev.boxes) or NONE
        ocr = "\n".join(f"- {o['text']}" for o in ev.ocr) or NONE
        tags = ", ".join(t["tag"] for t in ev.tags) or NONE
        return self.text.format(
            world_knowledge=ev.alt_text or NONE, detection_boxes=boxes, tags=tags, ocr_lines=ocr
        )
