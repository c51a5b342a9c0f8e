"""train.data.ConversationDataset reads our conversations.jsonl: images, turns, Llama-3 text."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from loupe.schemas.llama3 import llama3_render
from loupe.train.data import ConversationDataset

TURNS = [
    {"from": "human", "value": "Describe this image in detail."},
    {"from": "gpt", "value": "A red square."},
]


def test_reads_records_and_resolves_images(tmp_path):
    (tmp_path / "export" / "images").mkdir(parents=True)
    Image.new("RGB", (5, 4), (255, 0, 0)).save(tmp_path / "export" / "images" / "a.png")
    Image.new("L", (3, 2), 7).save(tmp_path / "b.png")
    recs = [
        {"image_url": "images/a.png", "conversations": TURNS, "source": "demo", "uid": "a"},
        {"image_url": (tmp_path / "b.png").as_uri(), "conversations": TURNS, "source": "demo"},
        {"image_url": str(tmp_path / "b.png"), "conversations": TURNS, "source": "x"},
    ]
    path = tmp_path / "export" / "conversations.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in recs) + "\n")
    ds = ConversationDataset(path, system="Be precise.")
    assert len(ds) == 3
    a = ds[0]
    assert (
        a["image"].size == (5, 4) and a["image"].mode == "RGB" and a["image"].getpixel((0, 0)) == (255, 0, 0)
    )
    assert a["image_path"] == str(tmp_path / "export" / "images" / "a.png")
    assert a["conversations"] == TURNS and a["uid"] == "a" and a["source"] == "demo"
    assert a["text"] == llama3_render(TURNS, system="Be precise.")
    assert ds[1]["image"].size == (3, 2) and ds[1]["image"].mode == "RGB" and ds[1]["uid"] is None
    assert ds[2]["image_path"] == str(tmp_path / "b.png")


def test_bad_line_names_the_line(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text(
        json.dumps({"image_url": "a.png", "conversations": TURNS, "source": "s"})
        + "\n"
        + json.dumps({"image_url": "a.png", "conversations": TURNS[:1], "source": "s"})
        + "\n"
    )
    with pytest.raises(ValueError, match=r"c\.jsonl:2: not a conversation record"):
        ConversationDataset(path)


def test_remote_image_url_is_refused(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text(
        json.dumps({"image_url": "https://example.com/a.png", "conversations": TURNS, "source": "s"})
    )
    with pytest.raises(ValueError, match="is remote"):
        ConversationDataset(path)[0]
