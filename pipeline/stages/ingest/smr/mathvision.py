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
the letters once (``Options: A, B, C, D, E``) instead of ``A. A`` lines. With ``answer_style:
reasoning`` (the default) a problem with a ``solution`` is answered ``<solution>\nAnswer: <answer>``.

Splits. MATH-V releases only ``test`` (3040 problems) and ``testmini`` (304), and ``testmini`` is a
subset of ``test``. SMR trains on MathVision while leaving testmini out ("Our data will not include
the images from test-mini split automatically", SliME README, SMR data step 6), so ``train`` (the
default) reads ``test.jsonl`` minus every id in ``testmini.jsonl``: training on it cannot leak the
testmini benchmark. ``test`` and ``testmini`` read those files as they are (for evaluation).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

from loupe.pipeline.stages.ingest.smr.base import (
    LETTERS,
    MC_INSTRUCTION,
    LayoutError,
    SmrRecord,
    check_split,
    conversation,
    find_root,
    iter_jsonl,
    leading_letter,
    mc_prompt,
    short_prompt,
    text,
    with_rationale,
)

SPLITS = ("train", "test", "testmini")
_IMAGE_MARKER = re.compile(r"\s*<image\d+>\s*")


def clean_question(question: str) -> str:
    return _IMAGE_MARKER.sub("\n", question).strip()


def iter_records(root: Path, split: str, answer_style: str = "reasoning") -> Iterator[SmrRecord]:
    check_split("mathvision", split, SPLITS)
    name = "test" if split == "train" else split
    base = find_root(root, f"data/{name}.jsonl", nested=("MATH-V",))
    exclude: set[str] = set()
    if split == "train":
        mini = base / "data" / "testmini.jsonl"
        if not mini.is_file():
            raise LayoutError(
                "expected 'data/testmini.jsonl' beside data/test.jsonl: split 'train' leaves the testmini "
                "problems out, and without that file they cannot be told apart"
            )
        exclude = {text(r.get("id")) for r in iter_jsonl(mini)}
    for r in iter_jsonl(base / "data" / f"{name}.jsonl"):
        if not text(r.get("id")) or not text(r.get("image")) or text(r.get("id")) in exclude:
            continue
        question = clean_question(text(r.get("question")))
        options = [text(o) for o in r.get("options") or []]
        answer = text(r.get("answer"))
        if options:
            answer = leading_letter(answer) or answer
        reply, direct = with_rationale(r.get("solution"), answer, answer_style)
        if options:
            if all(o == LETTERS[i] for i, o in enumerate(options)):
                prompt = f"{question}\nOptions: {', '.join(options)}" + (
                    f"\n{MC_INSTRUCTION}" if direct else ""
                )
            else:
                prompt = mc_prompt(question, options, direct=direct)
        else:
            prompt = short_prompt(question, direct=direct)
        yield SmrRecord(
            record_id=text(r["id"]),
            image_path=base / text(r["image"]),
            conversations=conversation([(prompt, reply)]),
            meta={
                "answer": text(r.get("answer")),
                "options": options,
                "solution": r.get("solution"),
                "level": r.get("level"),
                "subject": r.get("subject"),
            },
        )
