"""The s2 strategy: S2-Wrapper token arithmetic (576 tokens × 3·hidden), tiling, a trainable model."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from loupe.train.strategies import build_strategy
from loupe.train.strategies.s2 import merge_chessboard, multiscale_forward, s2_token_count, split_chessboard
from loupe.train.tiny import tiny_model_config, tiny_tokenizer

from .strategy_helpers import gradient_image, one_image_batch, one_step


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def test_golden_arithmetic_clip_l14_336():
    t = s2_token_count(hidden_size=1024, patch_size=14, scales=(336, 672, 1008))
    assert (t.tokens, t.width, t.tiles, t.grid) == (576, 3072, (1, 4, 9), 24)
    # two scales, ViT-B/16 at 224 (the S2 README's example): 196 tokens × 2·768
    t = s2_token_count(768, 16, (224, 448))
    assert (t.tokens, t.width, t.tiles) == (196, 1536, (1, 4))
    with pytest.raises(ValueError, match="multiple of patch_size"):
        s2_token_count(1024, 14, (300, 600))


def test_chessboard_split_merge_follow_s2wrapper_layout():
    x = torch.arange(2 * 1 * 4 * 4, dtype=torch.float32).reshape(2, 1, 4, 4)
    tiles = split_chessboard(x, 2)  # '(nh nw b) c h w'
    assert tiles.shape == (8, 1, 2, 2)
    assert torch.equal(tiles[0], x[0, :, :2, :2]) and torch.equal(tiles[1], x[1, :, :2, :2])
    assert torch.equal(tiles[2], x[0, :, :2, 2:]) and torch.equal(tiles[4], x[0, :, 2:, :2])
    assert torch.equal(merge_chessboard(tiles, 2), x)


def test_multiscale_forward_equals_whole_image_features_for_a_local_operator():
    # a "ViT" whose tokens are 4×4 patch means is local, so tiling + merging must be invisible
    def patch_means(t):
        return F.avg_pool2d(t, 4).flatten(2).transpose(1, 2)

    x = torch.rand(2, 3, 24, 24)
    ours = multiscale_forward(patch_means, x, img_sizes=[8, 16, 24], max_split_size=8)
    ref = []
    for s in (8, 16, 24):
        m = F.avg_pool2d(F.interpolate(x, size=(s, s), mode="bicubic"), 4)
        ref.append(F.interpolate(m, size=(2, 2), mode="area"))
    ref = torch.cat(ref, 1).flatten(2).transpose(1, 2)
    assert ours.shape == (2, 4, 9)
    assert torch.allclose(ours, ref, atol=1e-5)


@pytest.mark.parametrize("size", [(336, 336), (640, 480), (480, 640), (100, 1000), (2000, 30)])
def test_576_tokens_for_any_size_and_aspect(size):
    s = build_strategy(tiny_model_config("s2"))
    assert s.image_token_count(*size) == 576
    assert s.preprocess(gradient_image(size))["pixel_values"].shape == (3, 1008, 1008)


def test_scales_option_and_its_errors(tok):
    s = build_strategy(tiny_model_config("s2", options={"scales": [336, 672]}))
    assert s.arithmetic().width == 2 * 32 and s.image_token_count(10, 10) == 576
    with pytest.raises(ValueError, match="model.options.scales"):
        build_strategy(tiny_model_config("s2", options={"scales": [224, 448]})).build_model(tok)
    with pytest.raises(ValueError, match="scale"):
        build_strategy(tiny_model_config("s2", options={"scale": [336]}))


def test_model_features_width_and_one_step_lowers_loss(tok):
    torch.manual_seed(0)
    s = build_strategy(tiny_model_config("s2"))
    model = s.build_model(tok)
    assert model.encoder.projector[0].in_features == 3 * 32  # 3 scales × tiny CLIP hidden
    batch = one_image_batch(tok, s, gradient_image((300, 200)))
    before, after, (feats, keep) = one_step(model, batch)
    assert keep is None and len(feats) == 1
    assert feats[0].shape == (576, 64)  # 576 tokens at the tiny LLM's hidden size
    assert after < before
