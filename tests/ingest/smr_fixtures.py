"""Tiny copies of each SMR dataset, written in the dataset's own release layout.

Every builder writes a few real records (small PNG/JPEG images), one record whose image file is
absent and, where the release stores image files, one whose image is not an image. It returns an
:class:`Expect` describing what the SMR source must produce from it.
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

MC = "Answer with the option's letter from the given choices directly."
SHORT = "Answer the question using a single word or phrase."


@dataclass
class Expect:
    dataset: str
    path: str  # relative to the recipe dir (tmp_path)
    ids: list[str]  # source_id of the rows, in order
    first_id: str
    first_conversation: list[tuple[str, str]]  # (from, value)
    first_size: tuple[int, int]
    missing: list[str] = field(default_factory=list)  # source ids dropped as missing_image
    corrupt: list[str] = field(default_factory=list)  # source ids dropped as decode_error
    split: str = "train"
    alt_text: str | None = None  # first record's alt_text
    first_format: str = "png"


def image(path: Path, size: tuple[int, int], color: tuple[int, int, int] = (200, 30, 30)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = "JPEG" if path.suffix.lower() in (".jpg", ".jpeg") else "PNG"
    Image.new("RGB", size, color).save(path, format=fmt)


def garbage(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n this is not really a png")


def dump(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=1))


def turns(*pairs: str) -> list[tuple[str, str]]:
    out = []
    for i, value in enumerate(pairs):
        out.append(("human" if i % 2 == 0 else "gpt", value))
    return out


# ------------------------------------------------------------------------------------ datasets
def chartqa(tmp: Path) -> Expect:
    split = tmp / "chartqa" / "ChartQA Dataset" / "train"
    dump(
        split / "train_human.json",
        [
            {"imgname": "bar_1.png", "query": "What is the highest value?", "label": "42"},
            {"imgname": "missing.png", "query": "What year?", "label": "2001"},
        ],
    )
    dump(
        split / "train_augmented.json",
        [
            {"imgname": "bar_1.png", "query": "How many bars are there?", "label": 3},
            {"imgname": "line_2.png", "query": "When did it peak?", "label": "2019"},
            {"imgname": "broken.png", "query": "What is shown?", "label": "sales"},
        ],
    )
    image(split / "png" / "bar_1.png", (41, 31))
    image(split / "png" / "line_2.png", (42, 32), (0, 90, 0))
    garbage(split / "png" / "broken.png")
    (split / "tables").mkdir()
    (split / "tables" / "bar_1.csv").write_text("Year,Value\n2020,42\n")
    return Expect(
        dataset="chartqa",
        path="chartqa",
        ids=["train/bar_1.png", "train/line_2.png"],
        first_id="train/bar_1.png",
        first_conversation=turns(
            f"What is the highest value?\n{SHORT}", "42", f"How many bars are there?\n{SHORT}", "3"
        ),
        first_size=(41, 31),
        missing=["train/missing.png"],
        corrupt=["train/broken.png"],
    )


def dvqa(tmp: Path) -> Expect:
    root = tmp / "dvqa"
    qa = [
        {
            "image": "bar_train_00000000.png",
            "question": "Which bar has the largest value?",
            "answer": "cook",
            "template_id": "data",
            "answer_bbox": [10, 20, 30, 8],
            "question_id": 1,
        },
        {
            "image": "bar_train_00000000.png",
            "question": "How many bars are there?",
            "answer": "three",
            "template_id": "structure",
            "answer_bbox": [],
            "question_id": 2,
        },
        {"image": "bar_train_00000001.png", "question": "Is the value of fish 5?", "answer": "yes"},
        {"image": "bar_train_00000002.png", "question": "What is the label?", "answer": "x"},
        {"image": "bar_train_00000003.png", "question": "What is the title?", "answer": "y"},
    ]
    dump(root / "qa" / "train_qa.json", qa)
    image(root / "images" / "bar_train_00000000.png", (43, 33))
    image(root / "images" / "bar_train_00000001.png", (44, 34), (1, 2, 3))
    garbage(root / "images" / "bar_train_00000003.png")
    return Expect(
        dataset="dvqa",
        path="dvqa",
        ids=["bar_train_00000000.png", "bar_train_00000001.png"],
        first_id="bar_train_00000000.png",
        first_conversation=turns(
            f"Which bar has the largest value?\n{SHORT}",
            "cook",
            f"How many bars are there?\n{SHORT}",
            "three",
        ),
        first_size=(43, 33),
        missing=["bar_train_00000002.png"],
        corrupt=["bar_train_00000003.png"],
    )


def arxivqa(tmp: Path) -> Expect:
    root = tmp / "arxivqa"
    rows = [
        {
            "id": "cs-1",
            "image": "images/2301.00001_0.jpg",
            "question": "Which method has the lowest error?",
            "options": ["A. GAN", "B. VAE", "C. Flow", "D. Diffusion"],
            "label": "D",
            "rationale": "The diffusion curve is lowest.",
        },
        {
            "id": "cs-2",
            "image": "images/2301.00001_0.jpg",
            "question": "What does the x-axis show?",
            "options": ["A) Epochs", "B) Loss", "C) Time"],
            "label": "A) Epochs",
            "rationale": "It is labelled epochs.",
        },
        {
            "id": "ph-1",
            "image": "images/2302.00002_1.jpg",
            "question": "Which peak is higher?",
            "options": ["A. left", "B. right"],
            "label": "B",
        },
        {"id": "ph-2", "image": "images/gone.jpg", "question": "Q?", "options": ["A. x"], "label": "A"},
        {"id": "ph-3", "image": "images/bad.jpg", "question": "Q?", "options": ["A. x"], "label": "A"},
    ]
    root.mkdir()
    (root / "arxivqa.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n{not json\n")
    image(root / "images" / "2301.00001_0.jpg", (45, 35))
    image(root / "images" / "2302.00002_1.jpg", (46, 36), (9, 9, 200))
    garbage(root / "images" / "bad.jpg")
    return Expect(
        dataset="arxivqa",
        path="arxivqa",
        ids=["images/2301.00001_0.jpg", "images/2302.00002_1.jpg"],
        first_id="images/2301.00001_0.jpg",
        first_conversation=turns(
            "Which method has the lowest error?\nA. GAN\nB. VAE\nC. Flow\nD. Diffusion",
            "The diffusion curve is lowest.\nAnswer: D",
            "What does the x-axis show?\nA) Epochs\nB) Loss\nC) Time",
            "It is labelled epochs.\nAnswer: A",
        ),
        first_size=(45, 35),
        missing=["images/gone.jpg"],
        corrupt=["images/bad.jpg"],
        first_format="jpeg",
    )


def geometry3k(tmp: Path) -> Expect:
    base = tmp / "intergps" / "data" / "geometry3k" / "train"

    def problem(pid: int, text: str, choices: list[str], answer: str) -> None:
        dump(
            base / str(pid) / "data.json",
            {
                "problem_text": text,
                "choices": choices,
                "answer": answer,
                "problem_type_graph": ["Circle"],
                "problem_type_goal": ["Angle"],
                "source": "textbook2_chapter10.pdf page 21",
                "id": pid,
                "annotat_text": text,
                "data_type": "train",
            },
        )

    problem(2, "Find x.", ["3", "4", "5", "6"], "C")
    problem(10, "In \\odot X, A B = 30. Find m \\widehat A B.", ["30", "40", "60", "80"], "D")
    problem(11, "Find y.", ["1", "2", "3", "4"], "A")
    problem(12, "Find z.", ["1", "2", "3", "4"], "B")
    image(base / "2" / "img_diagram.png", (47, 37))
    image(base / "10" / "img_diagram.png", (48, 38), (5, 5, 5))
    garbage(base / "12" / "img_diagram.png")
    (base / "notes").mkdir()  # a stray folder without data.json is ignored
    base = base.parent / "val"  # SMR trains on train + val (its JSON lists folders 0-2400)
    problem(2101, "Find w.", ["5", "6", "7", "8"], "D")
    image(base / "2101" / "img_diagram.png", (49, 39))
    return Expect(
        dataset="geometry3k",
        path="intergps",
        ids=["2", "10", "2101"],
        first_id="2",
        first_conversation=turns(f"Find x.\nA. 3\nB. 4\nC. 5\nD. 6\n{MC}", "C"),
        first_size=(47, 37),
        missing=["11"],
        corrupt=["12"],
    )


def _geoqa_problem(pid: int, english: str, choices: list[str], label: int, img) -> dict:
    return {
        "id": pid,
        "subject": "angle",
        "problem": "如图，求∠1的度数",
        "English_problem": english,
        "choices": choices,
        "label": label,
        "image": img,
        "manual_program": ["g_minus", "C3", "N0", "V0"],
        "numbers": [50.0],
        "choice_nums": [np.float64(40.0), 50.0, 65.0, 90.0],
        "formal_point": ["平行线"],
        "token_list": ["如图", "，"],
    }


def geoqa3(tmp: Path) -> Expect:
    gray = np.full((39, 49), 255, np.uint8)
    gray[10:20, 5:40] = 0
    bgr = np.zeros((40, 50, 3), np.uint8)
    bgr[:, :, 0] = 255  # blue in OpenCV's BGR order
    problems = [
        _geoqa_problem(1, "As shown in the figure, find angle 1.", ["40°", "50°", "65°", "90°"], 1, gray),
        _geoqa_problem(2, "Find the length of AB.", ["2", "4", "6", "8"], 3, bgr),
        _geoqa_problem(3, "Find angle 2.", ["1", "2", "3", "4"], 0, None),
        _geoqa_problem(4, "A problem with a broken label.", ["1", "2"], 7, gray),
    ]
    path = tmp / "geoqa" / "data" / "GeoQA3" / "train.pk"
    path.parent.mkdir(parents=True)
    path.write_bytes(pickle.dumps(problems, protocol=3))
    return Expect(
        dataset="geoqa3",
        path="geoqa/data",
        ids=["train/1", "train/2"],
        first_id="train/1",
        first_conversation=turns(
            f"As shown in the figure, find angle 1.\nA. 40°\nB. 50°\nC. 65°\nD. 90°\n{MC}", "B"
        ),
        first_size=(49, 39),
        missing=["train/3"],
    )


def geoqa_plus(tmp: Path) -> Expect:
    img = np.full((30, 60), 200, np.uint8)
    problems = [
        _geoqa_problem(10, "Find angle BOC.", ["20°", "30°", "40°", "50°"], 2, img),
        # Backtrans/Mix files repeat an id with reworded text
        _geoqa_problem(10, "Calculate the angle BOC.", ["20°", "30°", "40°", "50°"], 2, img),
        _geoqa_problem(11, "Find AC.", ["1", "2", "3", "4"], 0, None),
    ]
    path = tmp / "geoqa_plus" / "GeoQA2.2" / "Mix-train.pk"
    path.parent.mkdir(parents=True)
    path.write_bytes(pickle.dumps(problems, protocol=3))
    return Expect(
        dataset="geoqa_plus",
        path="geoqa_plus",
        ids=["train/10", "train/10#2"],
        first_id="train/10",
        first_conversation=turns(f"Find angle BOC.\nA. 20°\nB. 30°\nC. 40°\nD. 50°\n{MC}", "C"),
        first_size=(60, 30),
        missing=["train/11"],
    )


def mathvision(tmp: Path) -> Expect:
    root = tmp / "MATH-V"
    rows = [
        {
            "id": "4",
            "question": "How many different digits can you find in this picture?\n<image1>",
            "options": [],
            "answer": "6",
            "solution": None,
            "level": 1,
            "subject": "counting",
            "image": "images/4.jpg",
        },
        {
            "id": "6",
            "question": "In which picture can we see the kittens of Misty?\n<image1>",
            "options": ["A", "B", "C", "D", "E"],
            "answer": "D",
            "solution": None,
            "level": 3,
            "subject": "logic",
            "image": "images/6.jpg",
        },
        {
            "id": "39",
            "question": "Which colour is the cube with the question mark?\n<image1>",
            "options": ["red", "blue", "green", "yellow"],
            "answer": "A",
            "level": 3,
            "subject": "logic",
            "image": "images/39.jpg",
        },
        {
            "id": "50",
            "question": "Which piece is missing?",
            "options": [],
            "answer": "1",
            "image": "images/50.jpg",
        },
        {"id": "51", "question": "Which is it?", "options": [], "answer": "2", "image": "images/51.jpg"},
    ]
    (root / "data").mkdir(parents=True)
    (root / "data" / "test.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    image(root / "images" / "4.jpg", (50, 40))
    image(root / "images" / "6.jpg", (51, 41), (0, 0, 255))
    image(root / "images" / "39.jpg", (52, 42), (0, 255, 0))
    garbage(root / "images" / "51.jpg")
    return Expect(
        dataset="mathvision",
        path="MATH-V",
        split="test",
        ids=["4", "6", "39"],
        first_id="4",
        first_conversation=turns(f"How many different digits can you find in this picture?\n{SHORT}", "6"),
        first_size=(50, 40),
        missing=["50"],
        corrupt=["51"],
        first_format="jpeg",
    )


def scienceqa(tmp: Path) -> Expect:
    base = tmp / "ScienceQA" / "data" / "scienceqa"

    def p(question, choices, answer, img, split="train", hint="", lecture=""):
        return {
            "question": question,
            "choices": choices,
            "answer": answer,
            "hint": hint,
            "image": img,
            "task": "closed choice",
            "grade": "grade2",
            "subject": "social science",
            "topic": "geography",
            "category": "Geography",
            "skill": "Read a map: cardinal directions",
            "lecture": lecture,
            "solution": "To find the answer, look at the compass rose.",
            "split": split,
        }

    problems = {
        "1": p(
            "Which of these states is farthest north?",
            ["West Virginia", "Louisiana", "Arizona", "Oklahoma"],
            0,
            "image.png",
            hint="Look at the map.",
            lecture="Maps have four cardinal directions, or main directions.",
        ),
        "2": p("Which word is a noun?", ["run", "dog"], 1, None),  # text-only: not read
        "5": p("Which ocean is highlighted?", ["Pacific", "Atlantic", "Indian"], 2, "image.png"),
        "7": p("Which animal is shown?", ["cat", "dog"], 0, "image.png"),
        "8": p("Which material is it?", ["wood", "glass"], 1, "image.png"),
        "9": p("Which is a val problem?", ["a", "b"], 0, "image.png", split="val"),
    }
    dump(base / "problems.json", problems)
    dump(
        base / "pid_splits.json",
        {"train": ["1", "2", "5", "7", "8"], "val": ["9"], "test": [], "minival": ["9"], "minitest": []},
    )
    image(base / "images" / "train" / "1" / "image.png", (53, 43))
    image(base / "images" / "train" / "5" / "image.png", (54, 44), (10, 20, 30))
    garbage(base / "images" / "train" / "8" / "image.png")
    image(base / "images" / "val" / "9" / "image.png", (55, 45))
    return Expect(
        dataset="scienceqa",
        path="ScienceQA",
        ids=["1", "5"],
        first_id="1",
        first_conversation=turns(
            "Context: Look at the map.\nWhich of these states is farthest north?\n"
            "A. West Virginia\nB. Louisiana\nC. Arizona\nD. Oklahoma",
            "To find the answer, look at the compass rose.\nAnswer: A",
        ),
        first_size=(53, 43),
        missing=["7"],
        corrupt=["8"],
        alt_text="Maps have four cardinal directions, or main directions.",
    )


def tabmwp(tmp: Path) -> Expect:
    base = tmp / "tabmwp"
    table = "x | y\n10 | 15\n11 | 9\n12 | 2"
    problems = {
        "33": {
            "question": "The table shows a function. Is the function linear or nonlinear?",
            "choices": ["linear", "nonlinear"],
            "answer": "nonlinear",
            "unit": None,
            "table_title": None,
            "table": table,
            "table_for_pd": {"x": ["10", "11", "12"], "y": ["15", "9", "2"]},
            "row_num": 4,
            "column_num": 2,
            "solution": "The rate of change is not constant. The function is nonlinear.",
            "ques_type": "multi_choice",
            "ans_type": "boolean_text",
            "grade": 8,
            "split": "train",
        },
        "117": {
            "question": "What is the weight of the lightest child?",
            "choices": None,
            "answer": "10",
            "unit": "pounds",
            "table_title": "Children's weights (lbs)",
            "table": "Stem | Leaf \n1 | 0\n2 | 1, 3, 7",
            "solution": "The weight of the lightest child is 10 pounds.",
            "ques_type": "free_text",
            "ans_type": "integer_number",
            "grade": 8,
            "split": "train",
        },
        "200": {"question": "How many?", "choices": None, "answer": "3", "table": "a | b", "split": "train"},
        "201": {"question": "How much?", "choices": None, "answer": "4", "table": "a | b", "split": "train"},
    }
    dump(base / "problems_train.json", problems)
    image(base / "tables" / "33.png", (56, 46))
    image(base / "tables" / "117.png", (57, 47), (40, 40, 40))
    garbage(base / "tables" / "201.png")
    return Expect(
        dataset="tabmwp",
        path="tabmwp",
        ids=["33", "117"],
        first_id="33",
        first_conversation=turns(
            "The table shows a function. Is the function linear or nonlinear?\nA. linear\nB. nonlinear",
            "The rate of change is not constant. The function is nonlinear.\nAnswer: B",
        ),
        first_size=(56, 46),
        missing=["200"],
        corrupt=["201"],
        alt_text=table,
    )


def textbookqa(tmp: Path) -> Expect:
    base = tmp / "tqa" / "tqa_train_val_test" / "train"

    def q(gid, asked, choices, correct, img):
        return {
            "beingAsked": {"processedText": asked, "rawText": asked},
            "answerChoices": {
                k: {"idStructural": f"{k}.", "processedText": v, "rawText": v} for k, v in choices.items()
            },
            "correctAnswer": {"processedText": correct, "rawText": correct} if correct is not None else {},
            "imagePath": img,
            "imageName": img.split("/")[-1],
            "questionType": "Diagram Multiple Choice",
            "globalID": gid,
            "id": gid,
        }

    lessons = [
        {
            "lessonName": "earth's layers",
            "globalID": "L_0001",
            "questions": {
                "nonDiagramQuestions": {"NDQ_1": {"beingAsked": {"processedText": "text only?"}}},
                "diagramQuestions": {
                    "DQ_000001": q(
                        "DQ_000001",
                        "which layer is the crust?",
                        {"b": "b", "a": "a", "c": "c", "d": "d"},
                        "a",
                        "question_images/earth_layers_1.png",
                    ),
                    "DQ_000002": q(
                        "DQ_000002",
                        "how many layers are shown?",
                        {"a": "two", "b": "four"},
                        "b",
                        "question_images/earth_layers_1.png",
                    ),
                    "DQ_000003": q(
                        "DQ_000003",
                        "what is the outer part?",
                        {"a": "mantle", "b": "crust"},
                        "crust",  # some answers give the choice text instead of its key
                        "question_images/earth_layers_2.png",
                    ),
                    "DQ_000004": q("DQ_000004", "q?", {"a": "x", "b": "y"}, "a", "question_images/gone.png"),
                    "DQ_000005": q("DQ_000005", "q?", {"a": "x", "b": "y"}, "b", "question_images/bad.png"),
                    "DQ_000006": q("DQ_000006", "no answer?", {"a": "x"}, None, "question_images/none.png"),
                },
            },
        }
    ]
    dump(base / "tqa_v1_train.json", lessons)
    image(base / "question_images" / "earth_layers_1.png", (58, 48))
    image(base / "question_images" / "earth_layers_2.png", (59, 49), (90, 0, 90))
    image(base / "question_images" / "none.png", (20, 20))
    garbage(base / "question_images" / "bad.png")
    return Expect(
        dataset="textbookqa",
        path="tqa",
        ids=["train/question_images/earth_layers_1.png", "train/question_images/earth_layers_2.png"],
        first_id="train/question_images/earth_layers_1.png",
        first_conversation=turns(
            f"which layer is the crust?\nA. a\nB. b\nC. c\nD. d\n{MC}",
            "A",
            f"how many layers are shown?\nA. two\nB. four\n{MC}",
            "B",
        ),
        first_size=(58, 48),
        missing=["train/question_images/gone.png"],
        corrupt=["train/question_images/bad.png"],
    )


def ai2d(tmp: Path) -> Expect:
    base = tmp / "ai2d_release" / "ai2d"

    def qfile(n: int, questions: dict) -> None:
        dump(base / "questions" / f"{n}.png.json", {"imageName": f"{n}.png", "questions": questions})

    qfile(
        0,
        {
            "What is A in the diagram?": {
                "abcLabel": True,
                "answerTexts": ["ears", "nose", "mouth", "face"],
                "correctAnswer": 3,
                "questionId": "0.png-0",
            },
            "Which part is used to smell?": {
                "abcLabel": False,
                "answerTexts": ["ears", "nose"],
                "correctAnswer": 1,
                "questionId": "0.png-1",
            },
        },
    )
    qfile(
        1,
        {
            "What stage comes after the egg?": {
                "abcLabel": False,
                "answerTexts": ["larva", "pupa", "adult"],
                "correctAnswer": 0,
                "questionId": "1.png-0",
            }
        },
    )
    one = {"abcLabel": False, "answerTexts": ["x", "y"], "correctAnswer": 0, "questionId": "q"}
    qfile(2, {"A test question?": one})
    qfile(3, {"Where is the image?": one})
    qfile(4, {"Is this broken?": one})
    image(base / "images" / "0.png", (60, 50))
    image(base / "abc_images" / "0.png", (60, 50), (0, 0, 0))
    image(base / "images" / "1.png", (61, 51), (1, 100, 1))
    image(base / "images" / "2.png", (62, 52))
    garbage(base / "images" / "4.png")
    dump(base / "categories.json", {"0.png": "partsOfA", "1.png": "lifeCycles"})
    (base / "ai2d_test_ids.csv").write_text("2\n")
    return Expect(
        dataset="ai2d",
        path="ai2d_release",
        ids=["images/0.png", "abc_images/0.png", "images/1.png"],
        first_id="images/0.png",
        first_conversation=turns(f"Which part is used to smell?\nA. ears\nB. nose\n{MC}", "B"),
        first_size=(60, 50),
        missing=["images/3.png"],
        corrupt=["images/4.png"],
    )


def release(tmp: Path) -> Expect:
    """SliME's SMR release: one LLaVA-format JSON, images under the data folder as its README lays out."""
    root = tmp / "smr_data"
    records = [
        {"id": "geometry3k_0", "image": "Geometry3K/0/img_diagram.png",
         "conversations": [{"from": "human", "value": "<image>\nFind x.\nA. 3\nB. 4"},
                           {"from": "gpt", "value": "By the Pythagorean theorem x = 4.\nAnswer: B"}]},
        {"id": "dvqa_7", "image": "DVQA/images/bar_train_00000007.png",
         "conversations": [{"from": "human", "value": "How many bars?\n<image>"}, {"from": "gpt", "value": "two"},
                           {"from": "human", "value": "Which is largest?"}, {"from": "gpt", "value": "cook"}]},
        {"id": "geoqa_1", "image": "GeoQA3/image/1.png",
         "conversations": [{"from": "human", "value": "<image>\nFind angle 1."}, {"from": "gpt", "value": "50°"}]},
        {"id": "broken", "image": "geoqa+/images/9.png",
         "conversations": [{"from": "human", "value": "<image>\nQ?"}, {"from": "gpt", "value": "A"}]},
        {"id": "text_only", "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]},
    ]
    dump(root / "SMR.json", records)
    image(root / "Geometry3K" / "0" / "img_diagram.png", (61, 51))
    image(root / "DVQA" / "images" / "bar_train_00000007.png", (62, 52), (3, 3, 3))
    garbage(root / "geoqa+" / "images" / "9.png")
    return Expect(
        dataset="release",
        path="smr_data",
        ids=["geometry3k_0", "dvqa_7"],
        first_id="geometry3k_0",
        first_conversation=turns("Find x.\nA. 3\nB. 4", "By the Pythagorean theorem x = 4.\nAnswer: B"),
        first_size=(61, 51),
        missing=["geoqa_1"],
        corrupt=["broken"],
    )


BUILDERS: dict[str, Callable[[Path], Expect]] = {
    "release": release,
    "arxivqa": arxivqa,
    "dvqa": dvqa,
    "chartqa": chartqa,
    "geometry3k": geometry3k,
    "geoqa3": geoqa3,
    "mathvision": mathvision,
    "scienceqa": scienceqa,
    "tabmwp": tabmwp,
    "textbookqa": textbookqa,
    "ai2d": ai2d,
    "geoqa_plus": geoqa_plus,
}
