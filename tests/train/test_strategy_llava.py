"""The llava strategy: LLaVA-1.5 token arithmetic, preprocessing and a trainable HF Llava model."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from loupe.schemas.train import TowerConfig
from loupe.train.strategies import build_strategy, strategy_class
from loupe.train.strategies.base import CLIP_MEAN, clip_pixels, image_token_id, pad_to_square
from loupe.train.tiny import tiny_geometry, tiny_model_config, tiny_tokenizer


@pytest.mark.parametrize("size", [(336, 336), (640, 480), (480, 640), (100, 1000), (2000, 30)])
def test_576_tokens_at_clip_l14_336_for_any_size(size):
    s = build_strategy(tiny_model_config())
    assert s.image_token_count(*size) == 576  # (336 / 14)^2, CLS dropped
    assert s.preprocess(Image.new("RGB", size, (10, 20, 30)))["pixel_values"].shape == (3, 336, 336)


def test_other_geometry_follows_the_config():
    vis = TowerConfig(config=tiny_geometry(224, 16, vision_width=32, layers=1)["vision"])
    assert build_strategy(tiny_model_config(vision=vis)).image_token_count(50, 70) == 196


def test_pad_to_square_matches_llava_expand2square():
    im = Image.new("RGB", (7, 3), (255, 255, 255))
    sq = pad_to_square(im)
    assert sq.size == (7, 7)
    mean = tuple(int(x * 255) for x in CLIP_MEAN)  # (122, 116, 104)
    assert mean == (122, 116, 104)
    # (7 - 3) // 2 = 2 rows of mean colour on top, 3 image rows, 2 rows below
    assert [sq.getpixel((0, y)) for y in range(7)] == [mean] * 2 + [(255, 255, 255)] * 3 + [mean] * 2


def test_clip_pixels_equals_clip_image_processor():
    from transformers import CLIPImageProcessor

    rng = torch.Generator().manual_seed(0)
    arr = (torch.rand(50, 50, 3, generator=rng) * 255).to(torch.uint8).numpy()
    im = Image.fromarray(arr)
    proc = CLIPImageProcessor(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336})
    ref = torch.as_tensor(proc(im, return_tensors="pt")["pixel_values"][0])
    ours = clip_pixels(im, 336)
    assert ours.shape == ref.shape
    assert (ours - ref).abs().max() < 0.05  # PIL vs processor bicubic rounding only


def test_unknown_strategy_and_options_are_named():
    with pytest.raises(ValueError, match="model.strategy: 'nope' is not a strategy; valid: llava, s2"):
        strategy_class("nope")
    with pytest.raises(ValueError, match="zoom"):
        build_strategy(tiny_model_config(options={"zoom": 3}))


def _batch(tok, strategy, n_img_tokens):
    iid = image_token_id(tok)
    text = tok("A red square.", add_special_tokens=False)["input_ids"]
    ids = torch.tensor([[tok.bos_token_id] + [iid] * n_img_tokens + text + [tok.eos_token_id]])
    labels = ids.clone()
    labels[0, : 1 + n_img_tokens] = -100
    px = strategy.collate([strategy.preprocess(Image.new("RGB", (40, 30), (200, 10, 10)))])
    return dict(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels, **px)


def test_llava_model_trains_saves_and_loads_as_plain_hf(tmp_path):
    from transformers import LlavaForConditionalGeneration

    torch.manual_seed(0)
    tok = tiny_tokenizer()
    s = build_strategy(tiny_model_config())
    model = s.build_model(tok)
    assert isinstance(model, LlavaForConditionalGeneration)
    cfg = model.config
    assert cfg.vision_feature_layer == -2 and cfg.vision_feature_select_strategy == "default"
    assert cfg.image_token_id == image_token_id(tok) and cfg.projector_hidden_act == "gelu"
    # mlp2x_gelu: Linear(vision width, d) -> GELU -> Linear(d, d)
    proj = model.model.multi_modal_projector
    assert (proj.linear_1.in_features, proj.linear_1.out_features, proj.linear_2.out_features) == (32, 64, 64)
    batch = _batch(tok, s, s.image_token_count(40, 30))
    # the image occupies exactly 576 positions: features == placeholders
    feats = model.model.get_image_features(batch["pixel_values"]).pooler_output
    assert feats[0].shape == (576, 64)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(3):
        loss = model(**batch).loss
        losses.append(loss.item())
        loss.backward()
        opt.step()
        opt.zero_grad()
    assert losses[2] < losses[0]
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    again = LlavaForConditionalGeneration.from_pretrained(tmp_path)
    again.eval()
    model.eval()
    with torch.no_grad():
        assert torch.allclose(again(**batch).logits, model(**batch).logits, atol=1e-5)
        prompt = {
            k: v[:, :-3] if k in ("input_ids", "attention_mask") else v
            for k, v in batch.items()
            if k != "labels"
        }
        out = again.generate(**prompt, max_new_tokens=4, min_new_tokens=4, do_sample=False)
    assert out.shape[1] == prompt["input_ids"].shape[1] + 4
    assert isinstance(s.load_model(tmp_path), LlavaForConditionalGeneration)
