"""The dragonfly strategy: multi-resolution crops, 2057 embeddings in 2098 positions, zoom-in selection."""

from __future__ import annotations

import pytest
import torch

from loupe.train.strategies import build_strategy
from loupe.train.strategies.dragonfly import (
    dragonfly_crops,
    dragonfly_layout,
    dragonfly_token_count,
    select_zoom_crops,
)
from loupe.train.tiny import tiny_model_config, tiny_tokenizer

from .strategy_helpers import gradient_image, one_image_batch, one_step


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def test_golden_arithmetic_clip_l14_336():
    t = dragonfly_token_count(grid=24)
    assert (t.embeddings, t.positions) == (2057, 2098)
    assert t.per_view == (577,) + (37,) * 40  # low-res CLS + 576; 40 crops of CLS + 6×6
    z = dragonfly_token_count(grid=24, zoom_top_k=8)  # 4 mid + 8 high crops kept
    assert (z.embeddings, z.positions) == (577 + 12 * 37, 578 + 12 * 38)
    with pytest.raises(ValueError, match="pool_kernel"):
        dragonfly_token_count(grid=24, pool_kernel=5)


@pytest.mark.parametrize(
    "size, mid, high",
    [
        ((1000, 1000), (672, 672), (2016, 2016)),  # square → 2×2 mid, 6×6 high
        ((800, 500), (672, 672), (2016, 2016)),  # mildly wide still fits 2×2 best
        ((2000, 400), (1344, 336), (4032, 1008)),  # wide → 4×1 mid, 12×3 high
        ((300, 1500), (336, 1344), (1008, 4032)),  # tall → 1×4 mid, 3×12 high
    ],
)
def test_layout_best_fit_and_3x_zoom(size, mid, high):
    lay = dragonfly_layout(size, 336)
    assert (lay.mid, lay.high, lay.mid_crops, lay.high_crops) == (mid, high, 4, 36)


@pytest.mark.parametrize("size", [(336, 336), (640, 480), (480, 640), (2000, 400), (300, 1500)])
def test_2098_positions_for_any_size_and_aspect(size):
    s = build_strategy(tiny_model_config("dragonfly"))
    assert s.image_token_count(*size) == 2098
    assert s.preprocess(gradient_image(size))["pixel_values"].shape == (41, 3, 336, 336)


def test_crops_are_low_view_then_row_major_tiles():
    im = gradient_image((200, 50))
    crops = dragonfly_crops(im, 8)  # mid 32×8 (4×1), high 96×24 (12×3)
    assert len(crops) == 41 and {c.size for c in crops} == {(8, 8)}
    mid = im.resize((32, 8))
    assert crops[2].tobytes() == mid.crop((8, 0, 16, 8)).tobytes()


def test_zoom_selection_keeps_the_crops_nearest_the_question_in_order():
    q = torch.tensor([[1.0, 0.0, 0.0], [0.8, 0.2, 0.0]])
    crops = torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.1, 0.0], [0.0, 0.0, 1.0], [0.9, 0.0, 0.1]]).unsqueeze(1)
    assert select_zoom_crops(crops, q, 2).tolist() == [1, 3]
    assert select_zoom_crops(crops, q, 9).tolist() == [0, 1, 2, 3]


def test_model_layout_newlines_and_one_step_lowers_loss(tok):
    torch.manual_seed(0)
    s = build_strategy(tiny_model_config("dragonfly"))
    model = s.build_model(tok)
    batch = one_image_batch(tok, s, gradient_image((500, 300)))
    newline = model.language_model.get_input_embeddings().weight[s.newline_id(tok)].detach().clone()
    before, after, (feats, _) = one_step(model, batch)
    assert feats[0].shape == (2098, 64)
    rows = [577] + [577 + 1 + 38 * i + 37 for i in range(40)]  # after each view
    assert rows[-1] == 2097
    assert torch.equal(feats[0][rows], newline.expand(41, -1))
    assert not torch.isclose(feats[0][576], newline).all()
    assert after < before


def test_zoom_model_matches_its_arithmetic(tok):
    torch.manual_seed(0)
    s = build_strategy(tiny_model_config("dragonfly", options={"zoom_top_k": 3}))
    assert s.image_token_count(640, 480) == 578 + 7 * 38
    model = s.build_model(tok).eval()
    batch = one_image_batch(tok, s, gradient_image((640, 480)))
    with torch.no_grad():
        assert torch.isfinite(model(**batch).loss)
