"""TextbookQA / TQA (Kembhavi et al., CVPR 2017): the diagram questions of middle-school lessons.

Source: the AI2 release ``tqa_train_val_test.zip`` (https://allenai.org/data/tqa), as read by
public loaders (e.g. HuggingFace m4's fine-tuning data script and several TQA readers indexed by
the code search). It unpacks to::

    tqa_train_val_test/
      train/tqa_v1_train.json  question_images/  abc_question_images/  teaching_images/ ...
      val/tqa_v1_val.json      ...
      test/tqa_v2_test.json    ...

Each JSON file is a list of lessons; ``lesson["questions"]["diagramQuestions"]`` maps a question id
to ``{"imagePath" (relative to the split folder), "beingAsked": {"processedText"},
"answerChoices": {"a": {"idStructural": "a.", "processedText"}, ...}, "correctAnswer":
{"processedText": "a"}, "questionType": "Diagram Multiple Choice", "globalID"}``. Non-diagram
(text-only) questions are not read. ``path`` may point at ``tqa_train_val_test`` or its parent.

One record per question image: its questions become one multi-turn conversation of lettered
choices answered with the letter. Questions without a resolvable correct answer (the test file
ships none) are left out.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from loupe.pipeline.stages.ingest.smr.base import (
    LayoutError,
    SmrRecord,
    check_split,
    find_root,
    grouped_record,
    letter,
    mc_prompt,
    read_json,
    text,
)

SPLITS = ("train", "val", "test")
FILES = {"train": "tqa_v1_train.json", "val": "tqa_v1_val.json", "test": "tqa_v2_test.json"}


def _answer_index(q: dict, keys: list[str]) -> int | None:
    correct = text((q.get("correctAnswer") or {}).get("processedText")).lower().rstrip(".")
    if correct in keys:
        return keys.index(correct)
    for i, k in enumerate(keys):  # some answers give the choice text instead of its key
        if correct and text(q["answerChoices"][k].get("processedText")).lower() == correct:
            return i
    return None


def iter_records(root: Path, split: str) -> Iterator[SmrRecord]:
    check_split("textbookqa", split, SPLITS)
    marker = f"{split}/{FILES[split]}"
    base = find_root(root, marker, nested=("tqa_train_val_test",)) / split
    lessons = read_json(base / FILES[split])
    if not isinstance(lessons, list):
        raise LayoutError(f"{FILES[split]} should hold a list of lessons")
    by_image: dict[str, list[tuple[str, str, dict]]] = {}
    for lesson in lessons:
        if not isinstance(lesson, dict):
            continue
        questions = (lesson.get("questions") or {}).get("diagramQuestions") or {}
        for qid, q in questions.items():
            if not isinstance(q, dict) or not text(q.get("imagePath")):
                continue
            choices = q.get("answerChoices") or {}
            keys = sorted(k for k in choices if isinstance(choices[k], dict))
            index = _answer_index(q, keys)
            if index is None:
                continue
            options = [text(choices[k].get("processedText")) for k in keys]
            prompt = mc_prompt(text((q.get("beingAsked") or {}).get("processedText")), options)
            info = {
                "id": q.get("globalID") or qid,
                "lesson": lesson.get("lessonName"),
                "answer": letter(index),
                "choices": options,
            }
            by_image.setdefault(text(q["imagePath"]), []).append((prompt, letter(index), info))
    for image, qas in by_image.items():
        yield grouped_record(f"{split}/{image}", base / image, qas)
