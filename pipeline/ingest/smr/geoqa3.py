"""GeoQA (Chen et al., Findings of ACL 2021), the corrected "GeoQA3" release: Chinese middle-school
geometry problems with diagrams, four choices each.

Source: https://github.com/chen-judge/GeoQA (README: unzip ``data.zip`` into the checkout, evaluate
on ``data/GeoQA3/test.pk``; reader ``utils.py`` ``SeqReader``). Layout::

    GeoQA3/  train.pk  dev.pk  test.pk

Each ``.pk`` is a pickled list of problems with the diagram embedded as a numpy array; see
:mod:`loupe.pipeline.ingest.smr._geoqa` for the fields and the safe loader. ``path`` may point at
``GeoQA3``, at ``data`` or at the checkout. ``split: val`` is read as ``dev``.

One record per problem: the English problem text (the Chinese original when a file has no
English) with lettered choices; the answer is the letter. The diagram is stored as PNG.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from loupe.pipeline.ingest.smr._geoqa import iter_pickle
from loupe.pipeline.ingest.smr.base import SmrRecord, check_split, find_root

SPLITS = ("train", "dev", "val", "test")


def iter_records(root: Path, split: str) -> Iterator[SmrRecord]:
    check_split("geoqa3", split, SPLITS)
    name = "dev" if split == "val" else split
    base = find_root(root, f"{name}.pk", nested=("GeoQA3", "data/GeoQA3"))
    yield from iter_pickle(base / f"{name}.pk", name)
