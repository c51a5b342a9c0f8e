"""Read every export Loupe writes into one sample list: (uid, turns, image path, boxes).

Formats (``data.format``; ``auto`` picks by name):

* ``llama3_jsonl``      - ``export/conversations.jsonl``: ``{"image_url", "conversations", "source", "uid"}``
  (schemas/conversation.py), ``image_url`` relative to the file; null/empty for a text-only sample;
  a sharded export (``export.shard_size``) is read through its ``conversations.index.json``, shard
  by shard in the index's order;
* ``llava_json``        - ``export/llava.json``: ``[{"id", "image", "conversations"}]``, ``<image>`` in
  turn 0 and no ``image`` key for text-only samples (LLaVA's own convention);
* ``dragonfly_parquet`` - Dragonfly's loader format (togethercomputer/Dragonfly
  pipeline/data_utils/data.py:60-80): parquet with ``image_url`` (relative to the image dir; empty =
  text-only), ``source`` and ``conversations`` as ONE pre-rendered Llama-3 string without
  ``<|begin_of_text|>``; it is parsed back into turns.

A bad record (not a conversation, an empty turn, a missing or unreadable image) is skipped and
counted by reason; :class:`SampleSet` keeps the counts and the first examples for the log. Boxes for
MG-LLaVA come from the run's ``experts/detect`` table (normalised xyxy -> pixels of the image).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from PIL import Image
from pydantic import ValidationError

from loupe.schemas.conversation import (
    CONVERSATIONS,
    CONVERSATIONS_INDEX,
    ConversationRecord,
    conversation_files,
)

_LLAMA3_MSG = re.compile(
    r"<\|start_header_id\|>(system|user|assistant)<\|end_header_id\|>\n\n(.*?)<\|eot_id\|>", re.DOTALL
)
_ROLE = {"system": "system", "user": "human", "assistant": "gpt"}


@dataclass
class Sample:
    uid: str
    source: str
    turns: list[dict[str, str]]
    image: Path | None = None
    size: tuple[int, int] | None = None  # (width, height) of the image
    boxes: list[list[float]] | None = None  # pixel xyxy


@dataclass
class SampleSet:
    samples: list[Sample] = field(default_factory=list)
    skipped: Counter = field(default_factory=Counter)
    examples: dict[str, str] = field(default_factory=dict)
    path: Path | None = None
    format: str = ""
    run_dir: Path | None = None

    def skip(self, reason: str, where: str) -> None:
        self.skipped[reason] += 1
        self.examples.setdefault(reason, where)


def locate(path: str | Path, fmt: str = "auto", plain: bool = False) -> tuple[Path, str, Path | None]:
    """A data path (export file, export/ folder or run dir) -> (file, format, run dir or None).

    In an export folder ``auto`` takes ``conversations.jsonl``, or ``llava_plain.json`` (2-turn caption
    pairs) when ``plain`` (the pre-alignment template) and the export has one."""
    p = Path(path)
    if not p.exists():
        raise ValueError(f"data.path: {str(path)!r} does not exist")
    run_dir = None
    if p.is_dir() and (p / "manifest.json").exists():
        run_dir, p = p, p / "export"
    if p.is_dir():
        if run_dir is None and (p.parent / "manifest.json").exists():
            run_dir = p.parent
        candidates = {
            "llama3_jsonl": [p / CONVERSATIONS, p / CONVERSATIONS_INDEX],
            "llava_json": [p / "llava.json"],
            "llava_plain_json": [p / "llava_plain.json"],
            "dragonfly_parquet": [p / "dragonfly", *sorted(p.glob("dragonfly*.parquet"))],
        }
        order = [fmt] if fmt != "auto" else ["llama3_jsonl", "llava_json", "dragonfly_parquet"]
        if fmt == "auto" and plain:
            order.insert(0, "llava_plain_json")
        if (
            fmt == "auto"
            and not (p / CONVERSATIONS).exists()
            and not (p / CONVERSATIONS_INDEX).exists()
            and (any(p.glob("*.parquet")) and not (p / "llava.json").exists())
        ):
            candidates["dragonfly_parquet"].append(p)
        for f in order:
            for c in candidates[f]:
                if c.exists():
                    return c, "llava_json" if f == "llava_plain_json" else f, run_dir
        raise ValueError(f"data.path: no {' / '.join(order)} export in {p}")
    if run_dir is None and (p.parent.parent / "manifest.json").exists():
        run_dir = p.parent.parent
    if fmt == "llava_plain_json":
        fmt = "llava_json"
    if fmt == "auto":
        name = p.name.lower()
        fmt = (
            "llama3_jsonl"
            if name.endswith((".jsonl", ".index.json"))
            else "llava_json"
            if name.endswith(".json")
            else "dragonfly_parquet"
            if name.endswith(".parquet")
            else ""
        )
        if not fmt:
            raise ValueError(
                f"data.format: cannot tell the format of {p.name}; set llama3_jsonl, llava_json "
                "or dragonfly_parquet"
            )
    return p, fmt, run_dir


def _image_path(url: str | None, root: Path) -> Path | None:
    if url is None or not str(url).strip():
        return None
    parts = urlsplit(url)
    if parts.scheme == "file":
        return Path(unquote(parts.path))
    if parts.scheme in ("http", "https", "s3", "gs"):
        raise ValueError(f"image {url!r} is remote; export images locally first")
    q = Path(url)
    return q if q.is_absolute() else root / q


def parse_llama3(text: str) -> list[dict[str, str]]:
    """A pre-rendered Llama-3 conversation string -> turns (BOS optional)."""
    return [{"from": _ROLE[r], "value": v.strip()} for r, v in _LLAMA3_MSG.findall(text)]


def _records(path: Path, fmt: str, out: SampleSet):
    """Yield (where, uid, source, image_url, turns) per record; unparseable records are skipped."""
    if fmt == "llama3_jsonl":
        for part in conversation_files(path):
            with part.open(encoding="utf-8") as f:
                for n, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    where = f"{part.name}:{n}"
                    try:
                        raw = json.loads(line)
                        rec = ConversationRecord.model_validate(raw)
                    except (json.JSONDecodeError, ValidationError) as e:
                        msg = e.errors()[0]["msg"] if isinstance(e, ValidationError) else "not JSON"
                        out.skip(_reason(msg), f"{where}: {msg}")
                        continue
                    turns = [t.model_dump(by_alias=True) for t in rec.conversations]
                    yield where, rec.uid or f"{part.stem}:{n}", rec.source, rec.image_url, turns
    elif fmt == "llava_json":
        try:
            items = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None
        if not isinstance(items, list):
            raise ValueError(f"{path}: a LLaVA JSON file is a list of records")
        for i, it in enumerate(items):
            where = f"{path.name}[{i}]"
            convs = it.get("conversations") if isinstance(it, dict) else None
            if not isinstance(convs, list) or not all(isinstance(t, dict) and "value" in t for t in convs):
                out.skip("not a conversation", f"{where}: no conversations list of {{from, value}}")
                continue
            yield where, str(it.get("id", i)), it.get("source", "llava"), it.get("image"), convs
    else:
        import pyarrow.dataset as pads

        ds = pads.dataset(str(path), format="parquet")
        missing = {"image_url", "conversations"} - set(ds.schema.names)
        if missing:
            raise ValueError(
                f"{path}: Dragonfly parquet needs columns image_url, conversations; missing {sorted(missing)}"
            )
        cols = [c for c in ("image_url", "source", "conversations", "uid") if c in ds.schema.names]
        n = 0
        for batch in ds.to_batches(columns=cols):
            for row in batch.to_pylist():
                where = f"{path.name}#{n}"
                n += 1
                turns = parse_llama3(row["conversations"] or "")
                yield (
                    where,
                    row.get("uid") or where,
                    row.get("source") or "dragonfly",
                    row["image_url"],
                    turns,
                )


def _reason(msg: str) -> str:
    m = msg.lower()
    if "empty" in m:
        return "empty turn"
    if "alternate" in m or "at least one" in m:
        return "turns do not alternate human/gpt"
    return "not a conversation"


def read_samples(
    path: str | Path,
    fmt: str = "auto",
    image_root: str | Path | None = None,
    limit: int | None = None,
    plain: bool = False,
    verify_images: bool = True,
) -> SampleSet:
    """Every usable sample of an export; skipped records counted by reason in ``.skipped``.

    Images resolve against ``image_root``, else the data file's folder; for Dragonfly parquet under
    ``export/dragonfly/`` that is ``export/`` (Loupe's export makes it Dragonfly's ``--image_dir``)."""
    file, fmt, run_dir = locate(path, fmt, plain)
    out = SampleSet(path=file, format=fmt, run_dir=run_dir)
    root = file if file.is_dir() else file.parent
    if fmt == "dragonfly_parquet" and root.name == "dragonfly":
        root = root.parent
    root = Path(image_root) if image_root else root
    for where, uid, source, url, turns in _records(file, fmt, out):
        if limit is not None and len(out.samples) >= limit:
            break
        bad = _check_turns(turns)
        if bad:
            out.skip(bad, f"{where}: {bad}")
            continue
        try:
            img = _image_path(url, root)
        except ValueError as e:
            out.skip("remote image", f"{where}: {e}")
            continue
        size = None
        if img is not None:
            try:
                with Image.open(img) as im:
                    size = im.size
                    if verify_images:
                        im.load()  # a truncated file fails here, not in the middle of training
            except FileNotFoundError:
                out.skip("missing image", f"{where}: {img} does not exist")
                continue
            except OSError as e:
                out.skip("unreadable image", f"{where}: {img}: {e}")
                continue
        out.samples.append(Sample(uid=uid, source=source, turns=turns, image=img, size=size))
    return out


def _check_turns(turns: list[Any]) -> str | None:
    convo = [t for t in turns if t.get("from") != "system"]
    if len(convo) < 2:
        return "not a conversation"
    for i, t in enumerate(convo):
        if t.get("from") != ("human" if i % 2 == 0 else "gpt"):
            return "turns do not alternate human/gpt"
        if not isinstance(t.get("value"), str) or not t["value"].replace("<image>", "").strip():
            if not (i == 0 and "<image>" in str(t.get("value"))):
                return "empty turn"
    return None


def attach_boxes(samples: SampleSet, min_score: float = 0.2) -> int:
    """Fill ``Sample.boxes`` (pixel xyxy, best first) from ``<run>/experts/detect``; returns boxes read."""
    if samples.run_dir is None:
        raise ValueError(
            "data.boxes: boxes come from a run's detect table; point data.path at a run or its export/"
        )
    d = samples.run_dir / "experts" / "detect"
    files = sorted(d.glob("*.parquet")) if d.exists() else []
    by_uid: dict[str, list[tuple[float, list[float]]]] = {}
    if files:
        import pyarrow.dataset as pads

        tbl = pads.dataset([str(f) for f in files], format="parquet").to_table(
            columns=["uid", "box", "score"]
        )
        for uid, box, score in zip(*(tbl.column(c).to_pylist() for c in ("uid", "box", "score"))):
            if score is not None and score >= min_score and box is not None:
                by_uid.setdefault(uid, []).append((score, box))
    n = 0
    for s in samples.samples:
        if s.size is None:
            continue
        w, h = s.size
        boxes = sorted(by_uid.get(s.uid, []), key=lambda b: -b[0])
        s.boxes = [[b[0] * w, b[1] * h, b[2] * w, b[3] * h] for _, b in boxes]
        n += len(s.boxes)
    return n
