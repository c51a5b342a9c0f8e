"""The DenseFusion prompt, byte for byte, for a sample with known boxes, OCR and alt-text.

The golden paper prompt is DenseFusion-1M (arXiv 2407.08303) App. C.2 "Prompt for GPT-4V", typed here
from the paper (policies 1-18, the external-information paragraph, then the slots) so that a change
to the template file shows up as a diff against the paper, not against itself.
"""

from __future__ import annotations

import pytest

from loupe.pipeline.errors import RecipeError
from loupe.pipeline.stages.fuse.prompt import (
    Evidence,
    PerceptualFusionPrompt,
    select_boxes,
    size_bin,
    template_fingerprint,
)

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
    assert PerceptualFusionPrompt("loupe_v1").render(Evidence.from_row(ROW)) == GOLDEN


def test_prompt_without_evidence_says_none():
    text = PerceptualFusionPrompt("loupe_v1").render(Evidence.from_row({"alt_text": "", "width": 1, "height": 1}))
    assert "World Knowledge: (none)\nDetection Box:\n(none)\nImage Tags: (none)\nOCR:\n(none)\n" in text


def test_prompt_version_and_unknown_template():
    p = PerceptualFusionPrompt()
    assert p.version == f"densefusion_gpt4v@{template_fingerprint('densefusion_gpt4v')}"
    assert len(p.version.split("@")[1]) == 12
    with pytest.raises(RecipeError, match="prompt_template: 'nope' is not a template; valid: .*densefusion_gpt4v"):
        PerceptualFusionPrompt("nope")


def test_evidence_json_rounds_boxes():
    ev = Evidence.from_row(ROW)
    assert '"box": [0.1, 0.25, 0.667, 0.9]' in ev.to_json()
    assert '"tags": ["double-decker bus", "street"]' in ev.to_json()


PAPER_POLICIES = [
    "The generated caption must be comprehensive and detailed plain text, covering as many aspects / "
    "content / areas / contents of the image as possible.",
    "You may describe the foreground / background / salient objects.",
    "When describing objects, please endeavor to include as much of the following information:",
    "textures / attributes / locations / presence / status / characteristics / numbers of objects",
    "relative positions between objects",
    "The composition / color / layout / texture of image should also be considered.",
    "You may describe the elements one by one with details.",
    'If there are common sense or world knowledge, for example, species, celebrities, scenic spots and '
    'historical sites, you must state them explicitly instead of using phrases like "a person", "a place", etc.',
    "Other objective and subjective details that can help understand and reproduce the image.",
    "Text contents must be appeared in the caption if there exists. Keep the original language of text content.",
    "The description should be purely factual, with no subjective speculation.",
    "If there are some statement are inferred, just state the conclusion. DO NOT add the evidence or thought chain.",
    "DO NOT add description associated with aspects like mood or atmosphere.",
    'DO NOT including any reasoning description like "probably because" or "appears to be"',
    'DO NOT add any unnecessary speculation about the things that are not part of the image such as "the image '
    'is inspiring to viewers" or "seeing this makes you feel joy".',
    'DO NOT add things such as "creates a unique and entertaining visual", as these descriptions are '
    "interpretations and not a part of the image itself.",
    "DO NOT analyze the text content in the image, and only tell the content themselves.",
    "DO NOT add any further analysis to the image.",
    'DO NOT use introductory phrases like "The image showcases", "The photo captures", "The image shows" and more.',
    "The caption should NO longer than 192 words.",
]
NUMBERS = ["1", "2", "3", "3.1", "3.2", "4", "5", "6", "7", "8", "9", "10", "11", "12", "13", "14", "15", "16",
           "17", "18"]
PAPER_HEAD = (
    "You are the most powerful large multimodal model which is responsible for generating image description to "
    "help the blind people to understand the world. Since they cannot see, so you should describe the image as "
    "detailed as possible. The description of image must abide by the following policies:\n"
    + "".join(f"{n}. {p}\n" for n, p in zip(NUMBERS, PAPER_POLICIES))
    + "\nBesides image, you are also provided with some external information to help you understanding the image "
    "including a short caption, detection results, ocr results, attributes, etc. The short caption might contains "
    "rich world knowledge which should be considered in the final caption but also may not have any relevance to "
    "the image. Besides, there might be some errors in the external information including detail missing or wrong "
    "details. If there are mistakes, you may ignore them. Note that external information like bounding box are "
    "just a reference information, some details like bounding box should not be presented in the final caption "
    "since it’s not a common information in caption. If the external information is not used, DO NOT specify the "
    "reason of not using them.\n\n"
)
PAPER_SLOTS = """[External Information]:
[World Knowledge]: A red bus on Main Street
[Detection Box]:
- person: [0.700, 0.300, 0.800, 0.950]
- bus: [0.100, 0.250, 0.667, 0.900]
[OCR]:
- MAIN ST
- NO 42
[IMAGE]:
"""


def test_paper_prompt_golden():
    assert PerceptualFusionPrompt().render(Evidence.from_row(ROW)) == PAPER_HEAD + PAPER_SLOTS
    assert PerceptualFusionPrompt().name == "densefusion_gpt4v"  # the paper's prompt is the default


def test_paper_prompt_empty_slots_keep_their_headers():
    text = PerceptualFusionPrompt().render(Evidence.from_row({"alt_text": None, "width": 1, "height": 1}))
    assert text.endswith("[External Information]:\n[World Knowledge]:\n[Detection Box]:\n[OCR]:\n[IMAGE]:\n")


def test_engine_prompt_golden():
    text = PerceptualFusionPrompt("densefusion_engine").render(Evidence.from_row(ROW))
    assert text.startswith(
        "You are a powerful multimodal model and you should generate detailed descriptions of this image, using "
        "additional external information such as [Caption], [Detection Box], and [OCR]."
    )
    assert text.endswith("If external information is not used, do not specify why.\n\n" + PAPER_SLOTS)


def _box(label, score, side):  # a square box of `side` pixels in a 1000x1000 image
    return {"label": label, "score": score, "box": [0.0, 0.0, side / 1000, side / 1000]}


def test_select_boxes_threshold_then_small_objects_first():
    boxes = [_box(f"large{i}", 0.95 - i / 100, 500) for i in range(6)]
    boxes += [_box("medium", 0.5, 50), _box("small_a", 0.45, 20), _box("small_b", 0.4, 10)]
    boxes += [_box("tiny_unsure", 0.2, 10)]  # below the threshold: never selected
    picked = select_boxes(boxes, min_score=0.3, max_boxes=4, width=1000, height=1000)
    # one per size bin in turn (small, medium, large), small first: both small boxes beat 5 of the large
    assert [b["label"] for b in picked] == ["large0", "medium", "small_a", "small_b"]
    assert [b["label"] for b in select_boxes(boxes, 0.3, 20, 1000, 1000)] == [
        "large0", "large1", "large2", "large3", "large4", "large5", "medium", "small_a", "small_b"]
    assert size_bin([0, 0, 0.031, 0.031], 1000, 1000) == 0 and size_bin([0, 0, 0.05, 0.05], 1000, 1000) == 1
