"""ScienceQA (Lu et al., NeurIPS 2022): multiple-choice science questions, the image subset.

Source: https://github.com/lupantech/ScienceQA (``models/run_gpt3.py`` reads
``data/scienceqa/problems.json`` and ``pid_splits.json``; ``tools/download.sh`` unpacks the images
into ``data/scienceqa/images/{train,val,test}/``). Layout::

    scienceqa/
      problems.json      {pid: {"question", "choices", "answer" (index), "hint", "image"
                                ("image.png" or null), "lecture", "solution", "split",
                                "subject", "topic", "category", "skill", "grade", "task"}}
      pid_splits.json    {"train": [pid...], "val", "test", "trainval", "minival", "minitest"}
      images/<split>/<pid>/image.png

``path`` may point at ``scienceqa`` or at the repository checkout (``data/scienceqa`` inside it).
Only problems with an image are read (about half of ScienceQA is text-only).

One record per problem, in LLaVA's ScienceQA form: ``Context: <hint>`` (when there is one), the
question, lettered choices; the answer is the letter, or with ``answer_style: reasoning`` (the default)
the release's ``solution`` then ``Answer: <letter>``. The lecture is the record's ``alt_text``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from loupe.pipeline.stages.ingest.smr.base import (
    LayoutError,
    SmrRecord,
    check_split,
    conversation,
    find_root,
    letter,
    mc_prompt,
    read_json,
    text,
    with_rationale,
)

SPLITS = ("train", "val", "test", "trainval", "minival", "minitest")


def iter_records(root: Path, split: str, answer_style: str = "reasoning") -> Iterator[SmrRecord]:
    check_split("scienceqa", split, SPLITS)
    base = find_root(root, "problems.json", nested=("scienceqa", "data/scienceqa"))
    problems = read_json(base / "problems.json")
    splits = read_json(base / "pid_splits.json")
    if not isinstance(problems, dict) or not isinstance(splits, dict):
        raise LayoutError("problems.json and pid_splits.json should each hold a JSON object")
    if split not in splits:
        raise LayoutError(f"pid_splits.json has no {split!r} list")
    for pid in splits[split]:
        pid = str(pid)
        p = problems.get(pid)
        if not isinstance(p, dict) or not p.get("image"):
            continue
        choices = [text(c) for c in p.get("choices") or []]
        answer = p.get("answer")
        if not isinstance(answer, int) or not 0 <= answer < len(choices):
            continue
        # images live under the problem's own split (a "minival" problem's image is in images/val)
        image = base / "images" / text(p.get("split") or split) / pid / text(p["image"])
        reply, direct = with_rationale(p.get("solution"), letter(answer), answer_style)
        prompt = mc_prompt(text(p.get("question")), choices, context=text(p.get("hint")), direct=direct)
        yield SmrRecord(
            record_id=pid,
            image_path=image,
            conversations=conversation([(prompt, reply)]),
            alt_text=text(p.get("lecture")) or None,
            meta={
                "answer": answer,
                "choices": choices,
                "solution": p.get("solution"),
                "subject": p.get("subject"),
                "topic": p.get("topic"),
                "category": p.get("category"),
                "skill": p.get("skill"),
                "grade": p.get("grade"),
            },
        )
