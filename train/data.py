"""Reading Loupe's export: ``export/conversations.jsonl`` -> (image, turns, Llama-3 text) examples.

Each line is a :class:`~loupe.schemas.conversation.ConversationRecord`; ``image_url`` is a path
relative to the JSONL file (as export writes it), an absolute path, or a ``file://`` URL. Lines are
validated when the dataset is opened, so a malformed file fails at once with its line number, not
in the middle of training.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from PIL import Image
from pydantic import ValidationError

from loupe.schemas.conversation import ConversationRecord
from loupe.schemas.llama3 import llama3_render


class ConversationDataset:
    """``ds[i]`` -> ``{"uid", "source", "image": PIL RGB or None, "image_path", "conversations", "text"}``.

    ``text`` is the conversation rendered with the Llama-3 chat template (``llama3_render``),
    optionally with a ``system`` prompt first. Works as a ``torch.utils.data.Dataset`` (it has
    ``__len__`` and ``__getitem__``) without importing torch.
    """

    def __init__(self, path: str | Path, system: str | None = None):
        self.path = Path(path)
        self.root = self.path.parent
        self.system = system
        self.records: list[ConversationRecord] = []
        with self.path.open(encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    self.records.append(ConversationRecord.model_validate(json.loads(line)))
                except (json.JSONDecodeError, ValidationError) as e:
                    raise ValueError(f"{self.path}:{n}: not a conversation record: {e}") from e

    def __len__(self) -> int:
        return len(self.records)

    def image_path(self, i: int) -> Path | None:
        url = self.records[i].image_url
        if not url:
            return None
        parts = urlsplit(url)
        if parts.scheme == "file":
            return Path(unquote(parts.path))
        if parts.scheme in ("http", "https"):
            raise ValueError(f"record {i}: image_url {url!r} is remote; export images locally first")
        p = Path(url)
        return p if p.is_absolute() else self.root / p

    def __getitem__(self, i: int) -> dict[str, Any]:
        rec = self.records[i]
        turns = [t.model_dump(by_alias=True) for t in rec.conversations]
        path = self.image_path(i)
        image = None
        if path is not None:
            with Image.open(path) as im:
                image = im.convert("RGB")
        return {
            "uid": rec.uid,
            "source": rec.source,
            "image": image,
            "image_path": str(path) if path else None,
            "conversations": turns,
            "text": llama3_render(turns, system=self.system),
        }
