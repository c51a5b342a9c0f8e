"""The ``export`` stage: live samples + captions + expert evidence -> training files under export/.

Writes (each file to a temp name, then renamed, so a reader never sees half a file):

* ``export/conversations.jsonl`` - Loupe's canonical record (read by ``loupe.train``), one per line:
  ``{"image_url", "conversations": [{"from", "value"}], "source", "uid"}`` (format ``llama3_jsonl``);
  with ``shard_size`` set and more records than that, ``export/conversations-00000.jsonl`` ... plus
  ``export/conversations.index.json`` listing them (``loupe.schemas.conversation.conversation_files``);
* ``export/dragonfly/<prefix>_<n>.parquet`` - what Dragonfly's loader reads (``dragonfly_parquet``):
  ``image_url``, ``source`` and ``conversations`` as ONE Llama-3 string without BOS;
* ``export/llava.json``          - ``[{"id", "image", "conversations"}]`` with ``<image>`` in turn 0,
  every turn (fine-tune, ``llava_json``);
* ``export/llava_plain.json``    - the same ids, exactly 2 turns: instruction + caption (``llava_plain_json``,
  for LLaVA ``--version plain`` pre-alignment);
* ``export/mg_llava_boxes.json`` - ``[{"id", "boxes", "scores", "labels"}]`` pixel boxes from the ``detect``
  table keyed by the LLaVA id (``mg_llava_boxes``);
* ``export/images/<uid>.<ext>``  - the image bytes as ingested (paths above are relative to export/);
* ``export/records.parquet``     - per record: uid, source, turns, tokens, caption words;
* ``export/stats.json``          - counts per source and task, token-length summary and histogram.

Export is a pure function of the run's tables, so it always re-exports every live sample (cheap)
and a rerun after new samples gives complete files. Records failing the schema become drop rows.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
from pydantic import ValidationError

from loupe.pipeline.stage import Stage, StageOutput
from loupe.pipeline.stages.export.conversations import build_turns, with_image_token
from loupe.pipeline.stages.export.formats import llava_plain_records, mg_llava_boxes, write_dragonfly_parquet
from loupe.pipeline.storage import Storage, open_storage
from loupe.schemas.conversation import (
    CONVERSATIONS,
    CONVERSATIONS_INDEX,
    ConversationRecord,
    shard_name,
)
from loupe.schemas.llama3 import llama3_render
from loupe.schemas.tables import drops_table

MAGIC = (
    (b"\xff\xd8", ".jpg"),
    (b"\x89PNG", ".png"),
    (b"GIF8", ".gif"),
    (b"BM", ".bmp"),
    (b"II*\x00", ".tif"),
    (b"MM\x00*", ".tif"),
)
#: ``records.parquet``: per exported record
RECORD_STATS = pa.schema(
    [
        ("uid", pa.string()),
        ("source", pa.string()),
        ("turns", pa.int32()),
        ("tokens", pa.int32()),
        ("caption_words", pa.int32()),
    ]
)
#: the formats written as ONE JSON array (LLaVA's loader ``json.load``s one file): file name and
#: ``json.dumps`` indent, in the order their counts go into stats.json
JSON_ARRAYS: dict[str, tuple[str, int | None]] = {
    "llava_plain_json": ("llava_plain.json", 1),
    "mg_llava_boxes": ("mg_llava_boxes.json", None),
    "llava_json": ("llava.json", 1),
}
TOKEN = re.compile(r"<\|[a-z_]+\|>|\w+|[^\w\s]")


def image_ext(data: bytes) -> str:
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return ".webp"
    if data[4:8] == b"ftyp":  # ISO BMFF: major brand, then compatible brands up to the box size
        size = int.from_bytes(data[:4], "big")
        brands = {data[i : i + 4] for i in range(8, min(max(size, 16), 64), 4)}
        if brands & {b"avif", b"avis"}:
            return ".avif"
        if brands & {b"heic", b"heix", b"heim", b"heis", b"mif1"}:
            return ".heic"
    for magic, ext in MAGIC:
        if data.startswith(magic):
            return ext
    return ".img"


def write_conversations(records: list[dict], out_dir: Path | Storage, shard_size: int | None) -> int:
    """``out/conversations.jsonl``, or (more than ``shard_size`` records) shards plus an index.

    ``out_dir`` is a local folder or a run dir's storage (object store). Readers go by the index when
    there is one, so it is written after its shards and removed before a single file replaces them;
    stale shards of an earlier, larger export are removed last. Returns the number of JSONL files written."""

    def lines(rs: list[dict]) -> str:
        return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rs)

    out = open_storage(out_dir)
    old = {n for n in out.sizes("") if n.startswith("conversations-") and n.endswith(".jsonl")}
    if shard_size is None or len(records) <= shard_size:
        out.write_text(CONVERSATIONS, lines(records))
        out.delete(CONVERSATIONS_INDEX)
        for f in old:
            out.delete(f)
        return 1
    shards = []
    for i, start in enumerate(range(0, len(records), shard_size)):
        chunk = records[start : start + shard_size]
        out.write_text(shard_name(i), lines(chunk))
        shards.append({"path": shard_name(i), "records": len(chunk)})
    index = {"format": "llama3_jsonl", "records": len(records), "shards": shards}
    out.write_text(CONVERSATIONS_INDEX, json.dumps(index, indent=1))
    out.delete(CONVERSATIONS)
    for f in old - {s["path"] for s in shards}:
        out.delete(f)
    return len(shards)


class TokenCounter:
    """Exact counts with a transformers tokenizer (``export.tokenizer``), else a regex estimate."""

    def __init__(self, tokenizer: str | None, base: Path):
        self.name = "regex-approx"
        self.tok = None
        if tokenizer:
            from transformers import AutoTokenizer

            p = base / tokenizer
            self.tok = AutoTokenizer.from_pretrained(str(p) if p.exists() else tokenizer)
            self.name = tokenizer

    def __call__(self, text: str) -> int:
        if self.tok is not None:
            return len(self.tok(text, add_special_tokens=False)["input_ids"])
        return len(TOKEN.findall(text))


class Export(Stage):
    name = "export"
    table = None
    reads = ("uid", "source", "source_id", "conversations", "width", "height")
    evidence = ("captions", "ocr", "detect")
    is_global = True
    rerun_all = True

    def __init__(self, config: Any, ctx):
        super().__init__(config, ctx)
        #: export/ of the run dir, wherever it lives (local folder or object store)
        self.out = ctx.run.storage.child("export")
        self.count_tokens = TokenCounter(getattr(config, "tokenizer", None), ctx.recipe_dir)

    def _write_images(self, uids: set[str]) -> dict[str, str]:
        """Stream image bytes from samples/ to export/images/, returning uid -> relative path."""
        paths: dict[str, str] = {}
        have = self.out.sizes(self.config.image_dir)  # one listing, not one lookup per image
        ds = self.ctx.run.dataset("samples")
        flt = pads.field("uid").isin(pa.array(sorted(uids), pa.string()))
        for rb in ds.to_batches(columns=["uid", "image"], filter=flt, batch_size=256):
            for uid, data in zip(rb.column(0).to_pylist(), rb.column(1).to_pylist()):
                if uid in paths or data is None:
                    continue
                name = uid + image_ext(data)
                if have.get(name) != len(data):
                    self.out.write_bytes(f"{self.config.image_dir}/{name}", data)
                paths[uid] = f"{self.config.image_dir}/{name}"
        return paths

    def build(self, batch: pa.Table) -> tuple[list[dict], list[dict], list[dict], Counter, dict]:
        """Records of ``batch`` in (source, source_id, uid) order, with their images written: (records,
        drop rows, per-record stats, task counts, rows by uid). Under Ray each task builds one slice."""
        rows = sorted(batch.to_pylist(), key=lambda r: (r["source"] or "", r["source_id"] or "", r["uid"]))
        paths = self._write_images({r["uid"] for r in rows})
        records, drops, per_record = [], [], []
        tasks = Counter()
        for r in rows:
            turns = build_turns(
                r,
                list(self.config.tasks),
                self.config.seed,
                self.config.ocr_min_score,
                self.config.ocr_min_chars,
            )
            if not turns:
                drops.append(
                    self.drop(r["uid"], "no_conversation", "no caption, OCR, boxes or source Q&A to export")
                )
                continue
            try:
                rec = ConversationRecord(
                    image_url=paths[r["uid"]], conversations=turns, source=r["source"], uid=r["uid"]
                )
            except (ValidationError, KeyError) as e:
                msg = e.errors()[0]["msg"] if isinstance(e, ValidationError) else "image bytes missing"
                drops.append(self.drop(r["uid"], "invalid_record", msg))
                continue
            records.append(rec.to_json_dict())
            n_tokens = self.count_tokens(llama3_render(turns))
            cap = (r.get("captions") or [{}])[0].get("caption") or ""
            per_record.append(
                {
                    "uid": r["uid"],
                    "source": r["source"],
                    "turns": len(turns),
                    "tokens": n_tokens,
                    "caption_words": len(cap.split()),
                }
            )
            tasks.update(self._tasks_of(r))
        return records, drops, per_record, tasks, {r["uid"]: r for r in rows}

    def __call__(self, batch: pa.Table) -> StageOutput:
        records, drops, per_record, tasks, rows = self.build(batch)
        self._write(records, per_record, tasks, rows)
        return StageOutput(drops=drops_table(drops), metrics={"records": len(records)})

    @staticmethod
    def _tasks_of(r: dict) -> list[str]:
        out = []
        if r.get("captions"):
            out.append("caption")
        if r.get("ocr"):
            out.append("ocr")
        if r.get("detect"):
            out.append("grounding")
        if r.get("conversations"):
            out.append("source_qa")
        return out

    def _write(
        self, records: list[dict], per_record: list[dict], tasks: Counter, rows: dict[str, dict]
    ) -> None:
        fmts = set(self.config.formats)
        extra: dict[str, int] = {}
        if "dragonfly_parquet" in fmts:
            parts = write_dragonfly_parquet(
                records,
                self.out.child("dragonfly"),
                self.config.dragonfly_prefix,
                self.config.dragonfly_rows_per_file,
            )
            extra["dragonfly_files"] = len(parts)
        for fmt, (items, counts) in self.json_arrays(records, rows).items():
            name, indent = JSON_ARRAYS[fmt]
            self.out.write_text(name, json.dumps(items, ensure_ascii=False, indent=indent))
            extra.update(counts)
        if "llama3_jsonl" in fmts:
            extra["conversation_files"] = write_conversations(records, self.out, self.config.shard_size)
        self.write_stats(pa.Table.from_pylist(per_record, schema=RECORD_STATS), tasks, extra)

    def json_arrays(
        self, records: list[dict], rows: dict[str, dict]
    ) -> dict[str, tuple[list[dict], dict[str, int]]]:
        """For each single-JSON format asked for (:data:`JSON_ARRAYS` order): its items for ``records``
        and the counts it adds to stats.json. Item by item, so a slice's items are the slice of the
        whole run's (the Ray export writes them as fragments of the one file)."""
        out: dict[str, tuple[list[dict], dict[str, int]]] = {}
        fmts = set(self.config.formats)
        if "llava_plain_json" in fmts:
            caps = {u: ((r.get("captions") or [{}])[0].get("caption") or "") for u, r in rows.items()}
            plain = llava_plain_records(records, caps, self.config.seed)
            out["llava_plain_json"] = plain, {"llava_plain_records": len(plain)}
        if "mg_llava_boxes" in fmts:
            boxes = mg_llava_boxes(records, rows)
            out["mg_llava_boxes"] = boxes, {"mg_llava_boxes": sum(len(b["boxes"]) for b in boxes)}
        if "llava_json" in fmts:
            llava = [
                {
                    "id": r["uid"],
                    "image": r["image_url"],
                    "conversations": with_image_token(r["conversations"]),
                }
                for r in records
            ]
            out["llava_json"] = llava, {}
        return out

    def write_stats(self, per_record: pa.Table, tasks: Counter, extra: dict[str, int]) -> None:
        """``records.parquet`` and ``stats.json`` from the per-record stats of every record, in order."""
        sink = pa.BufferOutputStream()
        pq.write_table(per_record, sink)
        self.out.write_bytes("records.parquet", sink.getvalue().to_pybytes())
        stats = self._stats(per_record.to_pylist(), tasks)
        self.out.write_text("stats.json", json.dumps({**stats, **extra}, indent=2))

    def _stats(self, per_record: list[dict], tasks: Counter) -> dict:
        toks = np.array([p["tokens"] for p in per_record] or [0])
        counts, edges = np.histogram(toks, bins=min(20, max(1, len(set(toks.tolist())))))
        return {
            "records": len(per_record),
            "by_source": dict(Counter(p["source"] for p in per_record)),
            "by_task": dict(tasks),
            "turns": int(sum(p["turns"] for p in per_record)),
            "tokenizer": self.count_tokens.name,
            "tokens": {
                "total": int(toks.sum()) if per_record else 0,
                "mean": round(float(toks.mean()), 1) if per_record else 0,
                "p50": int(np.percentile(toks, 50)),
                "p95": int(np.percentile(toks, 95)),
                "max": int(toks.max()),
                "histogram": {"counts": counts.tolist(), "edges": [round(float(e), 1) for e in edges]},
            },
        }
