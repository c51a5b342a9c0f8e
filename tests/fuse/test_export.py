"""The export stage: every record validated; a bad record is a drop row, never a bad line."""

from __future__ import annotations

import io
import json

import pyarrow as pa
from PIL import Image

from loupe.pipeline.rundir import RunDir
from loupe.pipeline.stage import StageContext
from loupe.pipeline.stages.export.stage import Export, image_ext
from loupe.schemas.recipe import ExportConfig
from loupe.schemas.tables import SAMPLES


def _png(color) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 6), color).save(buf, format="PNG")
    return buf.getvalue()


def _sample(uid: str, conv, source: str = "chartqa") -> dict:
    data = _png((len(uid) * 20, 10, 10))
    return {
        "uid": uid,
        "source": source,
        "source_id": uid,
        "url": None,
        "image_path": None,
        "image": data,
        "width": 8,
        "height": 6,
        "sha256": None,
        "alt_text": None,
        "conversations": conv,
        "meta": None,
    }


def _batch(samples: list[dict]) -> pa.Table:
    """The export stage's input: the samples' columns plus empty evidence lists."""
    keep = ("uid", "source", "source_id", "conversations")
    return pa.Table.from_pylist(
        [{**{k: s[k] for k in keep}, "captions": [], "ocr": [], "detect": []} for s in samples]
    )


def test_export_validates_records(tmp_path):
    good = [{"from": "human", "value": "What is the highest value?"}, {"from": "gpt", "value": "42"}]
    bad = [{"from": "human", "value": "Q1?"}, {"from": "human", "value": "Q2?"}]  # does not alternate
    blank = [{"from": "human", "value": "Q?"}, {"from": "gpt", "value": "  "}]
    samples = [_sample("a1", good), _sample("b22", bad), _sample("c333", blank), _sample("d4444", None)]
    run = RunDir(tmp_path / "run")
    run.write_table("samples", pa.Table.from_pylist(samples, schema=SAMPLES), stage="ingest")
    ctx = StageContext(run=run, recipe_dir=tmp_path, stage_name="export")
    stage = Export(ExportConfig(stage="export", tasks=["caption", "source_qa"]), ctx)
    batch = _batch(samples)
    out = stage(batch)
    drops = {d["uid"]: (d["reason"], d["detail"]) for d in out.drops.to_pylist()}
    assert drops == {
        "b22": (
            "invalid_record",
            "Value error, turn 1 is from 'human', expected 'gpt' (turns must alternate)",
        ),
        "c333": ("invalid_record", "Value error, turn value is empty"),
        "d4444": ("no_conversation", "no caption, OCR, boxes or source Q&A to export"),
    }
    lines = (run.path / "export" / "conversations.jsonl").read_text().splitlines()
    assert [json.loads(x) for x in lines] == [
        {"image_url": "images/a1.png", "conversations": good, "source": "chartqa", "uid": "a1"}
    ]
    assert (run.path / "export" / "images" / "a1.png").read_bytes() == samples[0]["image"]
    llava = json.loads((run.path / "export" / "llava.json").read_text())
    assert llava == [
        {
            "id": "a1",
            "image": "images/a1.png",
            "conversations": [
                {"from": "human", "value": "<image>\nWhat is the highest value?"},
                {"from": "gpt", "value": "42"},
            ],
        }
    ]
    stats = json.loads((run.path / "export" / "stats.json").read_text())
    assert stats["records"] == 1 and stats["by_source"] == {"chartqa": 1} and stats["turns"] == 2
    assert out.metrics == {"records": 1}


def test_image_ext_sniffs_bytes():
    assert image_ext(_png((0, 0, 0))) == ".png"
    assert image_ext(b"\xff\xd8\xff\xe0rest") == ".jpg"
    assert image_ext(b"RIFF\x00\x00\x00\x00WEBPVP8 ") == ".webp"
    assert image_ext(b"nothing") == ".img"


def test_export_shards_past_shard_size_with_an_index(tmp_path):
    good = [{"from": "human", "value": "What is the highest value?"}, {"from": "gpt", "value": "42"}]
    samples = [_sample(u, good) for u in ("a", "bb", "ccc")]
    run = RunDir(tmp_path / "run")
    run.write_table("samples", pa.Table.from_pylist(samples, schema=SAMPLES), stage="ingest")
    ctx = StageContext(run=run, recipe_dir=tmp_path, stage_name="export")
    batch = _batch(samples)
    Export(ExportConfig(stage="export", tasks=["source_qa"], shard_size=2), ctx)(batch)
    ex = run.path / "export"
    index = json.loads((ex / "conversations.index.json").read_text())
    assert [(s["path"], s["records"]) for s in index["shards"]] == [
        ("conversations-00000.jsonl", 2),
        ("conversations-00001.jsonl", 1),
    ]
    uids = [json.loads(x)["uid"] for s in index["shards"] for x in (ex / s["path"]).read_text().splitlines()]
    assert uids == ["a", "bb", "ccc"] and not (ex / "conversations.jsonl").exists()
    assert json.loads((ex / "stats.json").read_text())["conversation_files"] == 2
    # the default (no shard_size) keeps one file, however many records
    Export(ExportConfig(stage="export", tasks=["source_qa"]), ctx)(batch)
    assert sorted(p.name for p in ex.glob("conversations*")) == ["conversations.jsonl"]
