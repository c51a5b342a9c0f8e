"""Upstream loaders read our exports with no glue.

* Dragonfly: ``load_dragonfly_pretrain_dataset`` + ``prepare_fuyu`` (togethercomputer/Dragonfly
  ``pipeline/data_utils/data.py``) and the processor's ``get_labels`` / ``find_and_remove_tokens``
  (``src/dragonfly/models/processing_dragonfly.py``), reimplemented below line for line.
* LLaVA: ``preprocess_plain``'s assertions (haotian-liu/LLaVA ``llava/train/train.py``).
* MG-LLaVA: the box file's ids are the LLaVA ids and every box lies inside its image.
"""

from __future__ import annotations

import io
import json
import os

import pyarrow as pa
import pytest
from PIL import Image

from loupe.pipeline.rundir import RunDir
from loupe.pipeline.stage import StageContext
from loupe.pipeline.stages.export.formats import dragonfly_text, pixel_box
from loupe.pipeline.stages.export.stage import Export
from loupe.schemas.recipe import ExportConfig
from loupe.schemas.tables import SAMPLES

BOS = "<|begin_of_text|>"
DEFAULT_IMAGE_TOKEN = "<image>"
SIZES = {"a1": (64, 48), "b2": (30, 90), "c3": (50, 50)}


def _png(size, color) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def _export(tmp_path, formats, prefix="smrcap"):
    samples, batch = [], []
    for i, (uid, (w, h)) in enumerate(SIZES.items()):
        samples.append(
            {
                "uid": uid,
                "source": "demo",
                "source_id": uid,
                "url": None,
                "image_path": None,
                "image": _png((w, h), (i * 80, 10, 10)),
                "width": w,
                "height": h,
                "sha256": None,
                "alt_text": None,
                "conversations": None,
                "meta": None,
            }
        )
    run = RunDir(tmp_path / "run")
    run.write_table("samples", pa.Table.from_pylist(samples, schema=SAMPLES), stage="ingest")
    qa = [{"from": "human", "value": "How many bars?"}, {"from": "gpt", "value": "3"}]
    det = [
        {"label": "cat", "box": [0.1, 0.2, 0.9, 1.0], "score": 0.6},
        {"label": "dog", "box": [0.0, 0.0, 0.5, 0.5], "score": 0.9},
        {"label": "speck", "box": [0.5, 0.5, 0.5004, 0.5004], "score": 0.3},
    ]  # no pixel area: left out
    rows = {
        "a1": {"captions": [{"caption": "A cat beside a dog."}], "detect": det, "conversations": None},
        "b2": {"captions": [{"caption": "A tall red image."}], "detect": [], "conversations": qa},
        "c3": {"captions": [], "detect": [], "conversations": qa},  # no caption: not in the plain file
    }
    for s in samples:
        batch.append(
            {
                "uid": s["uid"],
                "source": s["source"],
                "source_id": s["source_id"],
                "width": s["width"],
                "height": s["height"],
                "ocr": [],
                **rows[s["uid"]],
            }
        )
    cfg = ExportConfig(
        stage="export",
        formats=formats,
        tasks=["caption", "grounding", "source_qa"],
        dragonfly_prefix=prefix,
        dragonfly_rows_per_file=2,
    )
    Export(cfg, StageContext(run=run, recipe_dir=tmp_path, stage_name="export"))(pa.Table.from_pylist(batch))
    return run.path / "export"


@pytest.fixture(scope="module")
def llama3_tokenizer():
    """A word-level tokenizer with Llama-3's special tokens whose post-processor adds BOS, as Llama-3's does."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = [BOS, "<|end_of_text|>", "<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>", "[UNK]"]
    tk = Tokenizer(models.WordLevel({t: i for i, t in enumerate(specials)}, unk_token="[UNK]"))
    tk.add_special_tokens(specials)
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tk.post_processor = processors.TemplateProcessing(single=f"{BOS} $A", special_tokens=[(BOS, 0)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tk, bos_token=BOS, eos_token="<|end_of_text|>", unk_token="[UNK]"
    )


# ------------------------------------------------------------- Dragonfly's loader, reimplemented
def dragonfly_load(data_dir: str, together_hq_datasets: str, image_dir: str):
    """``load_dragonfly_pretrain_dataset`` (hq branch) then ``prepare_fuyu``'s per-item steps."""
    from datasets import load_dataset

    data_files = [f for f in os.listdir(data_dir) if f.endswith(".parquet")]
    hq_data_files = []
    for fpath in data_files:
        for d in together_hq_datasets.split(","):
            if fpath.startswith(d):
                hq_data_files.append(os.path.join(data_dir, fpath))
                break
    ds = load_dataset("parquet", data_files=sorted(hq_data_files), split="train")
    ds = ds.remove_columns(["source"])
    items = []
    for item in ds:
        text = item["conversations"]  # format_llama3_prompt: no 'text' key -> the string as it is
        image_url = item["image_url"]
        path = image_url if image_url.startswith("/data/") else os.path.join(image_dir, image_url)
        items.append({"text": text, "image": Image.open(path).convert("RGB")})
    return hq_data_files, items


def dragonfly_labels(input_ids: list[int], bos_id: int) -> list[int]:
    """``get_labels``: unmask every token after the first BOS."""
    start = input_ids.index(bos_id)
    return [-100] * (start + 1) + input_ids[start + 1 :]


def test_dragonfly_loader_reads_parquet_with_one_bos(tmp_path, llama3_tokenizer):
    out = _export(tmp_path, ["llama3_jsonl", "dragonfly_parquet"])
    # a file of another dataset in the same data dir must not be picked by our prefix
    pa.parquet.write_table(
        pa.table({"image_url": ["x.png"], "source": ["other"], "conversations": ["x"]}),
        out / "dragonfly" / "otherset_00000.parquet",
    )
    files, items = dragonfly_load(str(out / "dragonfly"), "smrcap", image_dir=str(out))
    assert sorted(os.path.basename(f) for f in files) == ["smrcap_00000.parquet", "smrcap_00001.parquet"]
    ours = [json.loads(x) for x in (out / "conversations.jsonl").read_text().splitlines()]
    assert len(items) == len(ours) == 3
    bos = llama3_tokenizer.convert_tokens_to_ids(BOS)
    for item, rec in zip(items, ours):
        assert item["text"] == dragonfly_text(rec["conversations"])
        assert item["text"].startswith("<|start_header_id|>user<|end_header_id|>\n\n")
        assert item["image"].size == SIZES[rec["uid"]]
        ids = llama3_tokenizer(item["text"], add_special_tokens=True).input_ids
        assert ids.count(bos) == 1 and ids[0] == bos  # find_and_remove_tokens leaves one BOS alone
        labels = dragonfly_labels(ids, bos)
        assert labels[0] == -100 and labels[1:] == ids[1:]


def test_dragonfly_text_is_llama3_without_bos():
    turns = [{"from": "human", "value": "Describe."}, {"from": "gpt", "value": "A cat."}]
    # Dragonfly's own caption formatting (format_llama3_prompt, the 'text' branch)
    want = (
        "<|start_header_id|>user<|end_header_id|>\n\nDescribe.<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nA cat.<|eot_id|>"
    )
    assert dragonfly_text(turns) == want


# ----------------------------------------------------------------------------- LLaVA and MG-LLaVA
def preprocess_plain_checks(sources: list[list[dict]]) -> list[str]:
    """``preprocess_plain``'s loop, without the tokenizer."""
    conversations = []
    for source in sources:
        assert len(source) == 2
        assert DEFAULT_IMAGE_TOKEN in source[0]["value"]
        source[0]["value"] = DEFAULT_IMAGE_TOKEN
        conversations.append(source[0]["value"] + source[1]["value"] + "\n")
    return conversations


def test_llava_plain_and_mg_llava_boxes(tmp_path):
    out = _export(tmp_path, ["llava_json", "llava_plain_json", "mg_llava_boxes"])
    llava = json.loads((out / "llava.json").read_text())
    plain = json.loads((out / "llava_plain.json").read_text())
    assert [r["id"] for r in plain] == ["a1", "b2"]  # c3 has no caption to pre-align on
    assert preprocess_plain_checks([r["conversations"] for r in plain]) == [
        "<image>A cat beside a dog.\n",
        "<image>A tall red image.\n",
    ]
    assert {r["id"]: len(r["conversations"]) for r in llava} == {
        "a1": 8,
        "b2": 4,
        "c3": 2,
    }  # fine-tune: all turns
    boxes = json.loads((out / "mg_llava_boxes.json").read_text())
    assert [b["id"] for b in boxes] == [r["id"] for r in llava]
    a1 = boxes[0]
    assert a1 == {
        "id": "a1",
        "boxes": [[0, 0, 32, 24], [6, 10, 58, 48]],
        "scores": [0.9, 0.6],
        "labels": ["dog", "cat"],
    }
    for b in boxes:
        w, h = SIZES[b["id"]]
        for x1, y1, x2, y2 in b["boxes"]:
            assert all(isinstance(v, int) for v in (x1, y1, x2, y2))
            assert 0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h
    stats = json.loads((out / "stats.json").read_text())
    assert stats["llava_plain_records"] == 2 and stats["mg_llava_boxes"] == 2


def test_pixel_box_clips_to_the_image():
    assert pixel_box([-0.1, 0.25, 1.2, 0.5], 200, 100) == [0, 25, 200, 50]


def test_dragonfly_prefix_must_be_a_file_name():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="dragonfly_prefix"):
        ExportConfig(stage="export", dragonfly_prefix="../x")
