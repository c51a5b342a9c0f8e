"""Conversation builders: caption / ocr / grounding / source_qa turns and seeded phrasing."""

from __future__ import annotations

from loupe.pipeline.stages.export.conversations import (
    DETAIL_PROMPTS,
    GROUNDING_PROMPT,
    OCR_PROMPTS,
    build_turns,
    sample_rng,
    with_image_token,
)

ALL = ["caption", "ocr", "grounding", "source_qa"]
ROW = {
    "uid": "abc123",
    "captions": [{"caption": "A red bus on Main Street with two people."}],
    "ocr": [
        {"line": 1, "text": "NO 42", "box": [0.2, 0.5, 0.3, 0.55], "score": 0.9},
        {"line": 0, "text": " MAIN ST ", "box": [0.2, 0.1, 0.4, 0.15], "score": 0.99},
        {"line": 2, "text": "  ", "box": [0.2, 0.6, 0.3, 0.65], "score": 0.9},
    ],
    "detect": [
        {"label": "person", "box": [0.7, 0.3, 0.8, 0.95], "score": 0.6},
        {"label": "person", "box": [0.1, 0.3, 0.2, 0.9], "score": 0.9},
        {"label": "bus", "box": [0.1, 0.25, 0.66666, 0.9], "score": 0.8},
        {"label": "dog", "box": [0.0, 0.0, 0.1, 0.1], "score": 0.5},
        {"label": "car", "box": [0.0, 0.0, 0.1, 0.1], "score": 0.4},
    ],
    "conversations": [{"from": "human", "value": "What colour is the bus?"}, {"from": "gpt", "value": "Red."}],
}


def test_all_tasks_in_order():
    t = build_turns(ROW, ALL, seed=0)
    assert [x["from"] for x in t] == ["human", "gpt"] * 6
    assert t[0]["value"] in DETAIL_PROMPTS and t[1]["value"] == ROW["captions"][0]["caption"]
    assert t[2]["value"] in OCR_PROMPTS and t[3]["value"] == "MAIN ST\nNO 42"  # reading order, blanks dropped
    # grounding: the best box per label, labels by best score, at most 3 labels
    assert [x["value"] for x in t[4:10]] == [
        GROUNDING_PROMPT.format(label="person"), "[0.100, 0.300, 0.200, 0.900]",
        GROUNDING_PROMPT.format(label="bus"), "[0.100, 0.250, 0.667, 0.900]",
        GROUNDING_PROMPT.format(label="dog"), "[0.000, 0.000, 0.100, 0.100]",
    ]
    assert t[10:] == ROW["conversations"]


def test_tasks_select_turns_and_missing_evidence_gives_none():
    assert [x["value"] for x in build_turns(ROW, ["source_qa"], 0)] == ["What colour is the bus?", "Red."]
    assert build_turns({"uid": "x", "captions": [], "ocr": None, "detect": None}, ALL, 0) == []
    assert len(build_turns(ROW, ["ocr", "grounding"], 0)) == 8


def test_phrasing_is_stable_per_uid_and_varies_across_uids():
    a = build_turns(ROW, ALL, seed=0)
    assert build_turns(dict(ROW), ALL, seed=0) == a  # same uid, same phrasing (any batch, any process)
    rng = sample_rng(0, "abc123")
    assert a[0]["value"] == rng.choice(DETAIL_PROMPTS) and a[2]["value"] == rng.choice(OCR_PROMPTS)
    firsts = {build_turns({**ROW, "uid": f"u{i}"}, ["caption"], 0)[0]["value"] for i in range(200)}
    assert firsts == set(DETAIL_PROMPTS)  # every phrasing is used
    seeds = {build_turns(ROW, ["caption"], s)[0]["value"] for s in range(50)}
    assert len(seeds) > 1  # the seed changes the draw


def test_with_image_token_only_first_human_turn():
    turns = [{"from": "system", "value": "sys"}, {"from": "human", "value": "Q1 <image>"},
             {"from": "gpt", "value": "A"}, {"from": "human", "value": "Q2"}]
    out = with_image_token(turns)
    assert [t["value"] for t in out] == ["sys", "<image>\nQ1 ", "A", "Q2"]
    assert turns[1]["value"] == "Q1 <image>"  # input untouched
