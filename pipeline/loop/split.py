"""Split a curated run into training records and held-out questions, by uid.

A sample is held out when the first 8 hex digits of its uid, read as a fraction of 2^32, fall below
``train.heldout``: a pure function of the uid, so the split never moves between reruns or machines,
and a sample added later lands on the same side it would always have.

* ``train.jsonl``: the export's conversation records (the curated product: questions and the OCR
  expert's answers) whose uid is not held out, image paths made absolute - what ``loupe train`` reads;
* ``heldout.jsonl``: every sample that survived curation up to export (dedup, filters - but not
  export's own "no conversation" drop: an image the OCR misread is still a fair question), answered by
  the ground truth the source recorded in ``samples.meta`` (``eval.answer_field``), never by OCR - in
  the layout of ``loupe eval --task vqa_jsonl`` (``question_id``, ``image``, ``question``, ``answer``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.dataset as pads

from loupe.pipeline.errors import LoupeError
from loupe.pipeline.rundir import RunDir, atomic_write_text
from loupe.pipeline.stages.export.stage import image_ext
from loupe.schemas.conversation import CONVERSATIONS, CONVERSATIONS_INDEX, conversation_files


def heldout_fraction(uid: str) -> float:
    return int(uid[:8], 16) / 2**32


def is_heldout(uid: str, share: float) -> bool:
    return heldout_fraction(uid) < share


def _first_qa(turns: list[dict[str, str]]) -> tuple[str, str] | None:
    for q, a in zip(turns, turns[1:]):
        if q["from"] == "human" and a["from"] == "gpt":
            return q["value"].replace("<image>", "").strip(), a["value"].strip()
    return None


def make_split(run: RunDir, out: Path, heldout: float, question: str, answer_field: str) -> dict[str, Any]:
    """Write ``out/train.jsonl``, ``out/heldout.jsonl`` (+ held-out images) and return the counts."""
    export = run.path / "export" / CONVERSATIONS
    if not export.is_file() and (export.parent / CONVERSATIONS_INDEX).is_file():
        export = export.parent / CONVERSATIONS_INDEX  # a sharded export
    if not export.is_file():
        raise LoupeError(
            f"{export}: no export to train on; the recipe needs an `export` stage with format llama3_jsonl"
        )
    drops = run.read_table("drops", ["uid", "stage"])
    dropped = {u for u, s in zip(drops["uid"].to_pylist(), drops["stage"].to_pylist()) if s != "export"}
    meta_tbl = run.read_table("samples", ["uid", "meta"])
    meta = {
        u: json.loads(m or "{}") for u, m in zip(meta_tbl["uid"].to_pylist(), meta_tbl["meta"].to_pylist())
    }
    pool = sorted(u for u in meta if u not in dropped)
    held = [u for u in pool if is_heldout(u, heldout)]
    missing = [u for u in held if answer_field not in meta[u]]
    if missing:
        raise LoupeError(
            f"eval.answer_field: {answer_field!r} is not in samples.meta of {len(missing)} held-out samples "
            f"(e.g. {missing[0][:12]}); held-out scoring needs the source's ground truth"
        )
    out.mkdir(parents=True, exist_ok=True)
    img_dir = out / "heldout_images"
    img_dir.mkdir(exist_ok=True)
    flt = pads.field("uid").isin(pa.array(held, pa.string()))
    for rb in run.dataset("samples").to_batches(columns=["uid", "image"], filter=flt, batch_size=256):
        for uid, data in zip(rb.column(0).to_pylist(), rb.column(1).to_pylist()):
            dest = img_dir / (uid + image_ext(data))
            if not dest.exists():
                dest.write_bytes(data)
    held_rows = [
        {"question_id": u, "image": str(next(img_dir.glob(u + ".*"))), "question": question,
         "answer": str(meta[u][answer_field])}
        for u in held
    ]  # fmt: skip
    train_rows, ocr_right = [], 0
    lines = [ln for f in conversation_files(export) for ln in f.read_text().splitlines() if ln.strip()]
    for line in lines:
        rec = json.loads(line)
        if is_heldout(rec["uid"], heldout):
            continue
        qa = _first_qa(rec["conversations"])
        if qa is None:
            continue
        train_rows.append({**rec, "image_url": str((export.parent / rec["image_url"]).resolve())})
        truth = meta.get(rec["uid"], {}).get(answer_field)
        ocr_right += truth is not None and str(truth) == qa[1]
    if not train_rows or not held_rows:
        raise LoupeError(
            f"train.heldout={heldout}: {len(train_rows)} training records and {len(held_rows)} held-out samples; "
            "both must be non-empty (more samples, or another heldout share)"
        )
    held_set, train_set = set(held), {r["uid"] for r in train_rows}
    stats = {
        "heldout_share": heldout,
        "pool": len(pool),
        "train": len(train_rows),
        "heldout": len(held_rows),
        "train_answers_equal_truth": round(ocr_right / len(train_rows), 4),
        "leaked_copies": _leaks(meta, held_set, train_set),
    }
    atomic_write_text(out / "train.jsonl", "".join(json.dumps(r) + "\n" for r in train_rows))
    atomic_write_text(out / "heldout.jsonl", "".join(json.dumps(r) + "\n" for r in held_rows))
    atomic_write_text(out / "split.json", json.dumps(stats, indent=1))
    return stats


def _leaks(meta: dict[str, dict], held: set[str], train: set[str]) -> int:
    """Held-out samples whose picture (a planted copy or its original) is also in the training set:
    what dedup should have prevented. Uses the source's ``copy_of`` index when it records one."""
    group: dict[str, Any] = {u: m.get("copy_of", m.get("index")) for u, m in meta.items() if "copy_of" in m}
    train_groups = {group[u] for u in train if u in group}
    return sum(1 for u in held if u in group and group[u] in train_groups)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
