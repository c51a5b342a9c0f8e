"""``loupe train`` checkpoints (strategy contract + loupe_train.yaml) load and answer through eval."""

from __future__ import annotations

import pytest
import yaml
from PIL import Image

from loupe.eval.model import Query, load_vlm
from loupe.pipeline.errors import LoupeError

pytestmark = pytest.mark.slow  # builds and loads a tiny strategy model (~20 s on the shared box)


def make_checkpoint(folder, strategy="llava", template="vicuna_v1"):
    from loupe.train.strategies import build_strategy
    from loupe.train.tiny import tiny_model_config, tiny_tokenizer
    from loupe.train.tokenizer import prepare_tokenizer

    cfg = tiny_model_config(strategy)
    tok = prepare_tokenizer(tiny_tokenizer())
    model = build_strategy(cfg).build_model(tok)
    folder.mkdir(parents=True)
    if hasattr(model, "save_pretrained"):
        model.save_pretrained(folder)
    else:  # a plain nn.Module strategy model: the Trainer saves its state dict as model.safetensors
        from safetensors.torch import save_file

        save_file(
            {k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "model.safetensors")
        )
    tok.save_pretrained(folder)
    meta = {"config": {"model": cfg.model_dump(mode="json")}, "template": template}
    (folder / "loupe_train.yaml").write_text(yaml.safe_dump(meta))
    return folder


def test_llava_strategy_checkpoint_answers_batched_and_scores(tmp_path):
    m = load_vlm(make_checkpoint(tmp_path / "ckpt"))
    assert type(m).__name__ == "StrategyVLM" and m.chat_format == "vicuna_v1"
    qs = [
        Query.single(Image.new("RGB", (50 + 10 * i, 40), (40 * i, 0, 0)), "Where is the cat?")
        for i in range(2)
    ]
    batched = m.answer(qs, max_new_tokens=3)
    assert batched == [m.answer([q], max_new_tokens=3)[0] for q in qs]
    losses = m.answer_loss(qs[:2], ["left", "right"])
    assert len(losses) == 2 and all(v > 0 for v in losses)
    assert losses[1] == pytest.approx(m.answer_loss([qs[1]], ["right"])[0], rel=1e-4)

    class NoGenerate:  # a strategy model without .generate: the plain greedy loop must agree
        def __init__(self, inner):
            self.inner = inner

        def __call__(self, **kw):
            return self.inner(**kw)

        def parameters(self):
            return self.inner.parameters()

    m.model = NoGenerate(m.model)
    assert m.answer(qs, max_new_tokens=3) == batched


def test_composite_strategy_checkpoint(tmp_path):
    """An S2 checkpoint (train's MultimodalLM) through load_for_inference: batched = one at a time."""
    m = load_vlm(make_checkpoint(tmp_path / "s2", strategy="s2"))
    qs = [Query.single(Image.new("RGB", (60 + 20 * i, 40)), "Where is the cat?") for i in range(2)]
    batched = m.answer(qs, max_new_tokens=2)
    assert batched == [m.answer([q], max_new_tokens=2)[0] for q in qs]
    assert m.answer_loss(qs[:1], ["left"])[0] > 0


def test_damaged_checkpoint_config(tmp_path):
    d = tmp_path / "bad"
    d.mkdir()
    (d / "loupe_train.yaml").write_text("config: {model: {strategy: nope}}\n")
    with pytest.raises(LoupeError, match="cannot load the loupe train checkpoint .*bad"):
        load_vlm(d)
