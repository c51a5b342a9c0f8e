"""Each task on a fixture in its official layout: prompts, golden scores, bad input."""

from __future__ import annotations

import json

import pytest

from loupe.eval.runner import read_predictions, score_predictions, score_samples
from loupe.eval.tasks import get_task
from loupe.pipeline.errors import LoupeError

from .fixtures import MAKERS, make_mmbench

SHORT = "Answer the question using a single word or phrase."
LETTER = "Answer with the option's letter from the given choices directly."


def _task(name, tmp_path, **kw):
    return get_task(name, MAKERS[name](tmp_path / name), **kw)


def _score(task, preds):
    return score_samples(task, task.samples(), {str(k): v for k, v in preds.items()})


def test_textvqa(tmp_path):
    t = _task("textvqa", tmp_path)
    s = t.samples()
    assert s[0].prompt == f"what brand is this?\nReference OCR token: DAKOTA, digital\n{SHORT}"
    assert s[1].prompt == f"what number is shown?\n{SHORT}"  # no OCR tokens -> no OCR line
    r = _score(t, {1: "Dakota", 2: "10"})  # "ten" normalises to "10": 3 of 10 -> 0.9
    assert r["score"] == pytest.approx(95.0)
    r = _score(t, {1: "Dakota"})
    assert r["score"] == pytest.approx(50.0) and r["n_missing"] == 1 and r["missing_examples"] == ["2"]
    assert (
        get_task("textvqa", t.data, ocr_tokens=False).samples()[0].prompt == f"what brand is this?\n{SHORT}"
    )


def test_vqav2(tmp_path):
    t = _task("vqav2", tmp_path)
    assert t.samples()[0].prompt == f"How many dogs?\n{SHORT}"
    assert t.samples()[0].image.name == "COCO_val2014_000000000042.jpg"
    assert _score(t, {420: "3", 430: "No."})["score"] == pytest.approx(65.0)  # (0.3 + 1) / 2
    assert _score(t, {420: "Two", 430: "no"})["score"] == pytest.approx(100.0)


def test_gqa(tmp_path):
    t = _task("gqa", tmp_path)
    assert t.samples()[1].prompt == f"What color is the car?\n{SHORT}"
    assert _score(t, {201: "Yes.", 202: "blue"})["score"] == pytest.approx(50.0)


def test_pope(tmp_path):
    t = _task("pope", tmp_path)
    s = t.samples()
    assert (
        len(s) == 6
        and s[0].qid == "adversarial/1"
        and s[0].prompt == f"Is there a dog in the image?\n{SHORT}"
    )
    preds = {q.qid: ("Yes" if q.qid.endswith("/1") else "No, there is not.") for q in s}
    preds["random/2"] = "Yes"  # random split: tp 1, fp 1 -> F1 2/3
    r = score_samples(t, s, preds)
    assert r["score"] == pytest.approx(100 * (1 + 1 + 2 / 3) / 3)
    assert r["splits"]["random"]["yes_ratio"] == 1.0


def test_mme(tmp_path):
    t = _task("mme", tmp_path)
    s = t.samples()
    assert len(s) == 28
    assert s[0].prompt == f"Is there a red square in the image?\n{SHORT}"
    preds = {q.qid: ("Yes" if q.qid.endswith("#0") else "No") for q in s}
    r = score_samples(t, s, preds)
    assert (r["perception"], r["cognition"]) == pytest.approx((2000.0, 800.0))
    wrong = next(q.qid for q in s if q.qid.startswith("count/") and q.qid.endswith("#1"))
    preds[wrong] = "Yes"  # count: acc 50, acc+ 0
    assert score_samples(t, s, preds)["score"] == pytest.approx(1850.0)


def test_seed(tmp_path):
    t = _task("seed", tmp_path)
    s = t.samples()
    assert [q.qid for q in s] == ["101", "102"]  # the video question is not SEED-IMG
    assert s[0].prompt == f"What is the main color?\nA. red\nB. blue\nC. green\nD. white\n{LETTER}"
    assert _score(t, {101: "A", 102: "C"})["score"] == pytest.approx(50.0)


def test_sqa(tmp_path):
    t = _task("sqa", tmp_path)
    s = {q.qid: q for q in t.samples()}
    assert s["9"].prompt == f"Context: Look at the picture.\nWhich is larger?\nA. sun\nB. moon\n{LETTER}"
    assert s["7"].prompt.startswith("Which animal is a mammal?\nA. trout")  # empty hint -> no context line
    assert s["8"].image is None
    r = _score(t, {7: "B", 8: "A", 9: "The answer is B."})
    assert r["score"] == pytest.approx(50.0) and r["accuracy"] == pytest.approx(200 / 3)


def test_mmbench_generated_rotations(tmp_path):
    t = _task("mmbench", tmp_path)
    s = {q.qid: q for q in t.samples()}
    assert sorted(s) == ["0/0", "0/1", "0/2", "0/3", "1/0", "1/1"]
    assert s["1/0"].prompt == f"A simple picture.\nWhich shape is shown?\nA. circle\nB. square\n{LETTER}"
    assert s["0/1"].options == ["green", "blue", "yellow", "red"] and s["0/1"].gt["answer"] == "A"
    preds = {"0/0": "B", "0/1": "A", "0/2": "D", "0/3": "C", "1/0": "B", "1/1": "B"}
    r = _score(t, preds)
    assert r["score"] == pytest.approx(50.0) and r["vanilla_accuracy"] == pytest.approx(100.0)


def test_mmbench_rotations_given_in_file(tmp_path):
    t = get_task("mmbench", make_mmbench(tmp_path / "m", with_rotations=True))
    s = {q.qid: q for q in t.samples()}
    assert sorted(s) == ["0/0", "0/1", "1/0"]
    assert s["0/1"].options == ["green", "blue", "yellow", "red"]


@pytest.mark.parametrize(
    "name, remove, expect",
    [
        ("textvqa", "TextVQA_0.5.1_val.json", "TextVQA_0.5.1_val.json"),
        ("vqav2", "v2_mscoco_val2014_annotations.json", "v2_mscoco_val2014_annotations.json"),
        ("gqa", "testdev_balanced_questions.json", "testdev_balanced_questions.json"),
        ("pope", "coco/coco_pope_popular.json", "coco_pope_popular.json"),
        ("seed", "SEED-Bench.json", "SEED-Bench.json"),
        ("sqa", "pid_splits.json", "pid_splits.json"),
        ("mmbench", "mmbench_dev_20230712.tsv", "mmbench_dev_20230712.tsv"),
    ],
)
def test_missing_annotation_file_is_named(tmp_path, name, remove, expect):
    root = MAKERS[name](tmp_path / name)
    (root / remove).unlink()
    with pytest.raises(LoupeError, match=expect.replace(".", r"\.")):
        get_task(name, root).samples()


def test_missing_mme_subtask_and_data_dir_and_image(tmp_path):
    import shutil

    root = MAKERS["mme"](tmp_path / "mme")
    shutil.rmtree(root / "MME_Benchmark_release_version" / "OCR")
    with pytest.raises(LoupeError, match="missing subtask folder .*OCR"):
        get_task("mme", root).samples()
    with pytest.raises(LoupeError, match="does not exist"):
        get_task("gqa", tmp_path / "nope")
    with pytest.raises(LoupeError, match="not a task; valid: gqa, mmbench"):
        get_task("vqa3", tmp_path)
    t = _task("gqa", tmp_path)
    (t.data / "images" / "n1.jpg").unlink()
    with pytest.raises(LoupeError, match=r"question 201: image .*n1\.jpg does not exist"):
        t.samples()[0].load_image()


def test_predictions_file_missing_ids_count_as_wrong(tmp_path):
    t = _task("gqa", tmp_path)
    p = tmp_path / "predictions.jsonl"
    p.write_text(json.dumps({"question_id": "201", "text": "yes"}) + "\n")
    r = score_predictions(t, p)
    assert r["score"] == pytest.approx(50.0) and r["n_missing"] == 1 and r["n_questions"] == 2
    p.write_text(
        json.dumps({"question_id": "201", "text": "yes"}) + "\n" + json.dumps({"text": "red"}) + "\n"
    )
    with pytest.raises(LoupeError, match=r"predictions.jsonl:2: a prediction needs 'question_id'"):
        read_predictions(p)
    p.write_text("{broken\n")
    with pytest.raises(LoupeError, match=r"predictions.jsonl:1: not JSON"):
        read_predictions(p)


def test_vqav2_test_dev_writes_upload_rows(tmp_path):
    from loupe.eval.tasks.vqa import VQAv2

    root = tmp_path / "vq"
    root.mkdir()
    qs = [
        {"image_id": 7, "question": "What is it?", "question_id": 70},
        {"image_id": 8, "question": "Why?", "question_id": 80},
    ]
    (root / "v2_OpenEnded_mscoco_test-dev2015_questions.json").write_text(json.dumps({"questions": qs}))
    t = get_task("vqav2", root, split="test-dev2015")  # no annotations file needed for a test split
    s = t.samples()
    assert s[0].image.name == "COCO_test2015_000000000007.jpg"
    assert _score(t, {70: "Two dogs."})["score"] is None
    # EvalAI processing as convert_vqav2_for_submission.py; a missing answer is uploaded as ''
    assert VQAv2.upload(s, {"70": "Two dogs."}) == [
        {"question_id": 70, "answer": "2 dogs"},
        {"question_id": 80, "answer": ""},
    ]


def test_limit_keeps_rotation_groups_whole(tmp_path):
    from loupe.eval.runner import limit_samples

    s = _task("mmbench", tmp_path).samples()  # group 0: 4 rotations, group 1: 2
    assert [q.qid for q in limit_samples(s, 2)] == ["0/0", "0/1", "0/2", "0/3"]
    assert len(limit_samples(s, 5)) == 6 and len(limit_samples(s, None)) == 6


def test_vqa_jsonl(tmp_path):
    """loupe pipeline's held-out split: one ground truth counts as ten human answers; paths relative."""
    f = tmp_path / "heldout.jsonl"
    f.write_text(
        json.dumps({"question_id": "a1", "image": "img/a.png", "question": "What text?", "answer": "42"})
        + "\n"
        + json.dumps(
            {"question_id": "b2", "image": "/abs/b.png", "question": "Q?", "answers": ["7"] * 3 + ["1"] * 7}
        )
        + "\n"
    )
    t = get_task("vqa_jsonl", f)
    s = t.samples()
    assert [x.qid for x in s] == ["a1", "b2"] and s[0].prompt == "What text?"
    assert s[0].image == tmp_path / "img" / "a.png" and str(s[1].image) == "/abs/b.png"
    # "42." normalises to "42": 1.0; "7" matches 3 of 10 answers: 0.9 (leave-one-out of min(1, n/3))
    assert _score(t, {"a1": "42.", "b2": "7"})["score"] == pytest.approx(95.0)
    assert _score(t, {"a1": "4", "b2": "1"})["score"] == pytest.approx(50.0)
    f.write_text('{"question_id": "x", "question": "Q?", "answer": "1"}\n')
    with pytest.raises(LoupeError, match=r"heldout\.jsonl:1: no field 'image'"):
        get_task("vqa_jsonl", f).samples()
    with pytest.raises(LoupeError, match="one .jsonl file"):
        get_task("vqa_jsonl", tmp_path).samples()
