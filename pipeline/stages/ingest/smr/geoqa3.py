"""GeoQA (Chen et al., Findings of ACL 2021), the corrected "GeoQA3" release: Chinese middle-school
geometry problems with diagrams, four choices each.

Source: https://github.com/chen-judge/GeoQA (README: unzip ``data.zip`` into the checkout, evaluate
on ``data/GeoQA3/test.pk``; reader ``utils.py`` ``SeqReader``). Two layouts are read::

    GeoQA3/  train.pk  dev.pk  test.pk            the pickles (splits as released)
    GeoQA3/  json/<id>.json  image/<id>.png       the per-problem files SMR distributes
                                                  (SliME README, "SMR data structure", step 5)

A ``json/<id>.json`` holds the same fields as a pickled problem minus the image (``subject`` is the
Chinese problem text in this layout); its diagram is ``image/<id>.png``. The per-problem files carry
no split, so every problem in ``json/`` is read whatever ``split`` says (SMR trains on what its JSON
lists); when the pickles are there too, they are used and the splits are exact.

Each ``.pk`` is a pickled list of problems with the diagram embedded as a numpy array; see
:mod:`loupe.pipeline.stages.ingest.smr._geoqa` for the fields and the safe loader. ``path`` may point at
``GeoQA3``, at ``data`` or at the checkout. ``split: val`` is read as ``dev``.

One record per problem: the English problem text (the Chinese original when a file has no
English) with lettered choices; the answer is the letter. The diagram is stored as PNG.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from loupe.pipeline.stages.ingest.smr._geoqa import iter_pickle, question_text
from loupe.pipeline.stages.ingest.smr.base import (
    LayoutError,
    SmrRecord,
    check_split,
    conversation,
    letter,
    mc_prompt,
    text,
)

SPLITS = ("train", "dev", "val", "test")


def _numeric(p: Path) -> tuple[int, str]:
    return (int(p.stem), p.stem) if p.stem.isdigit() else (1 << 62, p.stem)


def iter_json_layout(base: Path) -> Iterator[SmrRecord]:
    """``json/<id>.json`` + ``image/<id>.png`` (the layout in SMR's GeoQA3 download)."""
    for f in sorted((base / "json").glob("*.json"), key=_numeric):
        try:
            p = json.loads(f.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        choices = [text(c) for c in p.get("choices") or []] if isinstance(p, dict) else []
        label = p.get("label") if isinstance(p, dict) else None
        if not isinstance(label, int) or not 0 <= label < len(choices):
            continue
        question = question_text(p) or text(p.get("subject"))
        yield SmrRecord(
            record_id=f.stem,
            image_path=base / "image" / f"{f.stem}.png",
            conversations=conversation([(mc_prompt(question, choices), letter(label))]),
            meta={
                "id": text(p.get("id")) or f.stem,
                "answer": letter(label),
                "choices": choices,
                "problem_zh": text(p.get("subject")) or text(p.get("problem")) or None,
                "manual_program": p.get("manual_program"),
                "layout": "json",
            },
        )


def iter_records(root: Path, split: str) -> Iterator[SmrRecord]:
    check_split("geoqa3", split, SPLITS)
    name = "dev" if split == "val" else split
    for nested in ("", "GeoQA3", "data/GeoQA3"):
        if (root / nested / f"{name}.pk").is_file():
            yield from iter_pickle(root / nested / f"{name}.pk", name)
            return
    for nested in ("", "GeoQA3", "data/GeoQA3"):
        if (root / nested / "json").is_dir() and (root / nested / "image").is_dir():
            yield from iter_json_layout(root / nested)
            return
    raise LayoutError(
        f"expected '{name}.pk' or 'json/<id>.json' + 'image/<id>.png' (or under 'GeoQA3/') inside it"
    )
