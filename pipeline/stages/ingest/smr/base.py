"""What every SMR adapter shares: the record it yields, its errors, and the prompt conventions.

An adapter is a module with ``SPLITS`` (the split names its release has, or ``None`` for any) and
``iter_records(root, split) -> Iterator[SmrRecord]`` that reads the dataset's *native* release
files. Adapters never decode images; :class:`loupe.pipeline.stages.ingest.smr.Smr` reads, decodes and
turns missing or corrupt images into ``drops/`` rows.

Conversation conventions (LLaVA-1.5, Liu et al. 2023 "Improved Baselines with Visual Instruction
Tuning", Table 7 "response formatting prompts", used for its ScienceQA / VQA / A-OKVQA mixture):

- multiple choice: ``question`` + one ``"A. choice"`` line per option + ``"Answer with the option's
  letter from the given choices directly."``; the answer is the letter alone.
- short answer: ``question`` + ``"Answer the question using a single word or phrase."``; the answer
  is the dataset's answer text.

Answer style (``answer_style`` in the recipe). SMR's released conversations answer its reasoning
sets with a rationale followed by the final answer (read from the release JSON, yifanzhang114/SMR on
the Hugging Face hub; not verifiable offline here, so the ``release`` adapter reads that file as is). Where a dataset ships a rationale (ScienceQA's ``solution``,
MathVision's ``solution``, TabMWP's ``solution``, ArxivQA's ``rationale``), ``reasoning`` (the
default) answers ``<rationale>\nAnswer: <letter or value>`` and the prompt drops the "answer ...
directly" instruction; ``letter`` keeps LLaVA-1.5's short form. Datasets without a rationale answer
with the letter / value in both styles.

Several questions about the same image become one multi-turn conversation (as LLaVA-1.5 does for
VQAv2), so exact dedup on image bytes never throws questions away. The ``<image>`` token is not
added here: the export stage adds it to the first human turn.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
MC_INSTRUCTION = "Answer with the option's letter from the given choices directly."
SHORT_INSTRUCTION = "Answer the question using a single word or phrase."


@dataclass
class SmrRecord:
    """One image with its questions and answers, as read from a dataset's release files."""

    record_id: str  # native id, unique within the dataset (and split where ids are per-split)
    image_path: Path | None  # image file on disk; for images stored inside annotations, that file
    conversations: list[dict[str, str]]  # [{"from": "human"|"gpt", "value": ...}, ...], alternating
    alt_text: str | None = None  # caption-like text that came with the image, if any
    meta: dict[str, Any] = field(default_factory=dict)  # native fields worth keeping (answers, ids...)
    image_bytes: bytes | None = None  # set when the image is embedded in the annotations (GeoQA pickles)


class AdapterError(Exception):
    """A release that does not match what the adapter expects; ``field`` is the recipe key at fault."""

    field = "path"


class LayoutError(AdapterError):
    """An expected file or folder is missing or unreadable."""


class SplitError(AdapterError):
    field = "split"


def check_split(dataset: str, split: str, splits: Iterable[str] | None) -> None:
    if splits is not None and split not in splits:
        raise SplitError(f"{dataset} has no split {split!r}; valid: {', '.join(splits)}")


def find_root(root: Path, marker: str, nested: Iterable[str] = (), shown: str | None = None) -> Path:
    """The folder holding ``marker``: ``root`` itself or one of the usual sub-folders a release
    unpacks to (e.g. ``ChartQA Dataset/``), so users may point at either level. ``shown`` is how
    the marker is named in the error (e.g. ``questions/<n>.png.json`` for a folder marker)."""
    candidates = [root, *(root / n for n in nested)]
    for c in candidates:
        if (c / marker).exists():
            return c
    shown = shown or marker
    where = " or ".join(repr(f"{n}/{shown}" if n else shown) for n in ["", *nested])
    raise LayoutError(f"expected {where} inside it")


def read_json(path: Path) -> Any:
    if not path.is_file():
        raise LayoutError(f"expected file {path.name!r} at {path}")
    try:
        with path.open(encoding="utf-8") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise LayoutError(f"{path} is not valid JSON: {e}") from None


def iter_jsonl(path: Path) -> Iterable[dict]:
    """Rows of a JSON-lines file; a malformed line is skipped (one bad line must not stop a dataset)."""
    if not path.is_file():
        raise LayoutError(f"expected file {path.name!r} at {path}")
    with path.open(encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(row, dict):
                yield row


def text(value: Any) -> str:
    """A native field as clean text ('' for None)."""
    return "" if value is None else str(value).strip()


def mc_prompt(question: str, choices: list[str], context: str = "", direct: bool = True) -> str:
    lines = [f"Context: {context}"] if context else []
    lines.append(question)
    lines += [f"{LETTERS[i]}. {c}" for i, c in enumerate(choices)]
    if direct:
        lines.append(MC_INSTRUCTION)
    return "\n".join(lines)


def short_prompt(question: str, direct: bool = True) -> str:
    return f"{question}\n{SHORT_INSTRUCTION}" if direct else question


def with_rationale(rationale: Any, answer: str, style: str) -> tuple[str, bool]:
    """(answer text, whether the prompt asks for a direct answer) in the recipe's ``answer_style``."""
    why = text(rationale)
    if style == "reasoning" and why:
        return f"{why}\nAnswer: {answer}", False
    return answer, True


def llava_records(rows: Any, image_root: Path, where: str) -> Iterable[SmrRecord]:
    """LLaVA-format records (``{"id", "image", "conversations": [{"from", "value"}]}``) -> SmrRecords.

    ``<image>`` tokens are removed (the export adds one to the first human turn); a record without an
    image, or whose turns are not human/gpt pairs, is skipped. Repeated ids get ``#2``, ``#3``...
    """
    if not isinstance(rows, list):
        raise LayoutError(f"{where} should hold a list of LLaVA records")
    seen: dict[str, int] = {}
    for i, r in enumerate(rows):
        if (
            not isinstance(r, dict)
            or not text(r.get("image"))
            or not isinstance(r.get("conversations"), list)
        ):
            continue
        pairs, turns = [], r["conversations"]
        for q, a in zip(turns[0::2], turns[1::2]):
            if not (isinstance(q, dict) and isinstance(a, dict)) or (q.get("from"), a.get("from")) != (
                "human",
                "gpt",
            ):
                pairs = []
                break
            pairs.append((text(q.get("value")).replace("<image>", "").strip(), text(a.get("value"))))
        if not pairs:
            continue
        rid = text(r.get("id")) or str(i)
        seen[rid] = seen.get(rid, 0) + 1
        image = text(r["image"])
        yield SmrRecord(
            record_id=rid + (f"#{seen[rid]}" if seen[rid] > 1 else ""),
            image_path=image_root / image,
            conversations=conversation(pairs),
            meta={"id": r.get("id"), "image": image, "origin": image.split("/")[0] if "/" in image else None},
        )


def grouped_record(
    record_id: str,
    image_path: Path,
    qas: Iterable[tuple[str, str, dict[str, Any]]],
    before: dict[str, Any] | None = None,
    after: dict[str, Any] | None = None,
) -> SmrRecord:
    """Several questions on one image as one multi-turn record (LLaVA-1.5's VQAv2 form): ``qas`` holds
    ``(prompt, answer, info)`` per question, the infos become ``meta["questions"]`` between the keys of
    ``before`` and ``after``. A question with an empty prompt or answer stays in the meta only."""
    qas = list(qas)
    return SmrRecord(
        record_id=record_id,
        image_path=image_path,
        conversations=conversation((p, a) for p, a, _ in qas),
        meta={**(before or {}), "questions": [info for _, _, info in qas], **(after or {})},
    )


def letter(index: int) -> str:
    return LETTERS[index]


_LEADING_LETTER = re.compile(r"^\(?([A-Z])(?:[).:]|\s|$)")


def leading_letter(value: str) -> str | None:
    """'B', 'B.', '(B)', 'B) text' -> 'B'."""
    m = _LEADING_LETTER.match(value.strip())
    return m.group(1) if m else None


def conversation(pairs: Iterable[tuple[str, str]]) -> list[dict[str, str]]:
    """Question/answer pairs -> alternating human/gpt turns; pairs with an empty side are left out."""
    turns: list[dict[str, str]] = []
    for q, a in pairs:
        if q.strip() and a.strip():
            turns += [{"from": "human", "value": q}, {"from": "gpt", "value": a}]
    return turns
