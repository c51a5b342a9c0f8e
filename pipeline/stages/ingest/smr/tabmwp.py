"""TabMWP (Lu et al., ICLR 2023, "PromptPG"): math word problems over tables shown as images.

Source: https://github.com/lupantech/PromptPG (``data/tabmwp/``: ``problems_{train,dev,test,
dev1k,test1k}.json`` and ``tables/<pid>.png``). Each problems file maps a pid to ``{"question",
"choices" (null or a list), "answer", "unit", "table_title", "table" (pipe-separated text),
"table_for_pd", "solution", "ques_type" ("free_text" | "multi_choice"), "ans_type", "grade",
"split"}``; the image of problem ``pid`` is ``tables/<pid>.png``. ``path`` may point at ``tabmwp``
or at the PromptPG checkout (``data/tabmwp`` inside it).

One record per problem. Multiple-choice problems list lettered choices and are answered with the
letter of the choice equal to ``answer``; free-text ones use the short-answer prompt and the
answer text (the unit stays in ``meta``). With ``answer_style: reasoning`` (the default) the answer is
the release's ``solution`` then ``Answer: <letter or value>``. The table's text (with its title) is the record's
``alt_text``: it is exactly what the image shows.
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
    short_prompt,
    text,
    with_rationale,
)

SPLITS = ("train", "dev", "test", "dev1k", "test1k")


def iter_records(root: Path, split: str, answer_style: str = "reasoning") -> Iterator[SmrRecord]:
    check_split("tabmwp", split, SPLITS)
    name = f"problems_{split}.json"
    base = find_root(root, name, nested=("tabmwp", "data/tabmwp"))
    problems = read_json(base / name)
    if not isinstance(problems, dict):
        raise LayoutError(f"{name} should hold a JSON object of problems keyed by id")
    for pid, p in problems.items():
        if not isinstance(p, dict):
            continue
        question = text(p.get("question"))
        answer = text(p.get("answer"))
        choices = [text(c) for c in p.get("choices") or []]
        final = letter(choices.index(answer)) if choices and answer in choices else answer
        reply, direct = with_rationale(p.get("solution"), final, answer_style)
        if choices and answer in choices:
            prompt = mc_prompt(question, choices, direct=direct)
        else:
            prompt = short_prompt(question, direct=direct)
        title = text(p.get("table_title"))
        table = text(p.get("table"))
        yield SmrRecord(
            record_id=str(pid),
            image_path=base / "tables" / f"{pid}.png",
            conversations=conversation([(prompt, reply)]),
            alt_text="\n".join(t for t in (title, table) if t) or None,
            meta={
                "answer": answer,
                "choices": choices or None,
                "unit": p.get("unit"),
                "solution": p.get("solution"),
                "ques_type": p.get("ques_type"),
                "ans_type": p.get("ans_type"),
                "grade": p.get("grade"),
            },
        )
