"""MATH-Vision (Wang et al., NeurIPS 2024 Datasets & Benchmarks): competition math with images.

Source: https://github.com/mathllm/MATH-V (``data/test.jsonl``, ``data/testmini.jsonl``,
``images/<id>.jpg``). Each JSON line is ``{"id", "question", "options", "answer", "solution",
"level", "subject", "image"}`` with ``image`` relative to the release root (``images/4.jpg``).
``options`` is empty for free-form questions; otherwise ``answer`` is a letter. Questions refer to
their figures with ``<image1>``, ``<image2>``... markers although the release ships one composite
image per problem.

One record per problem. The ``<imageN>`` markers are removed (the export adds the one ``<image>``
token; a leftover ``<image1>`` would read as a second image to LLaVA-style loaders). When the
options are just their own letters (the real options are drawn in the figure), the prompt lists
the letters once (``Options: A, B, C, D, E``) instead of ``A. A`` lines.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

from loupe.pipeline.ingest.smr.base import (
    LETTERS,
    MC_INSTRUCTION,
    SmrRecord,
    check_split,
    conversation,
    find_root,
    iter_jsonl,
    leading_letter,
    mc_prompt,
    short_prompt,
    text,
)

SPLITS = ("test", "testmini")
_IMAGE_MARKER = re.compile(r"\s*<image\d+>\s*")


def clean_question(question: str) -> str:
    return _IMAGE_MARKER.sub("\n", question).strip()


def iter_records(root: Path, split: str) -> Iterator[SmrRecord]:
    check_split("mathvision", split, SPLITS)
    base = find_root(root, f"data/{split}.jsonl", nested=("MATH-V",))
    for r in iter_jsonl(base / "data" / f"{split}.jsonl"):
        if not text(r.get("id")) or not text(r.get("image")):
            continue
        question = clean_question(text(r.get("question")))
        options = [text(o) for o in r.get("options") or []]
        answer = text(r.get("answer"))
        if options:
            if all(o == LETTERS[i] for i, o in enumerate(options)):
                prompt = f"{question}\nOptions: {', '.join(options)}\n{MC_INSTRUCTION}"
            else:
                prompt = mc_prompt(question, options)
            answer = leading_letter(answer) or answer
        else:
            prompt = short_prompt(question)
        yield SmrRecord(
            record_id=text(r["id"]),
            image_path=base / text(r["image"]),
            conversations=conversation([(prompt, answer)]),
            meta={
                "answer": text(r.get("answer")),
                "options": options,
                "solution": r.get("solution"),
                "level": r.get("level"),
                "subject": r.get("subject"),
            },
        )
