"""The mg_llava strategy: CLIP + ConvNeXt gated fusion (576 tokens) plus one token per box."""

from __future__ import annotations

import pytest
import torch

from loupe.train.strategies import build_strategy
from loupe.train.strategies.base import CLIP_MEAN, CLIP_STD
from loupe.train.strategies.mg_llava import (
    DualPathFuse,
    boxes_to_aux,
    limit_boxes,
    mg_llava_pixels,
    mg_llava_token_count,
)
from loupe.train.tiny import tiny_geometry, tiny_model_config, tiny_tokenizer

from .strategy_helpers import gradient_image, one_image_batch, one_step

# ConvNeXt geometry (stem 4, three 2× downsamples: stride 32) at toy widths: 768 / 32 = 24 = 336 / 14
TINY_AUX = {"config": dict(num_channels=3, patch_size=4, hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 1, 1])}


def mg(**options):
    return build_strategy(tiny_model_config("mg_llava", options={"aux": TINY_AUX} | options))


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def test_golden_arithmetic():
    assert mg_llava_token_count(24, 0) == 576
    assert mg_llava_token_count(24, 7) == 583
    s = mg()
    assert s.image_token_count(640, 480) == 576
    assert s.image_token_count(640, 480, n_boxes=12) == 588
    assert s.image_token_count(640, 480, n_boxes=150) == 676  # max_boxes 100


def test_limit_boxes_per_label_then_per_image():
    scores = [i / 100 for i in range(130)]
    labels = ["cat"] * 100 + ["dog"] * 30
    keep = limit_boxes(scores, labels)
    assert keep == list(range(80, 100)) + list(range(110, 130))  # 20 best of each label
    assert limit_boxes(scores[:50], labels[:50]) == list(range(50))  # under the limit: untouched
    assert len(limit_boxes(scores, [str(i) for i in range(130)], per_image=100)) == 100


def test_boxes_follow_padding_and_resize():
    # 200×100 image → padded to 200² (50 rows on top) → 768²
    b = boxes_to_aux(torch.tensor([[0.0, 0.0, 100.0, 50.0], [150, 90, 260, 100]]), (200, 100), 768)
    assert torch.allclose(b, torch.tensor([[0.0, 192.0, 384.0, 384.0], [576.0, 537.6, 768.0, 576.0]]))


def test_pixels_low_res_is_the_resized_aux_input():
    low, aux = mg_llava_pixels(gradient_image((300, 200)), CLIP_MEAN, CLIP_STD, 768, 336)
    assert low.shape == (3, 336, 336) and aux.shape == (3, 768, 768)
    # the padded band has the mean colour: normalised ≈ 0
    assert aux[:, :50].abs().max() < 0.02


def test_fusion_is_the_identity_at_init():
    torch.manual_seed(0)
    fuse = DualPathFuse(low_dim=16, high_dim=24)
    low, high = torch.randn(2, 9, 16), torch.randn(2, 24, 3, 3)
    assert torch.equal(fuse(low, high), low)  # zero-initialised projections
    with pytest.raises(ValueError, match="does not match"):
        fuse(low, torch.randn(2, 24, 4, 4))


@pytest.mark.parametrize("size, n_boxes", [((640, 480), 3), ((300, 900), 0), ((1200, 200), 5)])
def test_model_token_count_for_sizes_and_boxes(tok, size, n_boxes):
    torch.manual_seed(0)
    s = mg()
    model = s.build_model(tok).eval()
    w, h = size
    boxes = [[w * i / 10, h * i / 10, w * (i + 4) / 10, h * (i + 5) / 10] for i in range(n_boxes)]
    batch = one_image_batch(tok, s, gradient_image(size), boxes=boxes)
    with torch.no_grad():
        feats, _ = model.encoder({k: v for k, v in batch.items() if k.startswith(("pixel", "box"))})
    assert feats[0].shape == (576 + n_boxes, 64)


def test_one_step_lowers_loss_and_errors_name_options(tok):
    torch.manual_seed(0)
    s = mg()
    model = s.build_model(tok)
    batch = one_image_batch(
        tok, s, gradient_image((500, 400)), boxes=[[10, 10, 200, 300], [250, 50, 480, 390]]
    )
    before, after, (feats, _) = one_step(model, batch)
    assert feats[0].shape == (578, 64)
    assert after < before
    with pytest.raises(ValueError, match="model.options.aux_size"):
        mg(aux_size=512).build_model(tok)
    with pytest.raises(ValueError, match="aux"):
        build_strategy(tiny_model_config("mg_llava"))
    with pytest.raises(ValueError, match="exactly one of path"):
        mg(aux={"path": "x", "config": {}})


def test_bf16_weights_with_boxes(tok):
    # RoIAlign has no bf16 CPU kernel: it runs in float32 (as upstream) and the result is cast back
    s = mg()
    enc = s.build_model(tok).encoder.to(torch.bfloat16).eval()
    item = s.preprocess(gradient_image((400, 300)), boxes=[[10, 10, 200, 250]])
    batch = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in s.collate([item]).items()}
    with torch.no_grad():
        feats, _ = enc(batch)
    assert feats[0].shape == (577, 64) and feats[0].dtype == torch.bfloat16


def test_openclip_convnext_folder_as_the_release_loads(tok, tmp_path):
    # an OpenCLIP folder like laion/CLIP-convnext_large_d_320...: open_clip_config.json + weights
    import json

    import open_clip

    from loupe.schemas.train import TowerConfig

    model_cfg = dict(
        embed_dim=16,
        vision_cfg=dict(
            timm_model_name="convnext_atto", timm_model_pretrained=False, timm_pool="", image_size=64
        ),
        text_cfg=dict(context_length=8, vocab_size=100, width=32, heads=2, layers=1),
    )
    torch.manual_seed(0)
    clip = open_clip.CLIP(**model_cfg)
    (tmp_path / "open_clip_config.json").write_text(json.dumps({"model_cfg": model_cfg}))
    torch.save(clip.state_dict(), tmp_path / "open_clip_pytorch_model.bin")
    # a 224/14 = 16 CLIP grid matches ConvNeXt's stride 32 at 512 px
    vision = TowerConfig(config=tiny_geometry(224, 14, vision_width=32, layers=1)["vision"])
    s = build_strategy(
        tiny_model_config(
            "mg_llava", vision=vision, options={"aux": {"path": str(tmp_path)}, "aux_size": 512}
        )
    )
    enc = s.build_model(tok).encoder.eval()
    assert enc.aux.config.hidden_sizes == [40, 80, 160, 320]
    assert torch.equal(enc.aux.stem[0].weight, clip.visual.trunk.stem[0].weight)
    batch = s.collate([s.preprocess(gradient_image((300, 200)), boxes=[[0, 0, 100, 100]])])
    with torch.no_grad():
        feats, _ = enc(batch)
    assert feats[0].shape == (16 * 16 + 1, 64)
