"""SMR as SliME released it: one LLaVA-format JSON with the images of all 11 datasets.

Source: the SliME README ("[Dataset](https://huggingface.co/datasets/yifanzhang114/SMR)", "SMR data
structure"): the conversations are one JSON list in LLaVA's format, ``[{"id", "image",
"conversations": [{"from": "human"|"gpt", "value"}]}]``, and ``image`` is a path under the data
folder laid out as the README shows (``arxivqa/images/...``, ``DVQA/images/...``,
``Geometry3K/<i>/img_diagram.png``, ``ChartQA/...``, ``GeoQA3/image/...``, ``geoqa+/images/...``, ...).
``path`` is that data folder; the JSON is the one ``*.json`` file in it (or name it with
``annotation``). The conversations are taken as released (reasoning-style answers included); the
first path component of ``image`` is kept as ``meta.origin`` (which dataset the record came from).
``split`` is not used: the release is training data.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from loupe.pipeline.stages.ingest.smr.base import LayoutError, SmrRecord, llava_records, read_json

SPLITS = None


def find_annotation(root: Path, annotation: str | None) -> Path:
    if annotation:
        p = root / annotation
        if not p.is_file():
            raise LayoutError(f"annotation {annotation!r} is not a file inside it")
        return p
    found = sorted(root.glob("*.json"))
    if len(found) != 1:
        names = ", ".join(p.name for p in found) or "none"
        raise LayoutError(
            f"expected exactly one LLaVA-format '*.json' inside it (found: {names}); set annotation"
        )
    return found[0]


def iter_records(root: Path, split: str, annotation: str | None = None) -> Iterator[SmrRecord]:
    ann = find_annotation(root, annotation)
    yield from llava_records(read_json(ann), root, str(ann))
