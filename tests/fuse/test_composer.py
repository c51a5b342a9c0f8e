"""The deterministic captioner: exact output, determinism, and faithfulness to its evidence."""

from __future__ import annotations

import random

from loupe.pipeline.stages.fuse.checks import check_caption, object_vocabulary
from loupe.pipeline.stages.fuse.composer import compose, position, size_word
from loupe.pipeline.stages.fuse.prompt import Evidence

EV = Evidence(
    alt_text="A red bus on Main Street.",
    boxes=[
        {"label": "person", "box": [0.7, 0.3, 0.8, 0.95], "score": 0.95},
        {"label": "person", "box": [0.85, 0.4, 0.9, 0.6], "score": 0.9},
        {"label": "bus", "box": [0.1, 0.25, 0.667, 0.9], "score": 0.8},
    ],
    ocr=[
        {"line": 0, "text": "MAIN ST", "box": [0.2, 0.1, 0.4, 0.15], "score": 0.99},
        {"line": 1, "text": "NO 42", "box": [0.2, 0.5, 0.3, 0.55], "score": 0.9},
    ],
    tags=[{"tag": "double-decker bus", "score": 0.7}, {"tag": "street", "score": 0.2}],
    width=640,
    height=480,
)


def test_compose_exact():
    assert compose(EV) == (
        'This landscape image (640x480 pixels) comes with the description "A red bus on Main Street". '
        "Its content suggests double-decker bus and street. "
        "Visible objects include two persons and a bus. "
        "A person appears on the right. "
        "A large bus appears in the center. "
        'The image contains 2 lines of text, starting at the top left: "MAIN ST"; "NO 42".'
    )


def test_compose_without_evidence_and_single_ocr_line():
    ev = Evidence(None, [], [{"line": 0, "text": "EXIT", "box": [0.4, 0.4, 0.6, 0.6], "score": 1.0}], [], 300, 400)
    assert compose(ev) == 'This portrait image (300x400 pixels) has no accompanying description. Text in the image reads "EXIT".'


def test_position_and_size_words():
    assert position([0.0, 0.0, 0.2, 0.2]) == "at the top left"
    assert position([0.4, 0.8, 0.6, 1.0]) == "at the bottom"
    assert position([0.0, 0.4, 0.2, 0.6]) == "on the left"
    assert size_word([0, 0, 0.5, 0.5]) == "large " and size_word([0, 0, 0.1, 0.1]) == "small "
    assert size_word([0, 0, 0.2, 0.2]) == ""


def _random_evidence(rng: random.Random, vocab: list[str]) -> Evidence:
    boxes = []
    for _ in range(rng.randint(0, 5)):
        x1, y1 = rng.random() * 0.8, rng.random() * 0.8
        boxes.append({"label": rng.choice(vocab), "box": [x1, y1, x1 + 0.2, y1 + 0.2], "score": rng.random()})
    ocr = [{"line": i, "text": rng.choice(["EXIT", "MAIN ST", "TOTAL 42.50", "Open 24 hours"]),
            "box": [0.1, 0.1 * i, 0.5, 0.1 * i + 0.05], "score": 1.0} for i in range(rng.randint(0, 3))]
    tags = [{"tag": rng.choice(vocab), "score": 0.5} for _ in range(rng.randint(0, 3))]
    alt = rng.choice([None, "a photo", "holiday snapshot of the family"])
    return Evidence(alt, boxes, ocr, tags, rng.randint(10, 2000), rng.randint(10, 2000))


def test_compose_is_deterministic_and_faithful():
    """Over 300 random evidence sets: same input -> same text; every OCR word and every detected label
    is named (coverage 1.0) and no object outside the evidence is named (no hallucination flag)."""
    vocab = sorted(object_vocabulary())
    rng = random.Random(7)
    for _ in range(300):
        ev = _random_evidence(rng, vocab)
        cap = compose(ev)
        assert cap == compose(Evidence(ev.alt_text, list(ev.boxes), list(ev.ocr), list(ev.tags), ev.width, ev.height))
        chk = check_caption(cap, ev)
        assert chk.hallucinated == [], (cap, chk)
        assert chk.ocr_coverage in (None, 1.0), (cap, chk)
        assert chk.label_coverage in (None, 1.0), (cap, chk)
