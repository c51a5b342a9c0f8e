"""ChartQA (Masry et al., Findings of ACL 2022).

Source: the release layout documented in https://github.com/vis-nlp/ChartQA (README, "Full
Version", also on the Hub as ahmed-masry/ChartQA)::

    ChartQA Dataset/
      train/ train_human.json  train_augmented.json  png/<chart>.png  tables/<chart>.csv
      val/   val_human.json    val_augmented.json    png/ ...
      test/  test_human.json   test_augmented.json   png/ ...

Each JSON file is a list of ``{"imgname", "query", "label"}``; ``*_human`` holds ChartQA-H
(human-written), ``*_augmented`` ChartQA-M (machine-generated) questions. ``path`` may point at
``ChartQA Dataset`` or at the folder holding it.

One record per chart: every question on it (human first, then augmented, each in file order)
becomes one turn pair with the LLaVA-1.5 short-answer prompt. The chart's data table
(``tables/<chart>.csv``) is kept in ``meta.table``.
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

SPLITS = ("train", "val", "test")
SUBSETS = ("human", "augmented")


def iter_records(root: Path, split: str) -> Iterator[SmrRecord]:
    check_split("chartqa", split, SPLITS)
    base = _split_dir(root, split)
    by_chart: dict[str, list[tuple[str, str, str]]] = {}
    for subset in SUBSETS:
        path = base / f"{split}_{subset}.json"
        if not path.is_file():
            continue
        rows = read_json(path)
        if not isinstance(rows, list):
            raise LayoutError(f"{path} should hold a list of questions")
        for r in rows:
            if isinstance(r, dict) and text(r.get("imgname")):
                by_chart.setdefault(text(r["imgname"]), []).append(
                    (text(r.get("query")), text(r.get("label")), subset)
                )
    for chart, questions in by_chart.items():
        table = base / "tables" / (Path(chart).stem + ".csv")
        qas = [(short_prompt(q), a, {"query": q, "label": a, "subset": s}) for q, a, s in questions]
        csv = table.read_text(encoding="utf-8", errors="replace") if table.is_file() else None
        yield grouped_record(f"{split}/{chart}", base / "png" / chart, qas, after={"table": csv})


def _split_dir(root: Path, split: str) -> Path:
    for base in (root / split, root / "ChartQA Dataset" / split):
        if any((base / f"{split}_{s}.json").is_file() for s in SUBSETS):
            return base
    raise LayoutError(
        f"expected '{split}/{split}_human.json' or '{split}/{split}_augmented.json' "
        f"(optionally under 'ChartQA Dataset/') inside it"
    )
