"""The conversation record every export writes and ``loupe.train`` reads."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class Turn(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    from_: Literal["human", "gpt", "system"] = Field(alias="from")
    value: str

    @field_validator("value")
    @classmethod
    def _not_empty(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("turn value is empty")
        return v


class ConversationRecord(BaseModel):
    """Loupe's canonical JSONL line: {"image_url", "conversations", "source"} (structured turns; Dragonfly's
    own parquet layout is written by ``loupe.pipeline.stages.export.formats``). ``image_url`` is null (or empty)
    for a text-only sample."""

    model_config = ConfigDict(extra="forbid")
    image_url: str | None = None
    conversations: list[Turn]
    source: str
    uid: str | None = None

    @field_validator("conversations")
    @classmethod
    def _alternates(cls, turns: list[Turn]) -> list[Turn]:
        turns_ = [t for t in turns if t.from_ != "system"]
        if len(turns_) < 2:
            raise ValueError("a conversation needs at least one human and one gpt turn")
        for i, t in enumerate(turns_):
            want = "human" if i % 2 == 0 else "gpt"
            if t.from_ != want:
                raise ValueError(f"turn {i} is from {t.from_!r}, expected {want!r} (turns must alternate)")
        return turns

    def to_json_dict(self) -> dict:
        return self.model_dump(by_alias=True, exclude_none=True)


#: the single-file export (a small run, or ``export.shard_size`` unset)
CONVERSATIONS = "conversations.jsonl"
#: the sharded export's index: ``{"format", "records", "shards": [{"path", "records"}]}``, paths
#: relative to the index's folder (``conversations-00000.jsonl`` ...)
CONVERSATIONS_INDEX = "conversations.index.json"


def shard_name(i: int) -> str:
    return f"conversations-{i:05d}.jsonl"


def conversation_files(path: str | os.PathLike) -> list[Path]:
    """The JSONL files of a llama3_jsonl export: ``path`` itself (a ``.jsonl``), or the shards an index
    file lists, in order. A missing shard or a malformed index is a ``ValueError`` naming the file."""
    p = Path(path)
    if not p.name.endswith(".index.json"):
        return [p]
    try:
        index = json.loads(p.read_text(encoding="utf-8"))
        shards = [p.parent / s["path"] for s in index["shards"]]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as e:
        raise ValueError(f"{p}: not a conversations index ({e})") from None
    missing = [s.name for s in shards if not s.is_file()]
    if missing:
        raise ValueError(f"{p}: lists shard {missing[0]} which does not exist (an interrupted export?)")
    return shards
