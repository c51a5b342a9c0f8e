"""Export layouts that outside trainers read as they are: Dragonfly parquet, LLaVA plain, MG-LLaVA boxes.

Our canonical record stays ``export/conversations.jsonl`` (structured turns, read by ``loupe.train``).
The functions here turn those records into the exact files each upstream loader expects, so a user
trains Dragonfly, LLaVA (pre-alignment) or MG-LLaVA on Loupe's output with no glue.

* **Dragonfly** (togethercomputer/Dragonfly ``pipeline/data_utils/data.py``):
  ``load_dragonfly_pretrain_dataset`` lists ``*.parquet`` in ``--data_dir`` and keeps the files whose
  *name starts with* one of ``--together_hq_datasets`` (``fpath.startswith(d)``), loads them with
  ``load_dataset('parquet', ...)`` and drops the ``source`` column; ``prepare_fuyu`` opens
  ``os.path.join(image_dir, example['image_url'])`` and ``format_llama3_prompt`` takes
  ``item['conversations']`` *as the finished prompt string*. The processor tokenises it with
  ``add_special_tokens=True`` (``src/dragonfly/models/processing_dragonfly.py``,
  ``_tokenize_prompts_with_image_and_batch``), so the tokenizer adds ``<|begin_of_text|>``;
  ``get_labels`` unmasks everything after the *first* BOS (id 128000) and ``find_and_remove_tokens``
  overwrites the *last* BOS with EOS when there are two. The string must therefore start at the
  first ``<|start_header_id|>``, without BOS.
* **LLaVA plain** (haotian-liu/LLaVA ``llava/train/train.py``, ``preprocess_plain``): with
  ``--version plain`` every record must have exactly 2 turns (``assert len(source) == 2``) and
  ``<image>`` in the first (``assert DEFAULT_IMAGE_TOKEN in source[0]['value']``); the human turn is
  then replaced by ``<image>`` alone and the model learns the gpt turn, a caption. DenseFusion
  pre-aligns and pre-trains on such caption pairs (baaivision/DenseFusion ``scripts/densefusion/
  prealign.sh``: ``--version plain``).
* **MG-LLaVA boxes** (PhoenixZ810/MG-LLaVA, README "box_json_path"): one JSON list of
  ``{"id", "boxes": [[x1, y1, x2, y2], ...] (pixels, ints), "scores", "labels"}`` whose ``id`` is
  the LLaVA record id, from an offline detector.

The three JSON files are ONE JSON array each, because LLaVA's ``LazySupervisedDataset.__init__``
(haotian-liu/LLaVA ``llava/train/train.py``) does ``json.load(open(data_path, "r"))``. The Ray
executor still builds them in parallel: each slice writes a *fragment* (:func:`json_fragment`: its
items as ``json.dumps`` lays them out inside the array, without the brackets), and one streaming pass
(:func:`write_json_array`) joins the fragments into the file, byte for byte what ``json.dumps`` of all
the items gives.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from loupe.pipeline.stages.export.conversations import caption_instruction, with_image_token
from loupe.pipeline.storage import Storage, open_storage
from loupe.schemas.llama3 import BOS, llama3_render

DRAGONFLY_SCHEMA = pa.schema(
    [("image_url", pa.string()), ("source", pa.string()), ("conversations", pa.string())]
)


def dragonfly_text(turns: list[dict[str, str]]) -> str:
    """One Llama-3 rendered string without ``<|begin_of_text|>`` (Dragonfly's tokenizer adds it)."""
    text = llama3_render(turns)
    return text[len(BOS) :] if text.startswith(BOS) else text


def write_dragonfly_parquet(
    records: list[dict[str, Any]], out_dir: Path | Storage, prefix: str, rows_per_file: int
) -> list[str]:
    """``out_dir/<prefix>_<nnnnn>.parquet`` with columns image_url, source, conversations (str).

    ``out_dir`` is a local folder or a run dir's storage (object store). ``image_url`` stays relative
    to ``export/`` (so ``--image_dir`` is the export folder). Old part files of the same prefix are
    removed so a smaller rerun leaves no stale part behind. Returns the part names.
    """
    out = open_storage(out_dir)
    for old in out.sizes(""):
        if old.startswith(f"{prefix}_") and old.endswith(".parquet"):
            out.delete(old)
    written = []
    for part, start in enumerate(range(0, max(len(records), 1), rows_per_file)):
        chunk = records[start : start + rows_per_file]
        table = pa.Table.from_pylist(
            [
                {
                    "image_url": r["image_url"],
                    "source": r["source"],
                    "conversations": dragonfly_text(r["conversations"]),
                }
                for r in chunk
            ],
            schema=DRAGONFLY_SCHEMA,
        )
        name = f"{prefix}_{part:05d}.parquet"
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink)
        out.write_bytes(name, sink.getvalue().to_pybytes())
        written.append(name)
    return written


def llava_plain_records(records: list[dict[str, Any]], captions: dict[str, str], seed: int) -> list[dict]:
    """Exactly 2 turns per image: ``<image>`` + a caption instruction, then the caption.

    Images without a caption have nothing to pre-align on and are left out (counted in stats).
    """
    out = []
    for r in records:
        cap = (captions.get(r["uid"]) or "").strip()
        if not cap:
            continue
        turns = [
            {"from": "human", "value": caption_instruction(seed, r["uid"])},
            {"from": "gpt", "value": cap},
        ]
        out.append({"id": r["uid"], "image": r["image_url"], "conversations": with_image_token(turns)})
    return out


def pixel_box(box: list[float], width: int, height: int) -> list[int]:
    """A [0, 1] xyxy box -> pixel ints inside the image (x in [0, width], y in [0, height])."""
    x1, y1, x2, y2 = (float(v) for v in box)
    return [
        min(max(round(x1 * width), 0), width),
        min(max(round(y1 * height), 0), height),
        min(max(round(x2 * width), 0), width),
        min(max(round(y2 * height), 0), height),
    ]


def mg_llava_boxes(records: list[dict[str, Any]], rows: dict[str, dict[str, Any]]) -> list[dict]:
    """One entry per exported record (same ``id`` as llava.json), boxes best score first; [] when none."""
    out = []
    for r in records:
        row = rows[r["uid"]]
        w, h = int(row.get("width") or 0), int(row.get("height") or 0)
        dets = sorted(row.get("detect") or [], key=lambda d: -float(d["score"]))
        boxes, scores, labels = [], [], []
        for d in dets:
            b = pixel_box(d["box"], w, h)
            if b[2] <= b[0] or b[3] <= b[1]:
                continue  # no area left in pixels
            boxes.append(b)
            scores.append(round(float(d["score"]), 4))
            labels.append(d["label"])
        out.append({"id": r["uid"], "boxes": boxes, "scores": scores, "labels": labels})
    return out


#: bytes of a fragment copied at a time by :func:`write_json_array`
COPY_CHUNK = 1 << 20


def _brackets(indent: int | None) -> tuple[str, str, str]:
    """``(open, separator, close)`` of a non-empty list as ``json.dumps(..., indent=indent)`` writes it."""
    if indent is None:
        return "[", ", ", "]"
    return "[\n", ",\n", "\n]"


def json_fragment(items: list[Any], indent: int | None) -> str:
    """``items`` as they appear inside ``json.dumps(all_items, ensure_ascii=False, indent=indent)``:
    the array's text without its brackets ("" for no items). Fragments of consecutive slices joined
    by the separator and bracketed (:func:`write_json_array`) give the array of all their items."""
    if not items:
        return ""
    opening, _, closing = _brackets(indent)
    text = json.dumps(items, ensure_ascii=False, indent=indent)
    return text[len(opening) : -len(closing)]


def write_json_array(
    out: Storage, name: str, parts: Storage, fragments: list[str], indent: int | None
) -> None:
    """``out/name`` = the JSON array whose items are those of the non-empty ``fragments`` (files of
    ``parts``, in order), streamed in :data:`COPY_CHUNK` pieces (memory flat in the file's size) and
    published at once (:meth:`Storage.open_output`: temp file + rename, or one object-store upload)."""
    opening, sep, closing = _brackets(indent)
    with out.open_output(name) as f:
        if not fragments:
            f.write(b"[]")
            return
        f.write(opening.encode())
        for i, frag in enumerate(fragments):
            if i:
                f.write(sep.encode())
            with parts.fs.open_input_stream(parts.key(frag)) as src:
                while chunk := src.read(COPY_CHUNK):
                    f.write(chunk)
        f.write(closing.encode())
