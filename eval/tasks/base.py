"""What a benchmark task is: read the official annotation files, build the seed models' prompts,
score predictions. Tasks register by name in :data:`TASKS` (``loupe eval --task NAME``).

A task never runs a model itself (``eval/runner.py`` does), so every task is tested on fixture
files in the official layout with predictions written by hand.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from typing import Any, ClassVar

from loupe.schemas.errors import LoupeError

SHORT_ANSWER = "Answer the question using a single word or phrase."  # LLaVA-1.5 paper, Table 7
LETTER_ANSWER = "Answer with the option's letter from the given choices directly."


@dataclass
class Sample:
    """One model call. ``qid`` is unique within the task; ``image`` a path or raw bytes;
    ``prompt`` the user text after ``<image>\\n``; ``question`` the bare question (DualFocus's box
    prompt quotes it); ``options`` the option texts of a multiple-choice question; ``gt`` whatever
    the scorer needs."""

    qid: str
    image: Path | bytes | None
    prompt: str
    question: str
    options: list[str] | None = None
    gt: dict[str, Any] = field(default_factory=dict)

    def load_image(self):
        from PIL import Image

        if self.image is None:
            return None
        try:
            if isinstance(self.image, bytes):
                with Image.open(BytesIO(self.image)) as im:
                    return im.convert("RGB")
            with Image.open(self.image) as im:
                return im.convert("RGB")
        except FileNotFoundError as e:
            raise LoupeError(f"question {self.qid}: image {self.image} does not exist") from e
        except OSError as e:
            where = self.image if isinstance(self.image, Path) else "(embedded image)"
            raise LoupeError(f"question {self.qid}: image {where} cannot be read: {e}") from e


class Task(ABC):
    """A benchmark. Subclasses set ``name``, ``headline`` (the key of ``scores.json`` that the
    results table shows), ``files`` (what ``--data`` must contain, for ``--help`` and errors)."""

    name: ClassVar[str]
    headline: ClassVar[str]
    files: ClassVar[str]

    def __init__(self, data: str | Path, **options: Any):
        self.data = Path(data).expanduser()
        if not self.data.exists():
            raise LoupeError(f"--data: {self.data} does not exist ({self.name} expects {self.files})")
        self.options = options

    def file(self, *parts: str) -> Path:
        """A required file under ``--data``; a clear error naming it when missing."""
        p = self.data.joinpath(*parts)
        if not p.exists():
            raise LoupeError(
                f"{self.name}: missing annotation file {p} (expected under --data: {self.files})"
            )
        return p

    def read_json(self, *parts: str) -> Any:
        p = self.file(*parts)
        try:
            return json.loads(p.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise LoupeError(f"{self.name}: {p} is not valid JSON: {e}") from e

    @abstractmethod
    def samples(self) -> list[Sample]: ...

    @abstractmethod
    def score(self, samples: list[Sample], preds: dict[str, str | None]) -> dict[str, Any]:
        """Scores from predictions keyed by ``qid``; a missing key (or None) is a wrong answer."""


TASKS: dict[str, type[Task]] = {}


def register(cls: type[Task]) -> type[Task]:
    TASKS[cls.name] = cls
    return cls


def get_task(name: str, data: str | Path, **options: Any) -> Task:
    import loupe.eval.tasks  # noqa: F401  (registers every task)

    if name not in TASKS:
        raise LoupeError(f"--task: {name!r} is not a task; valid: {', '.join(sorted(TASKS))}")
    return TASKS[name](data, **options)


def field_of(record: dict, key: str, where: str) -> Any:
    """``record[key]`` or a clear error naming the record and the field."""
    try:
        return record[key]
    except (KeyError, TypeError):
        raise LoupeError(f"{where}: no field {key!r}") from None
