"""DVQA (Kafle et al., CVPR 2018): bar-chart question answering.

Source: https://github.com/kushalkafle/DVQA_dataset (README, "Download Links"). The release is
two archives: the images, all in one folder and named ``bar_{split}_xxxxxxxx.png``, and the
question-answer pairs, one file per split named ``{split}_qa.json`` with splits ``train``,
``val_easy`` and ``val_hard``. Each QA file is a list of ``{"question_id", "image", "question",
"answer", "template_id", "answer_bbox"}``: ``template_id`` says whether the question is of the
structure, data or reasoning type and ``answer_bbox`` is the ``[x, y, w, h]`` box of the answer text
in the chart (``[]`` when the answer is not drawn). The README's field list names these two
``question_type`` and ``bbox_answer``, but the released JSON files use ``template_id`` and
``answer_bbox``; we read the files' keys and fall back to the README's names. Unpacked, that is::

    <path>/images/bar_train_00000000.png ...
    <path>/qa/train_qa.json  val_easy_qa.json  val_hard_qa.json

The QA files may also sit directly in ``<path>``, and the images too.

One record per chart image: all its questions become one multi-turn conversation (LLaVA-1.5
short-answer prompt), so a chart is ingested once however many questions it has.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from loupe.pipeline.stages.ingest.smr.base import (
    LayoutError,
    SmrRecord,
    check_split,
    grouped_record,
    read_json,
    short_prompt,
    text,
)

SPLITS = ("train", "val_easy", "val_hard")


def iter_records(root: Path, split: str) -> Iterator[SmrRecord]:
    check_split("dvqa", split, SPLITS)
    name = f"{split}_qa.json"
    qa_path = next((p for p in (root / "qa" / name, root / name) if p.is_file()), None)
    if qa_path is None:
        raise LayoutError(f"expected 'qa/{name}' or '{name}' inside it")
    rows = read_json(qa_path)
    if not isinstance(rows, list):
        raise LayoutError(f"{qa_path} should hold a list of question-answer pairs")
    image_dir = root / "images" if (root / "images").is_dir() else root
    by_image: dict[str, list[dict]] = {}
    for r in rows:
        if isinstance(r, dict) and text(r.get("image")):
            by_image.setdefault(text(r["image"]), []).append(r)
    for image, rows_of_image in by_image.items():
        qas = [
            (
                short_prompt(text(r.get("question"))),
                text(r.get("answer")),
                {
                    "question_id": r.get("question_id"),
                    "template_id": r.get("template_id", r.get("question_type")),
                    "answer": text(r.get("answer")),
                    "answer_bbox": r.get("answer_bbox", r.get("bbox_answer")) or None,
                },
            )
            for r in rows_of_image
        ]
        yield grouped_record(image, image_dir / image, qas)
