"""The DenseFusion prompt, byte for byte, for a sample with known boxes, OCR and alt-text."""

from __future__ import annotations

import pytest

from loupe.pipeline.errors import RecipeError
from loupe.pipeline.fuse.prompt import Evidence, PerceptualFusionPrompt, template_fingerprint

ROW = {
    "uid": "u1",
    "alt_text": "  A red bus on Main Street ",
    "width": 640,
    "height": 480,
    # detections arrive unordered; the prompt lists them best score first
    "detect": [
        {"label": "bus", "box": [0.1, 0.25, 0.66666, 0.9], "score": 0.9},
        {"label": "person", "box": [0.7, 0.3, 0.8, 0.95], "score": 0.95},
    ],
    # OCR rows arrive unordered; the prompt lists them in reading order (line)
    "ocr": [
        {"line": 1, "text": "NO 42", "box": [0.2, 0.5, 0.3, 0.55], "score": 0.9},
        {"line": 0, "text": "MAIN ST", "box": [0.2, 0.1, 0.4, 0.15], "score": 0.99},
    ],
    "tags": [{"tag": "street", "score": 0.2}, {"tag": "double-decker bus", "score": 0.7}],
}

GOLDEN = """You are an expert at describing images in exhaustive, accurate detail. Write one dense paragraph
(about 190 words) that describes the image for someone who cannot see it: the main subjects and
their attributes, their positions and spatial relations, any visible text, the background and the
overall scene. Use the External Information below as evidence: weave the world knowledge in where
it fits, place objects using their detection boxes (coordinates are fractions of width and height,
[x1, y1, x2, y2], origin top-left), and quote visible text exactly as the OCR lines give it. Never
mention objects, text or facts that neither the image nor the External Information supports, and
do not mention the External Information, boxes or coordinates themselves.

External Information:
World Knowledge: A red bus on Main Street
Detection Box:
- person: [0.700, 0.300, 0.800, 0.950]
- bus: [0.100, 0.250, 0.667, 0.900]
Image Tags: double-decker bus, street
OCR:
- MAIN ST
- NO 42

Detailed description:
"""


def test_prompt_golden():
    assert PerceptualFusionPrompt("densefusion_v1").render(Evidence.from_row(ROW)) == GOLDEN


def test_prompt_without_evidence_says_none():
    text = PerceptualFusionPrompt().render(Evidence.from_row({"alt_text": "", "width": 1, "height": 1}))
    assert "World Knowledge: (none)\nDetection Box:\n(none)\nImage Tags: (none)\nOCR:\n(none)\n" in text


def test_prompt_version_and_unknown_template():
    p = PerceptualFusionPrompt()
    assert p.version == f"densefusion_v1@{template_fingerprint('densefusion_v1')}"
    assert len(p.version.split("@")[1]) == 12
    with pytest.raises(RecipeError, match="prompt_template: 'nope' is not a template; valid: .*densefusion_v1"):
        PerceptualFusionPrompt("nope")


def test_evidence_json_rounds_boxes():
    ev = Evidence.from_row(ROW)
    assert '"box": [0.1, 0.25, 0.667, 0.9]' in ev.to_json()
    assert '"tags": ["double-decker bus", "street"]' in ev.to_json()
