"""Golden tests for every scorer; expected values computed by hand from the official rules."""

from __future__ import annotations

import random

import pytest

from loupe.eval.scorers import (
    answer_scores,
    can_infer,
    circular_rotations,
    gqa_accuracy,
    gqa_correct,
    mmbench_circular_hit,
    mme_parse,
    mme_scores,
    normalize_answer,
    pope_metrics,
    pope_parse,
    pope_summary,
    seed_correct,
    sqa_extract_letter,
    sqa_img_accuracy,
    sqa_pred_index,
    vqa_accuracy,
    vqa_mean_accuracy,
)


@pytest.mark.parametrize(
    "raw, norm",
    [
        ("The Two Dogs.", "2 dogs"),  # lower, period stripped, number word, article dropped
        ("1,000", "1000"),  # word_tokenize deletes commas before anything else
        ("U.S.A.", "usa"),  # periods not followed by a digit go
        ("Nine", "9"),
        ("isnt", "isn't"),  # contraction table
        ("isn't", "isn't"),
        ("3.5", "3.5"),  # a period followed by a digit stays
        ("a cat?", "cat"),
        ("t-shirt", "t shirt"),  # "-" not touching a space -> space
        ("red - blue", "red blue"),  # "-" touching a space -> deleted
        ('he said "hi"', "he said hi"),
        ("None", "0"),
        ("Dog, cat", "dog cat"),
        ("the man's hat", "man 's hat"),
        ("  Yes\n", "yes"),
    ],
)
def test_evalai_normalisation(raw, norm):
    assert normalize_answer(raw) == norm


def _official_loo(pred: str, gts: list[str]) -> float:
    """The literal loop of m4c_evaluator.py L225-246, as the reference for the closed form."""
    answers = [normalize_answer(a) for a in gts]
    gt = list(enumerate(answers))
    p = normalize_answer(pred)
    accs = [min(1, len([o for o in gt if o != g and o[1] == p]) / 3) for g in gt]
    return sum(accs) / len(accs) if p in answers else 0.0


def test_vqa_ten_answer_partial_credit():
    gts = ["yes"] * 2 + ["no"] * 8
    assert vqa_accuracy("yes", gts) == pytest.approx(0.6)  # (2*1/3 + 8*2/3) / 10
    assert vqa_accuracy("No.", gts) == pytest.approx(1.0)
    three = ["two"] * 3 + ["3"] * 7  # "two" -> "2"
    assert vqa_accuracy("2", three) == pytest.approx(0.9)  # (3*2/3 + 7*1) / 10
    one = ["red"] + ["blue"] * 9
    assert vqa_accuracy("Red", one) == pytest.approx(0.3)  # (1*0 + 9*1/3) / 10
    assert vqa_accuracy("green", one) == 0.0
    assert vqa_accuracy(None, one) == 0.0  # missing prediction = wrong
    assert answer_scores(three) == pytest.approx({"2": 0.9, "3": 1.0})
    assert vqa_mean_accuracy(["yes", None], [gts, gts]) == pytest.approx(30.0)


def test_vqa_closed_form_equals_official_loop():
    rng = random.Random(0)
    vocab = ["yes", "no", "2", "two", "the cat", "cat", "Red.", "1,000"]
    for _ in range(300):
        gts = [rng.choice(vocab) for _ in range(10)]
        pred = rng.choice(vocab)
        assert vqa_accuracy(pred, gts) == pytest.approx(_official_loo(pred, gts))


def test_gqa():
    assert gqa_correct("Yes.", "yes")
    assert gqa_correct("Left", "left")
    assert not gqa_correct(" yes", "yes")  # no whitespace strip upstream
    assert not gqa_correct(None, "yes")
    assert gqa_accuracy(["Yes.", "no", None], ["yes", "yes", "no"]) == pytest.approx(100 / 3)


def test_pope_parse_and_metrics():
    assert pope_parse("Yes, there is a dog. No cat.") == "yes"  # only the first sentence counts
    assert pope_parse("There is not a cat in the image.") == "no"
    assert pope_parse("No") == "no"
    assert pope_parse("Not really") == "yes"  # upstream tests 'not' case-sensitively
    preds = [
        "Yes, there is a dog.",
        "No, there is not.",
        "There is not a cat in the image.",
        "yes",
        "I see no cat",
    ]
    labels = ["yes", "no", "no", "no", "yes"]
    m = pope_metrics(preds, labels)
    assert (m["tp"], m["tn"], m["fp"], m["fn"]) == (1, 2, 1, 1)
    assert m["accuracy"] == pytest.approx(0.6)
    assert m["precision"] == pytest.approx(0.5)
    assert m["recall"] == pytest.approx(0.5)
    assert m["f1"] == pytest.approx(0.5)
    assert m["yes_ratio"] == pytest.approx(0.4)
    missing = pope_metrics([None, "no"], ["yes", "no"])  # missing counts as wrong, not skipped
    assert missing["n"] == 2 and missing["accuracy"] == pytest.approx(0.5)
    s = pope_summary({"random": {"f1": 0.9, "accuracy": 0.8}, "popular": {"f1": 0.8, "accuracy": 0.7}})
    assert s["f1"] == pytest.approx(85.0) and s["accuracy"] == pytest.approx(75.0)


def test_sqa_letter_extraction_and_fallback():
    assert sqa_extract_letter("A") == "A"
    assert sqa_extract_letter("B. a dog") == "B"
    assert sqa_extract_letter("I think so. The answer is C.") == "C"
    assert sqa_extract_letter("The answer is A. The answer is B.") == "FAILED"  # two matches
    assert sqa_extract_letter("b") == "FAILED"
    assert sqa_extract_letter(None) == "FAILED"
    assert sqa_pred_index("E", 3) == -1  # letter beyond the choices
    assert sqa_pred_index("junk", 3) == -1  # LLaVA-1.5: unparsed is wrong
    picks = [sqa_pred_index("junk", 3, "random", random.Random(7)) for _ in range(3)]
    assert picks == [sqa_pred_index("junk", 3, "random", random.Random(7)) for _ in range(3)]
    assert all(0 <= p < 3 for p in picks)
    items = [
        ("A", 2, 0, True),
        ("The answer is B.", 3, 1, True),
        ("C", 3, 0, True),
        ("A", 2, 0, False),
        (None, 2, 1, True),
    ]
    r = sqa_img_accuracy(items)
    assert r["img_accuracy"] == pytest.approx(50.0)  # 2 of 4 image questions
    assert r["accuracy"] == pytest.approx(60.0)  # 3 of 5
    # seeded random fallback: repeatable, and "junk" can now be right by chance
    a = sqa_img_accuracy([("junk", 2, 0, True)] * 50, fallback="random", seed=3)
    assert a == sqa_img_accuracy([("junk", 2, 0, True)] * 50, fallback="random", seed=3)
    assert 0 < a["img_accuracy"] < 100


def test_seed_exact_letter():
    assert seed_correct("A", "A")
    assert not seed_correct("A.", "A")  # upstream compares text == answer exactly
    assert not seed_correct(None, "A")


def test_mmbench_circular_all_or_nothing():
    options = ["cat", "dog", "bird", "fish"]
    rot = circular_rotations(options, "B")
    assert [gt for _, gt in rot] == ["B", "A", "D", "C"]
    assert rot[1][0] == {"A": "dog", "B": "bird", "C": "fish", "D": "cat"}
    assert mmbench_circular_hit(["B", "A", "D", "C"], rot)
    assert not mmbench_circular_hit(["B", "A", "D", "A"], rot)  # one wrong rotation -> wrong
    assert mmbench_circular_hit(["dog"] * 4, rot)  # option text matched in each rotation
    assert mmbench_circular_hit(["B. dog", "The answer is A", "(D)", "C"], rot)
    assert not mmbench_circular_hit(["B", "A", "D"], rot)  # a missing rotation -> wrong
    assert not mmbench_circular_hit(["B", "A", "D", None], rot)


def test_can_infer_rules():
    ch = {"A": "red", "B": "green", "C": "blue"}
    assert can_infer("A", ch) == "A"
    assert can_infer("The answer is (B).", ch) == "B"
    assert can_infer("A or B", ch) is None  # two letters, no option text
    assert can_infer("it is blue", ch) == "C"
    assert can_infer("Cannot determine the answer", ch) == "Z"


def test_mme_acc_plus_pairs():
    rows = [
        ("count", "1.jpg", "Yes", "Yes"),
        ("count", "1.jpg", "no", "No"),
        ("count", "2.jpg", "yes, there are two", "Yes"),
        ("count", "2.jpg", "Yes", "No"),
        ("OCR", "3.jpg", "maybe", "Yes"),  # other -> wrong
        ("OCR", "3.jpg", None, "No"),  # missing -> wrong
        ("code_reasoning", "4.jpg", "No.", "No"),
        ("code_reasoning", "4.jpg", "no", "No"),
    ]
    s = mme_scores(rows)
    assert s["subtasks"]["count"] == pytest.approx({"acc": 75.0, "acc_plus": 50.0, "score": 125.0, "n": 4})
    assert s["subtasks"]["OCR"]["score"] == 0.0
    assert s["subtasks"]["code_reasoning"]["score"] == pytest.approx(200.0)
    assert s["perception"] == pytest.approx(125.0)
    assert s["cognition"] == pytest.approx(200.0)
    assert "existence" in s["missing_subtasks"] and "count" not in s["missing_subtasks"]
    assert mme_parse("Not sure") == "no"  # "no" in the first four characters
    assert mme_parse("Yesterday") == "yes"
