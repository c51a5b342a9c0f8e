"""DenseFusion's perceptual-fusion prompt: expert evidence + alt-text -> captioner input.

Templates are data files in ``templates/<name>.txt``; their sha256 enters the run's lineage hash,
so editing a template starts a new run directory.

* ``densefusion_gpt4v`` (the default) is the paper's own prompt, App. C.2 "Prompt for GPT-4V" of
  DenseFusion-1M (Li et al. 2024, arXiv 2407.08303): the 18 policies (192-word limit in policy 18),
  the paragraph on external information, then the slots in the paper's order and spelling::

      [External Information]:
      [World Knowledge]: {SHORT CAPTION}
      [Detection Box]:
      - {OBJECT AA}: [x1, y1, x2, y2]
      [OCR]:
      - {SENTENCE A}
      [IMAGE]:

  Boxes are normalised to [0, 1] with 3 decimals, as in the paper's Fig. 3 ("person: [0.353, 0.096,
  0.892, 0.991]"). The PDF text runs the slots together on one line and prints the policies as
  "- 1." bullets; we put each slot and policy on its own line. Fig. 3 also lists image tags among the
  fusion inputs (``<Image Tag>``), but the appendix template has no tag slot: we follow the appendix,
  and tags reach the caption through the open-vocabulary detector's queries (``detect`` stage) and
  the ``loupe_v1`` template.
* ``densefusion_engine`` is App. C.2 "Prompt for Caption Engine", the short prompt DenseFusion's
  fine-tuned LLaVA-1.6 caption engine was trained with (same slots).
* ``loupe_v1`` is Loupe's earlier paraphrase with an ``Image Tags`` slot and ``(none)`` for empty slots.

Box selection follows §3.2.1 ("we retain the objects with high confidence over the predefined
threshold, and adopt a balanced sampling strategy to highlight small-scale objects"):
:func:`select_boxes`.
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


#: COCO's object-size bins (area in pixels): small < 32², medium < 96², large otherwise
SMALL_AREA, MEDIUM_AREA = 32 * 32, 96 * 96


def size_bin(box, width: int | None, height: int | None) -> int:
    """0 small, 1 medium, 2 large (COCO bins in pixels; by share of a 640x480 image when size is unknown)."""
    x1, y1, x2, y2 = (float(v) for v in box)
    w, h = (width, height) if width and height else (640, 480)
    area = max(0.0, x2 - x1) * w * max(0.0, y2 - y1) * h
    return 0 if area < SMALL_AREA else 1 if area < MEDIUM_AREA else 2


def select_boxes(
    boxes: list[dict[str, Any]], min_score: float, max_boxes: int, width: int | None, height: int | None
) -> list[dict[str, Any]]:
    """§3.2.1: keep boxes scoring at least ``min_score``, then balanced sampling across object sizes.

    The paper names the rule, not its numbers or bins. Ours: COCO's small/medium/large bins; take one
    box per bin in turn, small first, each bin best score first, until ``max_boxes``. So when boxes
    must be left out, small objects are never crowded out by large ones (generalist MLLMs already see
    the large ones), and the choice is deterministic. The result is listed best score first.
    """
    kept = sorted((b for b in boxes if float(b["score"]) >= min_score), key=lambda b: -float(b["score"]))
    if len(kept) <= max_boxes:
        return kept
    bins: list[list[dict[str, Any]]] = [[], [], []]
    for b in kept:
        bins[size_bin(b["box"], width, height)].append(b)
    picked: list[dict[str, Any]] = []
    while len(picked) < max_boxes:
        for queue in bins:
            if queue and len(picked) < max_boxes:
                picked.append(queue.pop(0))
    return sorted(picked, key=lambda b: -float(b["score"]))


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
                "detect": [
                    {
                        "label": b["label"],
                        "box": [round(float(v), 3) for v in b["box"]],
                        "score": round(float(b["score"]), 3),
                    }
                    for b in self.boxes
                ],
                "ocr": [{"text": o["text"], "box": [round(float(v), 3) for v in o["box"]]} for o in self.ocr],
                "tags": [t["tag"] for t in self.tags],
            },
            ensure_ascii=False,
        )


class PerceptualFusionPrompt:
    """``PerceptualFusionPrompt("densefusion_gpt4v").render(evidence)`` -> the captioner input string.

    Slots: ``{world_knowledge}`` (alt-text), ``{detection_lines}`` / ``{ocr_items}`` (one ``\\n- ...``
    per item, empty when none: the paper's layout) and, for ``loupe_v1``, ``{detection_boxes}``,
    ``{ocr_lines}``, ``{tags}`` (``(none)`` when empty).
    """

    def __init__(self, template: str = "densefusion_gpt4v"):
        self.name = template
        self.text = template_path(template).read_text(encoding="utf-8")
        self.version = f"{template}@{template_fingerprint(template)}"

    def render(self, ev: Evidence) -> str:
        box_list = [f"- {b['label']}: {fmt_box(b['box'])}" for b in ev.boxes]
        ocr_list = [f"- {o['text']}" for o in ev.ocr]
        boxes = "\n".join(box_list) or NONE
        ocr = "\n".join(ocr_list) or NONE
        tags = ", ".join(t["tag"] for t in ev.tags) or NONE
        box_lines = "".join("\n" + line for line in box_list)
        ocr_items = "".join("\n" + line for line in ocr_list)
        world = ev.alt_text or ("" if "{detection_lines}" in self.text else NONE)
        text = self.text.format(
            world_knowledge=world,
            detection_boxes=boxes,
            tags=tags,
            ocr_lines=ocr,
            detection_lines=box_lines,
            ocr_items=ocr_items,
        )
        return "\n".join(line.rstrip(" ") for line in text.split("\n"))
