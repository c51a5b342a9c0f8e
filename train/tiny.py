"""Tiny random-init configs for tests, smoke runs and benchmarks (no weights, no network).

The vision tower keeps CLIP ViT-L/14-336's geometry (336 px, 14 px patches -> 24×24 = 576 tokens) at
a toy width, so token arithmetic is the real one; the LLM is a 2-layer Llama.
"""

from __future__ import annotations

from typing import Any

TINY_VISION: dict[str, Any] = dict(
    image_size=336,
    patch_size=14,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=2,
)
TINY_LLM: dict[str, Any] = dict(
    model_type="llama",
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=4,
    max_position_embeddings=4096,
)
TINY_TEXTS = [
    "A red square on a white background. A chat between a curious user and an artificial intelligence "
    "assistant. USER: ASSISTANT: Describe this image in detail. What text appears in the image? "
    "Where is the cat? [0.100, 0.200, 0.300, 0.400] user assistant system 0123456789",
]


def tiny_model_config(strategy: str = "llava", **overrides: Any):
    """A ``ModelConfig`` with the tiny vision tower and LLM and the ``tiny`` tokenizer."""
    from loupe.schemas.train import ModelConfig, TowerConfig

    kw: dict[str, Any] = dict(
        strategy=strategy,
        vision=TowerConfig(config=dict(TINY_VISION)),
        llm=TowerConfig(config=dict(TINY_LLM)),
        tokenizer="tiny",
    )
    kw.update(overrides)
    return ModelConfig(**kw)


def tiny_geometry(
    image_size: int = 336, patch_size: int = 14, vision_width: int = 32, llm_width: int = 64, layers: int = 2
) -> dict[str, Any]:
    """``vision`` and ``llm`` tower configs of another tiny geometry (``loupe pipeline``'s recipes):
    MLPs twice the width, one attention head per 16 channels (at least one)."""
    vision = dict(TINY_VISION, image_size=image_size, patch_size=patch_size, hidden_size=vision_width,
                  intermediate_size=2 * vision_width, num_hidden_layers=layers,
                  num_attention_heads=max(1, vision_width // 16))  # fmt: skip
    heads = max(1, llm_width // 16)
    llm = dict(TINY_LLM, hidden_size=llm_width, intermediate_size=2 * llm_width, num_hidden_layers=layers,
               num_attention_heads=heads, num_key_value_heads=heads)  # fmt: skip
    return {"vision": vision, "llm": llm}


def tiny_tokenizer(texts: list[str] | None = None, vocab_size: int = 512):
    from loupe.train.tokenizer import build_tiny_tokenizer

    return build_tiny_tokenizer(texts or TINY_TEXTS, vocab_size)
