"""The conversation record every export writes and ``loupe.train`` reads."""

from __future__ import annotations

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
    own parquet layout is written by ``loupe.pipeline.export.formats``). ``image_url`` is null (or empty)
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
