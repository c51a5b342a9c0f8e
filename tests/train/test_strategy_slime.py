"""The slime strategy: global 576 + separator + resampled local crops, the text-guided router."""

from __future__ import annotations

import pytest
import torch

from loupe.train.strategies import build_strategy
from loupe.train.strategies.slime import (
    GatedProjector,
    Resampler,
    router_scores,
    slime_grid,
    slime_token_count,
    top_p_keep,
)
from loupe.train.strategies.tiles import select_best_resolution_uhd
from loupe.train.tiny import tiny_model_config, tiny_tokenizer

from .strategy_helpers import gradient_image, one_image_batch, one_step


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


@pytest.mark.parametrize(
    "size, grid, total",
    [
        ((1000, 1000), (2, 2), 576 + 1 + 4 * 144),  # 1153
        ((336, 672), (1, 2), 576 + 1 + 2 * 144),  # 865
        ((672, 336), (2, 1), 865),
        ((500, 1500), (1, 3), 576 + 1 + 3 * 144),  # 1009
        ((1500, 500), (3, 1), 1009),
        ((2000, 500), (4, 1), 1153),
        ((300, 1300), (1, 4), 1153),
    ],
)
def test_golden_grid_and_tokens_on_the_pinpoints(size, grid, total):
    assert slime_grid(size, 336) == grid
    assert slime_token_count(24, 12, grid[0] * grid[1]).total == total
    s = build_strategy(tiny_model_config("slime"))
    assert s.image_token_count(*size) == total
    item = s.preprocess(gradient_image(size))
    assert item["pixel_values"].shape == (1 + grid[0] * grid[1], 3, 336, 336)
    assert item["image_grids"].tolist() == list(grid)


def test_uhd_rule_of_the_release():
    # area ≤ 336² → 2 slices (then 2 or 3 crops); a 1000² image → 9 → capped at 6 → 5, 6 or 7 crops
    assert select_best_resolution_uhd((336, 336), 336) == (336, 672)
    assert select_best_resolution_uhd((1000, 1000), 336) == (672, 1008)
    assert slime_grid((1000, 1000), 336, "uhd") == (2, 3)
    assert slime_grid((3000, 300), 336, "uhd") == (7, 1)
    with pytest.raises(ValueError, match="grid_rule"):
        slime_grid((10, 10), 336, "best")


def test_top_p_keeps_the_smallest_prefix_reaching_p_in_original_order():
    probs = torch.tensor([0.05, 0.5, 0.15, 0.3])
    assert top_p_keep(probs, 0.9).tolist() == [1, 2, 3]  # 0.5 + 0.3 ≤ 0.9, plus one more
    assert top_p_keep(probs, 0.1).tolist() == [1]
    assert top_p_keep(probs, 1.0).tolist() == [0, 1, 2, 3]


def test_router_scores_sum_cosines_over_attended_text():
    local = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    text = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, -1.0]])
    mask = torch.tensor([True, True, False])
    s = router_scores(local, text, mask)
    assert torch.allclose(s, torch.tensor([1 + 2**-0.5, 2**-0.5]))
    assert torch.allclose(router_scores(local, text), torch.tensor([1 + 2**-0.5, 2**-0.5 - 1]) / 3)


def test_resampler_and_zero_init_gate():
    torch.manual_seed(0)
    r = Resampler(grid=3, dim=8)
    assert r(torch.randn(2, 16, 8)).shape == (2, 9, 8)  # 16 tokens (4×4) → 9 queries
    g = GatedProjector(8, 12, global_grid=4).eval()
    x = torch.randn(1, 16, 8)
    mix = 0.5 * (g.mlp(x) + g.mlp(g.resampler(x)))  # zero-initialised gate → 50/50
    assert torch.allclose(g(x), mix, atol=1e-6)


def test_collate_concatenates_views_of_different_grids():
    s = build_strategy(tiny_model_config("slime"))
    items = [s.preprocess(gradient_image((1000, 1000))), s.preprocess(gradient_image((500, 1500)))]
    batch = s.collate(items)
    assert batch["pixel_values"].shape[0] == 5 + 4 and batch["image_grids"].tolist() == [[2, 2], [1, 3]]


def _features(model, batch):
    seen = []
    hook = model.encoder.register_forward_hook(lambda m, a, out: seen.append(out))
    try:
        out = model(**batch)
    finally:
        hook.remove()
    return out, seen[0]


def test_routed_out_tokens_leave_the_sequence_exactly(tok):
    torch.manual_seed(0)
    s = build_strategy(tiny_model_config("slime", options={"top_p": 0.5}))
    model = s.build_model(tok).eval()
    batch = one_image_batch(tok, s, gradient_image((672, 336)))
    with torch.no_grad():
        out, (feats, keep) = _features(model, batch)
        assert feats[0].shape == (865, 64) and keep[0][:577].all()
        assert 0 < int(keep[0][577:].sum()) < 2 * 144  # the router dropped some local tokens
        ids = batch["input_ids"]
        slots = ids == model.image_token_id
        embeds = model.language_model.get_input_embeddings()(ids)
        embeds[slots] = feats[0]
        stay = torch.ones_like(ids, dtype=torch.bool)
        stay[slots] = keep[0]
        # the shorter sequence upstream builds, run directly
        ref = model.language_model(inputs_embeds=embeds[stay][None], labels=batch["labels"][stay][None])
    assert torch.allclose(out.logits[stay][None], ref.logits, atol=1e-4)
    assert torch.isclose(out.loss, ref.loss, atol=1e-5)


def test_separator_is_the_comma_embedding_and_one_step_lowers_loss(tok):
    torch.manual_seed(0)
    s = build_strategy(tiny_model_config("slime"))
    model = s.build_model(tok)
    comma = model.language_model.get_input_embeddings().weight[s.separator_id(tok)].detach().clone()
    batch = one_image_batch(tok, s, gradient_image((1000, 700)))
    before, after, (feats, keep) = one_step(model, batch, eval_before=True)
    assert feats[0].shape == (1153, 64) and keep[0].shape == (1153,)
    assert torch.equal(feats[0][576], comma)
    assert after < before


def test_options_are_validated():
    with pytest.raises(ValueError, match="top_p"):
        build_strategy(tiny_model_config("slime", options={"top_p": 1.5}))
    with pytest.raises(ValueError, match="grid_rule"):
        build_strategy(tiny_model_config("slime", options={"grid_rule": "anyres"}))


def test_generate_with_routed_out_slots_equals_the_short_sequence(tok):
    torch.manual_seed(0)
    s = build_strategy(tiny_model_config("slime", options={"top_p": 0.5}))
    model = s.build_model(tok).eval()
    batch = one_image_batch(tok, s, gradient_image((672, 336)))
    prompt = {k: v for k, v in batch.items() if k != "labels"}
    embeds, mask, _ = model.embed_inputs(**prompt)
    assert 0 < int(mask.sum()) < mask.shape[1]
    stay = mask[0].bool()
    new = model.generate(**prompt, max_new_tokens=4, min_new_tokens=4, do_sample=False)
    ref = model.language_model.generate(
        inputs_embeds=embeds[:, stay],
        attention_mask=mask[:, stay],
        max_new_tokens=4,
        min_new_tokens=4,
        do_sample=False,
    )
    n = prompt["input_ids"].shape[1]
    assert new.shape == (1, n + 4) and torch.equal(new[:, :n], prompt["input_ids"])
    assert torch.equal(new[:, n:], ref)
