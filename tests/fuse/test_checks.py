"""Caption checks with hand-computed values."""

from __future__ import annotations

import pytest

from loupe.pipeline.stages.fuse.checks import check_caption, object_vocabulary, words
from loupe.pipeline.stages.fuse.prompt import Evidence

EV = Evidence(
    alt_text="A red bus in town",
    boxes=[
        {"label": "bus", "box": [0.1, 0.1, 0.6, 0.9], "score": 0.9},
        {"label": "person", "box": [0.7, 0.3, 0.8, 0.9], "score": 0.8},
        {"label": "traffic light", "box": [0.9, 0.0, 0.95, 0.2], "score": 0.7},
    ],
    ocr=[
        {"line": 0, "text": "MAIN ST", "box": [0.2, 0.1, 0.4, 0.15], "score": 0.99},
        {"line": 1, "text": "No. 42 a", "box": [0.2, 0.5, 0.3, 0.55], "score": 0.9},
    ],
    tags=[{"tag": "street", "score": 0.5}],
)


def test_checks_hand_computed():
    cap = "A red bus waits beside two people, a dog and the traffic lights. The sign reads MAIN ST."
    chk = check_caption(cap, EV)
    assert chk.n_words == 18
    # OCR words of 2+ chars: main, st, no, 42 ("a" is too short); the caption has main and st -> 2/4
    assert chk.ocr_coverage == pytest.approx(0.5)
    # labels: bus (yes), person ("people" is not "person"), traffic light (plural "lights" counts) -> 2/3
    assert chk.label_coverage == pytest.approx(2 / 3)
    # object words named but never in the evidence: dog, sign (bus/street/light are in the evidence)
    assert chk.hallucinated == ["dog", "sign"]


def test_checks_without_evidence_are_none():
    chk = check_caption("A dog.", Evidence())
    assert (chk.n_words, chk.ocr_coverage, chk.label_coverage, chk.hallucinated) == (2, None, None, ["dog"])


def test_evidence_from_alt_text_tags_and_ocr_is_not_hallucination():
    ev = Evidence(alt_text="my dogs", tags=[{"tag": "cat", "score": 0.3}],
                  ocr=[{"line": 0, "text": "BICYCLE PARKING", "box": [0, 0, 1, 1], "score": 1.0}])
    assert check_caption("Two dogs, a cat and bicycles.", ev).hallucinated == []


def test_vocabulary_is_objects_not_image_words():
    v = object_vocabulary()
    assert {"dog", "bus", "person", "sign", "car"} <= v
    # words that describe the picture itself would flag every caption
    assert not {"text", "portrait", "image", "light"} & v
    assert words("MAIN-St, 42!") == ["main", "st", "42"]
