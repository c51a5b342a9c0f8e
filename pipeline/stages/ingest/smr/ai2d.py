"""AI2D (Kembhavi et al., ECCV 2016, "A Diagram Is Worth A Dozen Images"): science-diagram questions.

Source: the AI2 release ``ai2d-all.zip`` (https://allenai.org/data/diagrams), field names as
documented in public notes on it (e.g. QHX-BNU/master ``Edudata/AI2D.md``). It unpacks to::

    ai2d/
      images/<n>.png            the diagrams
      abc_images/<n>.png        the same diagrams with text labels replaced by letters
      questions/<n>.png.json    {"imageName": "<n>.png", "questions": {"<question text>":
                                  {"abcLabel": bool, "answerTexts": [...], "correctAnswer": <index>,
                                   "questionId": "<n>.png-0"}}}
      annotations/  categories.json  ({"<n>.png": "partsOfA", ...})

The standard train/test split is the separate file ``ai2d_test_ids.csv`` (one test image id per
line) from the same release; put it in ``path``. ``split: train`` / ``test`` need it;
``split: all`` reads every question. ``path`` may point at ``ai2d`` or at its parent.

``abcLabel`` questions ("What is A in the diagram?") name letters that only the ``abc_images``
version shows, so they are paired with that image; the others with ``images/<n>.png``. One record
per (image version): its questions become one multi-turn conversation of lettered choices
answered with the letter.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from loupe.pipeline.stages.ingest.smr.base import (
    LayoutError,
    SmrRecord,
    SplitError,
    check_split,
    find_root,
    grouped_record,
    letter,
    mc_prompt,
    read_json,
    text,
)

SPLITS = ("train", "test", "all")
TEST_IDS = "ai2d_test_ids.csv"


def _test_ids(base: Path, root: Path) -> set[str]:
    for p in (base / TEST_IDS, root / TEST_IDS, base.parent / TEST_IDS):
        if p.is_file():
            lines = p.read_text(encoding="utf-8", errors="replace").split()
            return {line.strip().split(".")[0] for line in lines if line.strip()}
    raise SplitError(
        f"train/test need {TEST_IDS!r} (from the AI2D release) in the dataset folder; or use 'all'"
    )


def iter_records(root: Path, split: str) -> Iterator[SmrRecord]:
    check_split("ai2d", split, SPLITS)
    base = find_root(root, "questions", nested=("ai2d",), shown="questions/<n>.png.json")
    files = sorted(base.joinpath("questions").glob("*.json"), key=lambda p: _numeric(p.name))
    if not files:
        raise LayoutError("expected 'questions/<n>.png.json' files inside it")
    test = _test_ids(base, root) if split != "all" else set()
    categories = base / "categories.json"
    category = read_json(categories) if categories.is_file() else {}
    for path in files:
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        image = text(doc.get("imageName")) or path.name.removesuffix(".json")
        in_test = image.split(".")[0] in test
        if (split == "train" and in_test) or (split == "test" and not in_test):
            continue
        groups: dict[str, list[tuple[str, str, dict]]] = {"images": [], "abc_images": []}
        for question, q in (doc.get("questions") or {}).items():
            if not isinstance(q, dict):
                continue
            answers = [text(a) for a in q.get("answerTexts") or []]
            correct = q.get("correctAnswer")
            if not isinstance(correct, int) or not 0 <= correct < len(answers):
                continue
            info = {"id": q.get("questionId"), "answer": letter(correct), "choices": answers}
            folder = "abc_images" if q.get("abcLabel") else "images"
            groups[folder].append((mc_prompt(text(question), answers), letter(correct), info))
        for folder, qas in groups.items():
            if qas:
                kind = category.get(image) if isinstance(category, dict) else None
                yield grouped_record(
                    f"{folder}/{image}", base / folder / image, qas, before={"category": kind}
                )


def _numeric(name: str) -> tuple[int, str]:
    stem = name.split(".")[0]
    return (int(stem), name) if stem.isdigit() else (1 << 62, name)
