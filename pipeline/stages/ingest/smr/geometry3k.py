"""Geometry3K (Lu et al., ACL 2021, "Inter-GPS"): multiple-choice geometry problems with diagrams.

Source: https://github.com/lupantech/InterGPS (``data/geometry3k/``, and the problem folders in
``annotation_tool/data_collection/data_examples/<id>/``). The release unpacks to::

    geometry3k/
      train/<id>/data.json  img_diagram.png  logic_form.json ...
      val/<id>/...
      test/<id>/...

``data.json`` holds ``problem_text``, four ``choices``, ``answer`` (a letter), ``id``,
``problem_type_graph``, ``problem_type_goal``, ``source``... ``path`` may point at ``geometry3k``
or at the InterGPS checkout (``data/geometry3k`` inside it).

Splits: ``train`` (the default) reads ``train/`` and ``val/`` together, as SMR does: its JSON points
at ``Geometry3K/<i>/img_diagram.png`` for the problem folders 0-2400 (SliME README, "SMR data
structure" and step 4), and InterGPS numbers train 0-2100 and val 2101-2400. ``train_only``, ``val``
and ``test`` read one folder each.

One record per problem: the problem text with lettered choices; the answer is the letter.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from loupe.pipeline.stages.ingest.smr.base import (
    LayoutError,
    SmrRecord,
    check_split,
    conversation,
    find_root,
    leading_letter,
    mc_prompt,
    text,
)

SPLITS = ("train", "train_only", "val", "test")
FOLDERS = {"train": ("train", "val"), "train_only": ("train",), "val": ("val",), "test": ("test",)}


def _numeric(name: str) -> tuple[int, str]:
    return (int(name), name) if name.isdigit() else (1 << 62, name)


def _problem_folders(root: Path, name: str) -> list[Path]:
    shown = f"{name}/<id>/data.json"
    base = find_root(root, name, nested=("geometry3k", "data/geometry3k"), shown=shown) / name
    folders = sorted((p for p in base.iterdir() if p.is_dir()), key=lambda p: _numeric(p.name))
    if not any((p / "data.json").is_file() for p in folders[:50]):
        raise LayoutError(f"expected {shown!r} inside it")
    return folders


def iter_records(root: Path, split: str) -> Iterator[SmrRecord]:
    check_split("geometry3k", split, SPLITS)
    folders = [f for name in FOLDERS[split] for f in _problem_folders(root, name)]
    for folder in folders:
        try:
            data = json.loads((folder / "data.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue  # a problem folder without readable data.json is not a problem
        choices = [text(c) for c in data.get("choices") or []]
        answer = leading_letter(text(data.get("answer"))) or ""
        yield SmrRecord(
            record_id=str(data.get("id", folder.name)),
            image_path=folder / "img_diagram.png",
            conversations=conversation([(mc_prompt(text(data.get("problem_text")), choices), answer)]),
            meta={
                "answer": answer,
                "choices": choices,
                "problem_type_graph": data.get("problem_type_graph"),
                "problem_type_goal": data.get("problem_type_goal"),
                "source": data.get("source"),
            },
        )
