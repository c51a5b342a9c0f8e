"""DualFocus policy against a stub model whose answers and losses are known."""

from __future__ import annotations

import pytest
from PIL import Image

from loupe.eval.dualfocus import DualFocusItem, dualfocus_answer, focus_crop_box, mcq_letter, parse_box


class StubModel:
    """Answers by the kind of prompt; losses from a table; records every call."""

    def __init__(self, base="a cat", box="[0.1, 0.2, 0.3, 0.4]", focus="a dog.", losses=None):
        self.replies = {"base": base, "box": box, "focus": focus}
        self.losses = losses or {}
        self.calls: list[tuple[str, list]] = []

    def _kind(self, q):
        last = q.turns[-1][1]
        return "box" if "bounding box" in last else "focus" if "combine" in last else "base"

    def answer(self, queries, max_new_tokens=128):
        self.calls.append(("answer", list(queries)))
        return [self.replies[self._kind(q)] for q in queries]

    def answer_loss(self, queries, answers):
        self.calls.append(("loss", list(zip(queries, answers))))
        return [self.losses[a] for a in answers]


def test_parse_box():
    assert parse_box("[0.10, 0.2, 0.30, 0.4]") == (0.1, 0.2, 0.3, 0.4)
    assert parse_box("first 1,2,3,4 then 5, 6, 7, 8") == (1.0, 2.0, 3.0, 4.0)
    assert parse_box("no box here, 1, 2") is None


def test_crop_geometry_by_hand():
    # 200x100 image, box (20,20)-(60,40) px: centre (40,30), square side 40 -> (20,10,60,50),
    # +25 px -> (-5,-15,85,75) -> clipped (0,0,85,75)
    assert focus_crop_box((0.1, 0.2, 0.3, 0.4), 200, 100) == (0, 0, 85, 75)
    # at the bottom-right corner: (180,80,200,100) -> clip to (180,80,199,99) -> (155,55,224,124) -> (155,55,199,99)
    assert focus_crop_box((0.9, 0.8, 1.0, 1.0), 200, 100) == (155, 55, 199, 99)
    # tall box: side = height 40 around centre (100, 50): (80,30,120,70) -> (55,5,145,95)
    assert focus_crop_box((0.45, 0.3, 0.55, 0.7), 200, 100) == (55, 5, 145, 95)
    assert focus_crop_box((0.0, 0.0, 0.0, 0.0), 200, 100) is None  # upstream's expand_box assert


def test_lower_loss_answer_is_returned_and_crop_is_the_geometry():
    img = Image.new("RGB", (200, 100))
    item = DualFocusItem(
        img, "What animal?\nAnswer the question using a single word or phrase.", "What animal?"
    )
    m = StubModel(losses={"a cat": 2.0, "a dog": 1.0})
    (r,) = dualfocus_answer(m, [item])
    assert r.crop == (0, 0, 85, 75)
    assert (r.answer, r.chosen, r.focus_answer) == ("a dog", "focus", "a dog")  # "." stripped
    focus_query = m.calls[2][1][0]
    assert [im.size for im in focus_query.images] == [(200, 100), (85, 75)]
    assert focus_query.turns[0][1].endswith("this question asks: What animal?")
    assert focus_query.turns[1] == ("assistant", "[0.1, 0.2, 0.3, 0.4]")
    scored = m.calls[3][1]
    assert [a for _, a in scored] == ["a cat", "a dog"]
    assert (
        scored[0][0]
        .turns[-1][1]
        .endswith("this question: What animal?\nAnswer the question using a single word or phrase")
    )
    m2 = StubModel(losses={"a cat": 1.0, "a dog": 3.0})
    assert dualfocus_answer(m2, [item])[0].answer == "a cat"
    tie = StubModel(losses={"a cat": 1.0, "a dog": 1.0})
    assert dualfocus_answer(tie, [item])[0].chosen == "base"  # argmin keeps the first


def test_failed_box_returns_base_answer_without_more_calls():
    item = DualFocusItem(Image.new("RGB", (64, 64)), "Q?", "Q?")
    m = StubModel(box="I cannot tell.")
    (r,) = dualfocus_answer(m, [item])
    assert (r.answer, r.chosen, r.reason) == ("a cat", "base", "no box parsed")
    assert [c for c, _ in m.calls] == ["answer", "answer"]  # base + box only


def test_mcq_validity_rules_and_option_text_scoring():
    img = Image.new("RGB", (100, 100))
    item = DualFocusItem(img, "Which?\nA. red\nB. blue", "Which?", options=["red", "blue"])
    both = StubModel(base="A", focus="B", losses={"red": 2.0, "blue": 0.5})
    r = dualfocus_answer(both, [item])[0]
    assert r.answer == "B" and r.losses == (2.0, 0.5)
    assert [a for _, a in both.calls[-1][1]] == ["red", "blue"]  # option texts are scored
    only_focus = StubModel(base="I don't know", focus="B")
    assert dualfocus_answer(only_focus, [item])[0].answer == "B"
    neither = StubModel(base="zzz", focus="qqq")
    r = dualfocus_answer(neither, [item])[0]
    assert r.answer == "zzz" and r.losses is None
    assert mcq_letter("the blue one", ["red", "blue"]) == "B"  # option text contained
    assert mcq_letter("blue it is", ["red", "blue"]) == "b"  # upstream: a leading a-d wins first
    assert mcq_letter("c) fish", ["a", "b", "c"]) == "c"


def test_batch_mixes_parsed_and_failed(tmp_path):
    items = [DualFocusItem(Image.new("RGB", (50, 50)), f"Q{i}", f"Q{i}") for i in range(3)]

    class Mixed(StubModel):
        def answer(self, queries, max_new_tokens=128):
            self.calls.append(("answer", list(queries)))
            out = []
            for q in queries:
                k = self._kind(q)
                if k == "box":
                    out.append("none" if "Q1" in q.turns[-1][1] else "[0.2, 0.2, 0.6, 0.6]")
                else:
                    out.append({"base": "x", "focus": "y"}[k])
            return out

    m = Mixed(losses={"x": 1.0, "y": 0.0})
    rs = dualfocus_answer(m, items)
    assert [r.answer for r in rs] == ["y", "x", "y"]
    assert len(m.calls[2][1]) == 2  # one batched focus call for the two parsed boxes


@pytest.mark.slow
def test_dualfocus_runs_on_tiny_llava(tmp_path):
    from loupe.eval.model import load_vlm
    from loupe.eval.tiny import make_tiny_llava

    m = load_vlm(make_tiny_llava(tmp_path / "m"))
    item = DualFocusItem(Image.new("RGB", (60, 40), "red"), "Color?", "Color?")
    (r,) = dualfocus_answer(m, [item], max_new_tokens=4)
    assert isinstance(r.answer, str) and r.chosen in ("base", "focus")
