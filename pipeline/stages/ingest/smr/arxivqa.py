"""ArxivQA (Li et al. 2024, "Multimodal ArXiv", ACL 2024): multiple-choice questions on arXiv figures.

Source: the Hub release https://huggingface.co/datasets/MMInstruction/ArxivQA (files
``arxivqa.jsonl`` and ``images.tgz``). Each JSON line is ``{"id", "image", "question", "options",
"label", "rationale"}`` where ``image`` is relative to the release folder (``images/<file>.jpg``,
unpacked from ``images.tgz``), ``options`` are already lettered (``"A. ..."``) and ``label`` is the
correct letter (sometimes followed by the option text). The release has one split, ``train``.

One record per figure: its questions become one multi-turn conversation whose prompts list the
options as released and end with the LLaVA-1.5 multiple-choice instruction; answers are the
letter, or with ``answer_style: reasoning`` (the default) the GPT-4V rationale then ``Answer: <letter>``
(the instruction to answer directly is then left out of the prompt).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from loupe.pipeline.stages.ingest.smr.base import (
    MC_INSTRUCTION,
    SmrRecord,
    check_split,
    find_root,
    grouped_record,
    iter_jsonl,
    leading_letter,
    text,
    with_rationale,
)

SPLITS = ("train",)


def iter_records(root: Path, split: str, answer_style: str = "reasoning") -> Iterator[SmrRecord]:
    check_split("arxivqa", split, SPLITS)
    base = find_root(root, "arxivqa.jsonl", nested=("ArxivQA",))
    by_image: dict[str, list[dict]] = {}
    for r in iter_jsonl(base / "arxivqa.jsonl"):
        if text(r.get("image")):
            by_image.setdefault(text(r["image"]), []).append(r)
    for image, rows_of_image in by_image.items():
        qas = []
        for r in rows_of_image:
            options = [text(o) for o in r.get("options") or [] if text(o)]
            answer = leading_letter(text(r.get("label"))) or ""
            reply, direct = with_rationale(r.get("rationale"), answer, answer_style) if answer else ("", True)
            prompt = "\n".join([text(r.get("question")), *options, *([MC_INSTRUCTION] if direct else [])])
            info = {
                "id": r.get("id"),
                "label": r.get("label"),
                "options": options,
                "rationale": r.get("rationale"),
            }
            qas.append((prompt, reply, info))
        yield grouped_record(image, base / image, qas)
