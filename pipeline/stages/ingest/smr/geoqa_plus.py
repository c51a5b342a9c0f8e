"""GeoQA+ (Cao & Xiao, COLING 2022, "An Augmented Benchmark Dataset for Geometric Question
Answering through Dual Parallel Text Encoding"): GeoQA plus newly annotated problems.

Source: https://github.com/SCNU203/GeoQA-Plus (README; config ``GeoQA+/config/NGS_Aux.json`` reads
``data/GeoQA2.2/{train,dev,test}.pk``). The release ``data.zip`` holds ``GeoQA-train.pk`` (GeoQA's
training set), ``Mix-train.pk`` (GeoQA + the new problems), ``Backtrans-train.pk`` (Mix-train with
back-translation augmentation), ``new-test.pk`` (test set of the new problems), ``dev.pk`` /
``test.pk``, and ``json-image_files`` with the original problems. The README asks users to rename
the chosen training file to ``train.pk``.

Splits: ``train`` reads ``train.pk`` if present, else ``Mix-train.pk``; ``test`` reads ``test.pk``
else ``new-test.pk``; ``dev`` reads ``dev.pk``; ``mix-train``, ``backtrans-train``,
``geoqa-train`` and ``new-test`` read those files by name. ``path`` may point at ``GeoQA2.2`` or
its parents. Pickle format and records as for GeoQA3 (:mod:`loupe.pipeline.stages.ingest.smr._geoqa`).

SMR distributes GeoQA+ as InternVL packed it (SliME README, step 11: ``geoqa+_images.zip`` from
OpenGVLab/InternVL, unpacked to ``geoqa+/images/``), with the conversations in InternVL's LLaVA-format
annotation file ``geoqa+.jsonl`` (``{"id", "image": "geoqa+/images/<n>.png", "conversations"}``,
one per line; a ``.json`` list works too). When no pickle is found, ``path`` may be that layout: a
folder holding ``geoqa+.jsonl`` (or ``geoqa+.json``) whose ``image`` paths resolve against the folder or
its parent. Those records keep InternVL's wording; ``split`` is not used (the file is training data).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from loupe.pipeline.stages.ingest.smr._geoqa import iter_pickle
from loupe.pipeline.stages.ingest.smr.base import (
    LayoutError,
    SmrRecord,
    check_split,
    iter_jsonl,
    llava_records,
    read_json,
)

FILES = {
    "train": ("train.pk", "Mix-train.pk"),
    "dev": ("dev.pk",),
    "val": ("dev.pk",),
    "test": ("test.pk", "new-test.pk"),
    "mix-train": ("Mix-train.pk",),
    "backtrans-train": ("Backtrans-train.pk",),
    "geoqa-train": ("GeoQA-train.pk",),
    "new-test": ("new-test.pk",),
}
SPLITS = tuple(FILES)
NESTED = ("", "GeoQA2.2", "data/GeoQA2.2", "GeoQA+/data/GeoQA2.2")


def iter_records(root: Path, split: str) -> Iterator[SmrRecord]:
    check_split("geoqa_plus", split, SPLITS)
    for folder in NESTED:
        for name in FILES[split]:
            if (root / folder / name).is_file():
                yield from iter_pickle(root / folder / name, split)
                return
    for name in ("geoqa+.jsonl", "geoqa+.json"):
        ann = root / name
        if ann.is_file():
            rows = list(iter_jsonl(ann)) if name.endswith(".jsonl") else read_json(ann)
            first = next((r.get("image") for r in rows if isinstance(r, dict) and r.get("image")), "")
            image_root = root if (root / str(first)).exists() else root.parent
            yield from llava_records(rows, image_root, str(ann))
            return
    wanted = " or ".join(repr(n) for n in FILES[split])
    raise LayoutError(f"expected {wanted} inside it (or under 'GeoQA2.2/'), or InternVL's 'geoqa+.jsonl'")
