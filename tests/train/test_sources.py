"""Every export Loupe writes reads into the same samples; bad records are skipped and counted."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from loupe.pipeline.stages.export.conversations import with_image_token
from loupe.pipeline.stages.export.formats import write_dragonfly_parquet
from loupe.train.sources import attach_boxes, locate, parse_llama3, read_samples

TURNS = [
    {"from": "human", "value": "Describe this image in detail."},
    {"from": "gpt", "value": "A red square\nwith two lines."},
    {"from": "human", "value": "What text appears?"},
    {"from": "gpt", "value": "EXIT"},
]


@pytest.fixture
def export(tmp_path):
    """A run dir with export/{conversations.jsonl, llava.json, dragonfly/*.parquet, images/}."""
    run = tmp_path / "run"
    ex = run / "export"
    (ex / "images").mkdir(parents=True)
    (run / "manifest.json").write_text("{}")
    Image.new("RGB", (200, 100), (255, 0, 0)).save(ex / "images" / "a.png")
    Image.new("RGB", (50, 80), (0, 255, 0)).save(ex / "images" / "b.png")
    recs = [
        {"image_url": "images/a.png", "conversations": TURNS, "source": "demo", "uid": "a"},
        {"image_url": "images/b.png", "conversations": TURNS[:2], "source": "demo", "uid": "b"},
        {"image_url": None, "conversations": TURNS[:2], "source": "text", "uid": "t"},
    ]
    (ex / "conversations.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    llava = [
        {
            "id": r["uid"],
            "conversations": with_image_token(r["conversations"]) if r["image_url"] else r["conversations"],
            **({"image": r["image_url"]} if r["image_url"] else {}),
        }
        for r in recs
    ]
    (ex / "llava.json").write_text(json.dumps(llava))
    write_dragonfly_parquet(recs[:2], ex / "dragonfly", "loupe", 1)
    return run


def test_three_formats_read_the_same_samples(export):
    j = read_samples(export)  # a run dir -> export/conversations.jsonl
    assert j.format == "llama3_jsonl" and j.run_dir == export
    assert [(s.uid, s.image.name if s.image else None, s.size) for s in j.samples] == [
        ("a", "a.png", (200, 100)),
        ("b", "b.png", (50, 80)),
        ("t", None, None),
    ]
    lv = read_samples(export / "export" / "llava.json")
    assert lv.format == "llava_json" and lv.run_dir == export
    # LLaVA's "<image>\n" stays in the text until the template places the placeholder
    assert lv.samples[0].turns[0]["value"] == "<image>\n" + TURNS[0]["value"]
    strip = [[{**t, "value": t["value"].replace("<image>\n", "")} for t in s.turns] for s in lv.samples]
    assert strip == [s.turns for s in j.samples] and lv.samples[2].turns[0]["value"] == TURNS[0]["value"]
    assert [(s.uid, s.image, s.size) for s in lv.samples] == [(s.uid, s.image, s.size) for s in j.samples]
    df = read_samples(export / "export", fmt="dragonfly_parquet")
    assert df.format == "dragonfly_parquet" and df.path.name == "dragonfly"
    # Dragonfly's one-string conversations parse back to the same turns; images resolve from export/
    assert [(s.turns, s.image, s.size) for s in df.samples] == [
        (s.turns, s.image, s.size) for s in j.samples[:2]
    ]


def test_parse_llama3_with_and_without_bos():
    text = (
        "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nHello\nthere<|eot_id|>"
    )
    want = [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello\nthere"}]
    assert parse_llama3(text) == parse_llama3("<|begin_of_text|>" + text) == want


def test_bad_records_are_counted_by_reason(tmp_path):
    Image.new("RGB", (4, 4)).save(tmp_path / "ok.png")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    Image.effect_noise((64, 64), 50).convert("RGB").save(tmp_path / "full.jpg")
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])  # header fine, pixels truncated
    lines = [
        {"image_url": "ok.png", "conversations": TURNS, "source": "s"},
        {"image_url": "gone.png", "conversations": TURNS, "source": "s"},
        {"image_url": "broken.png", "conversations": TURNS, "source": "s"},
        {"image_url": "cut.jpg", "conversations": TURNS, "source": "s"},
        {"image_url": "ok.png", "conversations": [TURNS[0], {"from": "gpt", "value": ""}], "source": "s"},
        {"image_url": "ok.png", "conversations": [TURNS[1], TURNS[0]], "source": "s"},
        {"image_url": "https://x.org/a.png", "conversations": TURNS, "source": "s"},
        {"what": "ever"},
    ]
    f = tmp_path / "c.jsonl"
    f.write_text("".join(json.dumps(x) + "\n" for x in lines) + "[1, 2\n")
    ss = read_samples(f)
    assert len(ss.samples) == 1
    assert dict(ss.skipped) == {
        "missing image": 1,
        "unreadable image": 2,
        "empty turn": 1,
        "turns do not alternate human/gpt": 1,
        "remote image": 1,
        "not a conversation": 2,
    }
    assert ss.examples["missing image"].startswith("c.jsonl:2: ")
    # headers only: the truncated JPEG passes the scan (it would fail when decoded in a step)
    assert len(read_samples(f, verify_images=False).samples) == 2


def test_locate_errors_name_the_field(tmp_path):
    with pytest.raises(ValueError, match="data.path: '.*nope' does not exist"):
        locate(tmp_path / "nope")
    (tmp_path / "x.txt").write_text("")
    with pytest.raises(ValueError, match="data.format: cannot tell the format of x.txt"):
        locate(tmp_path / "x.txt")
    with pytest.raises(
        ValueError, match="data.path: no llama3_jsonl / llava_json / dragonfly_parquet export"
    ):
        locate(tmp_path)


def test_boxes_from_the_detect_table_in_pixels(export):
    d = export / "experts" / "detect"
    d.mkdir(parents=True)
    pq.write_table(
        pa.table(
            {
                "uid": ["a", "a", "a", "b"],
                "model": ["m"] * 4,
                "label": ["cat", "dog", "sky", "cat"],
                "box": [
                    [0.1, 0.2, 0.5, 1.0],
                    [0.0, 0.0, 1.0, 0.5],
                    [0.0, 0.0, 0.1, 0.1],
                    [0.5, 0.5, 1.0, 1.0],
                ],
                "score": [0.5, 0.9, 0.1, 0.3],
            }
        ),
        d / "part-0.parquet",
    )
    ss = read_samples(export)
    assert attach_boxes(ss, min_score=0.2) == 3
    a, b, t = ss.samples
    r = lambda boxes: [[round(v, 3) for v in b] for b in boxes]  # noqa: E731
    assert r(a.boxes) == [[0, 0, 200, 50], [20, 20, 100, 100]]  # best first, pixels of the 200x100 image
    assert r(b.boxes) == [[25, 40, 50, 80]] and t.boxes is None
    with pytest.raises(ValueError, match="data.boxes: boxes come from a run's detect table"):
        attach_boxes(read_samples(_loose_copy(export)))


def _loose_copy(export):
    """The export folder copied outside any run dir."""
    import shutil

    dst = export.parent / "loose"
    shutil.copytree(export / "export", dst)
    return dst / "conversations.jsonl"


def test_a_sharded_export_reads_through_its_index_like_one_file(export):
    """export.shard_size: the writer shards past the size (index + shards, no single file), the
    trainer reads the index to the same samples in the same order, and a small rerun goes back to one file."""
    from loupe.pipeline.stages.export.stage import write_conversations

    ex = export / "export"
    single = read_samples(export)
    recs = [json.loads(ln) for ln in (ex / "conversations.jsonl").read_text().splitlines()]
    assert write_conversations(recs, ex, shard_size=2) == 2
    assert not (ex / "conversations.jsonl").exists()
    index = json.loads((ex / "conversations.index.json").read_text())
    assert index == {
        "format": "llama3_jsonl",
        "records": 3,
        "shards": [
            {"path": "conversations-00000.jsonl", "records": 2},
            {"path": "conversations-00001.jsonl", "records": 1},
        ],
    }
    for src in (export, ex, ex / "conversations.index.json"):  # run dir, export/ folder, the index itself
        sharded = read_samples(src)
        assert sharded.format == "llama3_jsonl" and sharded.path.name == "conversations.index.json"
        assert [(s.uid, s.turns, s.image, s.size) for s in sharded.samples] == [
            (s.uid, s.turns, s.image, s.size) for s in single.samples
        ]
    # a shard the index lists but that is gone: one error naming both files
    (ex / "conversations-00001.jsonl").rename(ex / "moved.jsonl")
    with pytest.raises(ValueError, match=r"conversations.index.json: lists shard conversations-00001.jsonl"):
        read_samples(export)
    (ex / "moved.jsonl").rename(ex / "conversations-00001.jsonl")
    # below the shard size: one file again, no index and no stale shard left for a reader to pick up
    assert write_conversations(recs, ex, shard_size=10) == 1
    assert sorted(p.name for p in ex.glob("conversations*")) == ["conversations.jsonl"]
    assert [s.uid for s in read_samples(export).samples] == ["a", "b", "t"]
