"""A tiny random LLaVA (``LlavaForConditionalGeneration``) with an offline-trained tokenizer.

For tests, smoke runs and the CPU throughput benchmark: no weights are downloaded, everything is
built from configs. The vision tower is a 2-layer CLIP at 28 px (2x2 patches of 14 px -> 4 image
tokens); the LLM a 2-layer Llama. Answers are random text, but deterministic for a seed. The
tokenizer is training's :func:`loupe.train.tokenizer.build_tiny_tokenizer` (``model.tokenizer:
tiny``) trained on a few prompt templates.
"""

from __future__ import annotations

from pathlib import Path

CORPUS = [
    "A chat between a curious user and an artificial intelligence assistant. The assistant gives "
    "helpful, detailed, and polite answers to the user's questions. USER: ASSISTANT: yes no",
    "Answer the question using a single word or phrase. Answer with the option's letter from the "
    "given choices directly. A. B. C. D. Is there a dog in the image? What is written on the sign?",
    "Please provide the bounding box coordinate of the region this question asks: "
    "[0.10, 0.20, 0.50, 0.90] Please combine the information from these two images and answer this question:",
    "Context: Question: Reference OCR token: 0123456789 red green blue cat dog bird left right",
] * 4


def make_tiny_llava(folder: str | Path, seed: int = 0, image_size: int = 28) -> Path:
    """Write a tiny random LLaVA checkpoint folder (config, weights, processor) and return it."""
    import torch
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    from loupe.train.tokenizer import build_tiny_tokenizer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tok = build_tiny_tokenizer(CORPUS, vocab_size=400)  # the training side's tiny byte-level BPE
    vision = CLIPVisionConfig(
        image_size=image_size, patch_size=14, hidden_size=32, intermediate_size=64,
        num_hidden_layers=2, num_attention_heads=2, projection_dim=32,
    )  # fmt: skip
    text = LlamaConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )  # fmt: skip
    cfg = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=tok.convert_tokens_to_ids("<image>"),
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
    )
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(cfg)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(folder)
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    )
    LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tok,
        patch_size=14,
        vision_feature_select_strategy="default",
        image_token="<image>",
        num_additional_image_tokens=1,
    ).save_pretrained(folder)
    return folder
