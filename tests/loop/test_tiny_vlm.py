"""The replication's tiny trainer: token arithmetic per strategy, label masking, learning, exact resume."""

from __future__ import annotations

import json

import pytest
import torch

from loupe.eval.scorers.vqa import vqa_accuracy
from loupe.pipeline.loop.tiny_train import batch_indices, train_tiny
from loupe.pipeline.loop.tiny_vlm import EOS, SEP, TinyConfig, TinyVLM, encode_text, make_batch, visual_tokens

SMALL = dict(base=16, patch=4, vit_width=16, lm_width=32, vit_layers=1, lm_layers=1, max_text=40)


@pytest.mark.parametrize(
    "strategy,expected",
    [("llava", 16), ("s2", 16), ("dragonfly", (1 + 16) + 40 * (1 + 1) + 3)],
)
def test_visual_token_arithmetic(strategy, expected):
    cfg = TinyConfig(strategy=strategy, **SMALL)
    assert visual_tokens(cfg) == expected
    model = TinyVLM(cfg)
    for side in (96, 120):  # any input size: every view is resized to its own grid
        assert model.encode_images(torch.rand(2, 3, side, side)).shape == (2, expected, 32)


def test_default_geometry_is_dragonflys_ratio():
    # 64 px crops, 8 px patches: 8x8 grid pooled 4x4 -> 2x2 per crop, as 24x24 -> 6x6 upstream
    assert visual_tokens(TinyConfig(strategy="dragonfly")) == 65 + 40 * 5 + 3
    assert visual_tokens(TinyConfig(strategy="llava")) == 64


def test_labels_only_on_the_answer_and_eos():
    ids, labels = make_batch(["Q?", "Read it"], ["12", "7"], max_text=40)
    assert ids[0].tolist()[:6] == encode_text("Q?") + [SEP] + encode_text("12") + [EOS]
    assert labels[0].tolist()[:6] == [-100, -100, -100] + encode_text("12") + [EOS]
    row = labels[1].tolist()
    assert row[: len("Read it") + 1] == [-100] * 8 and row[8:10] == encode_text("7") + [EOS]
    assert all(v == -100 for v in row[10:])


def test_one_step_lowers_the_loss_on_a_repeated_batch():
    torch.manual_seed(0)
    model = TinyVLM(TinyConfig(strategy="dragonfly", **SMALL))
    x = torch.rand(4, 3, 96, 96)
    ids, labels = make_batch(["What text?"] * 4, ["12", "34", "56", "78"], 40)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    before = model(x, ids, labels).item()
    for _ in range(3):
        loss = model(x, ids, labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert model(x, ids, labels).item() < before


def test_batch_order_depends_only_on_seed_and_step():
    assert batch_indices(10, 4, 2, seed=1) == batch_indices(10, 4, 2, seed=1)
    # 3 steps of 4 over 10 samples: the first epoch's permutation is covered exactly once
    first = batch_indices(10, 4, 0, 1) + batch_indices(10, 4, 1, 1) + batch_indices(10, 4, 2, 1)[:2]
    assert sorted(first) == list(range(10))


def _data(tmp_path):
    from PIL import Image

    paths = []
    for i in range(6):
        p = tmp_path / f"{i}.png"
        Image.new("RGB", (48, 48), (40 * i, 255 - 40 * i, 128)).save(p)
        paths.append(str(p))
    train = {"image": paths, "question": ["What text?"] * 6, "answer": [str(i) for i in range(6)]}
    held = {"image": paths[:3], "question": ["What text?"] * 3, "answers": [[str(i)] * 10 for i in range(3)]}
    return train, held


def test_resume_continues_exactly(tmp_path):
    train, held = _data(tmp_path)
    cfg = TinyConfig(strategy="llava", **SMALL)
    kw = dict(
        seed=3,
        steps=6,
        batch_size=2,
        lr=3e-3,
        eval_every=3,
        save_every=2,
        scorer=vqa_accuracy,
        log=lambda m: None,
    )
    straight = train_tiny(tmp_path / "a", cfg, train, held, **kw)
    # the same run stopped after its step-4 checkpoint (as a kill would leave it), then resumed
    train_tiny(tmp_path / "b", cfg, train, held, **{**kw, "steps": 6}, stop_after=4)
    assert not (tmp_path / "b" / "done.json").exists()
    resumed = train_tiny(tmp_path / "b", cfg, train, held, **kw)
    assert resumed["resumed_from"] == [4]
    loss = lambda d: [json.loads(x)["loss"] for x in (tmp_path / d / "loss.jsonl").read_text().splitlines()]
    assert loss("b") == pytest.approx(loss("a"), rel=1e-4)
    assert [p["accuracy"] for p in resumed["curve"]] == [p["accuracy"] for p in straight["curve"]]
    assert [p["step"] for p in straight["curve"]] == [0, 3, 6]
    # a finished run is not trained again
    assert train_tiny(tmp_path / "a", cfg, train, held, **kw)["seconds"] == straight["seconds"]


def test_checkpoint_of_another_config_is_refused(tmp_path):
    train, held = _data(tmp_path)
    kw = dict(
        seed=0,
        steps=2,
        batch_size=2,
        lr=1e-3,
        eval_every=2,
        save_every=1,
        scorer=vqa_accuracy,
        log=lambda m: None,
    )
    train_tiny(tmp_path / "r", TinyConfig(strategy="llava", **SMALL), train, held, **kw, stop_after=1)
    with pytest.raises(ValueError, match="another config"):
        train_tiny(tmp_path / "r", TinyConfig(strategy="s2", **SMALL), train, held, **kw)
