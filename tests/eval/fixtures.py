"""Tiny benchmark folders in each benchmark's official file layout (written per test, offline)."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

from PIL import Image

from loupe.eval.scorers.mme import COGNITION, PERCEPTION


def _img(path: Path, color=(200, 30, 30), size=(40, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)
    return path


def make_textvqa(root: Path) -> Path:
    data = [
        {"question_id": 1, "image_id": "img1", "question": "what brand is this?", "ocr_tokens": ["DAKOTA", "digital"],
         "answers": ["dakota"] * 8 + ["dakota digital"] * 2},
        {"question_id": 2, "image_id": "img2", "question": "what number is shown?", "ocr_tokens": [],
         "answers": ["10"] * 2 + ["ten"] * 1 + ["1O"] * 7},
    ]  # fmt: skip
    root.mkdir(parents=True, exist_ok=True)
    (root / "TextVQA_0.5.1_val.json").write_text(json.dumps({"dataset_name": "textvqa", "data": data}))
    for q in data:
        _img(root / "train_images" / f"{q['image_id']}.jpg")
    return root


def make_vqav2(root: Path) -> Path:
    qs = [{"image_id": 42, "question": "How many dogs?", "question_id": 420},
          {"image_id": 43, "question": "Is it raining?", "question_id": 430}]  # fmt: skip
    anns = [{"question_id": 420, "answers": [{"answer": a} for a in ["2"] * 3 + ["two"] * 6 + ["3"]]},
            {"question_id": 430, "answers": [{"answer": a} for a in ["no"] * 10]}]  # fmt: skip
    root.mkdir(parents=True, exist_ok=True)
    (root / "v2_OpenEnded_mscoco_val2014_questions.json").write_text(json.dumps({"questions": qs}))
    (root / "v2_mscoco_val2014_annotations.json").write_text(json.dumps({"annotations": anns}))
    for q in qs:
        _img(root / "val2014" / f"COCO_val2014_{q['image_id']:012d}.jpg")
    return root


def make_gqa(root: Path) -> Path:
    qs = {"201": {"imageId": "n1", "question": "Is the cup on the left?", "answer": "yes"},
          "202": {"imageId": "n2", "question": "What color is the car?", "answer": "red"}}  # fmt: skip
    root.mkdir(parents=True, exist_ok=True)
    (root / "testdev_balanced_questions.json").write_text(json.dumps(qs))
    for q in qs.values():
        _img(root / "images" / f"{q['imageId']}.jpg")
    return root


def make_pope(root: Path) -> Path:
    for split in ("adversarial", "popular", "random"):
        lines = [{"question_id": 1, "image": "COCO_val2014_000000000001.jpg", "text": "Is there a dog in the image?", "label": "yes"},
                 {"question_id": 2, "image": "COCO_val2014_000000000002.jpg", "text": "Is there a cat in the image?", "label": "no"}]  # fmt: skip
        p = root / "coco" / f"coco_pope_{split}.json"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    for n in (1, 2):
        _img(root / "val2014" / f"COCO_val2014_{n:012d}.jpg")
    return root


def make_mme(root: Path) -> Path:
    base = root / "MME_Benchmark_release_version"
    for i, task in enumerate((*PERCEPTION, *COGNITION)):
        nested = task in ("artwork", "celebrity", "landmark", "posters", "scene")  # the release's two layouts
        qa_dir, img_dir = (
            (base / task / "questions_answers_YN", base / task / "images") if nested else (base / task,) * 2
        )
        qa_dir.mkdir(parents=True, exist_ok=True)
        _img(img_dir / f"{i:04d}.jpg" if i % 2 else img_dir / f"{i:04d}.png")
        (qa_dir / f"{i:04d}.txt").write_text(
            "Is there a red square in the image? Please answer yes or no.\tYes\n"
            "Is there a blue circle in the image? Please answer yes or no.\tNo\n"
        )
    return root


def make_seed(root: Path) -> Path:
    qs = [
        {"question_id": "101", "question": "What is the main color?", "choice_a": "red", "choice_b": "blue",
         "choice_c": "green", "choice_d": "white", "answer": "A", "data_type": "image", "data_id": "a.jpg", "question_type_id": 1},
        {"question_id": "102", "question": "How many objects?", "choice_a": "1", "choice_b": "2",
         "choice_c": "3", "choice_d": "4", "answer": "B", "data_type": "image", "data_id": "b.jpg", "question_type_id": 2},
        {"question_id": "103", "question": "What happens next?", "choice_a": "x", "choice_b": "y",
         "choice_c": "z", "choice_d": "w", "answer": "C", "data_type": "video", "data_id": "v.mp4", "question_type_id": 10},
    ]  # fmt: skip
    root.mkdir(parents=True, exist_ok=True)
    (root / "SEED-Bench.json").write_text(
        json.dumps({"questions": qs, "question_type": {"Scene Understanding": 1, "Instance Identity": 2}})
    )
    for q in qs[:2]:
        _img(root / "SEED-Bench-image" / q["data_id"])
    return root


def make_sqa(root: Path) -> Path:
    problems = {
        "7": {"question": "Which animal is a mammal?", "choices": ["trout", "dog"], "answer": 1, "hint": "",
              "image": "image.png", "split": "test"},
        "8": {"question": "Which word rhymes with cat?", "choices": ["hat", "dog", "sun"], "answer": 0,
              "hint": "Read the words.", "image": None, "split": "test"},
        "9": {"question": "Which is larger?", "choices": ["sun", "moon"], "answer": 0, "hint": "Look at the picture.",
              "image": "image.png", "split": "test"},
    }  # fmt: skip
    root.mkdir(parents=True, exist_ok=True)
    (root / "problems.json").write_text(json.dumps(problems))
    (root / "pid_splits.json").write_text(json.dumps({"test": ["7", "8", "9"], "train": []}))
    for pid in ("7", "9"):
        _img(root / "images" / "test" / pid / "image.png")
    return root


def _b64_image() -> str:
    buf = io.BytesIO()
    Image.new("RGB", (40, 30), (10, 120, 10)).save(buf, format="JPEG")
    return base64.b64encode(buf.getvalue()).decode()


def make_mmbench(root: Path, with_rotations: bool = False) -> Path:
    cols = [
        "index",
        "question",
        "hint",
        "A",
        "B",
        "C",
        "D",
        "answer",
        "category",
        "image",
        "source",
        "l2-category",
        "comment",
        "split",
    ]
    img = _b64_image()
    rows = [
        [0, "What color is the square?", "nan", "red", "green", "blue", "yellow", "B", "color", img, "x", "p", "nan", "dev"],
        [1, "Which shape is shown?", "A simple picture.", "circle", "square", "nan", "nan", "B", "shape", img, "x", "p", "nan", "dev"],
    ]  # fmt: skip
    if with_rotations:  # the released dev file carries the rotated copies at index + k * 1e6
        rows.append(
            [
                1000000,
                "What color is the square?",
                "nan",
                "green",
                "blue",
                "yellow",
                "red",
                "A",
                "color",
                img,
                "x",
                "p",
                "nan",
                "dev",
            ]
        )
    root.mkdir(parents=True, exist_ok=True)
    p = root / "mmbench_dev_20230712.tsv"
    p.write_text("\t".join(cols) + "\n" + "\n".join("\t".join(str(v) for v in r) for r in rows) + "\n")
    return root


MAKERS = {
    "textvqa": make_textvqa, "vqav2": make_vqav2, "gqa": make_gqa, "pope": make_pope, "mme": make_mme,
    "seed": make_seed, "sqa": make_sqa, "mmbench": make_mmbench,
}  # fmt: skip
