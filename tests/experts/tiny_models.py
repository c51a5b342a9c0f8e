"""Tiny random models saved to folders and loaded back through the real loading code (offline tests)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

TINY_CFG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "patch_size": 16, "head_width": 32},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


def make_tiny_open_clip(folder: Path, seed: int = 0) -> Path:
    import open_clip
    import torch

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = open_clip.CLIP(**TINY_CFG)
    torch.save(model.state_dict(), folder / "open_clip_pytorch_model.bin")
    pre = {"mean": [0.48145466, 0.4578275, 0.40821073], "std": [0.26862954, 0.26130258, 0.27577711]}
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_CFG, "preprocess_cfg": pre}))
    return folder


def clip_tokenizer():
    """The real CLIP BPE tokenizer, built from the vocabulary file that ships in open_clip's wheel."""
    from open_clip.tokenizer import bytes_to_unicode, default_bpe
    from transformers import CLIPTokenizer

    merges = gzip.open(default_bpe()).read().decode("utf-8").split("\n")[1 : 49152 - 256 - 2 + 1]
    vocab = list(bytes_to_unicode().values())
    vocab += [v + "</w>" for v in vocab] + ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    return CLIPTokenizer(
        vocab={v: i for i, v in enumerate(vocab)}, merges=[tuple(m.split()) for m in merges], pad_token="!"
    )


def make_tiny_owlvit(folder: Path, seed: int = 0) -> Path:
    """A 1-layer OWL-ViT with the real CLIP tokenizer; box head zeroed so boxes are OWL-ViT's per-patch
    prior (patch centre, patch size) instead of random degenerate boxes."""
    import torch
    from transformers import OwlViTConfig, OwlViTForObjectDetection, OwlViTImageProcessor, OwlViTProcessor

    small = dict(hidden_size=32, intermediate_size=64, num_attention_heads=2, num_hidden_layers=1)
    cfg = OwlViTConfig(
        text_config={**small, "max_position_embeddings": 16},
        vision_config={**small, "image_size": 64, "patch_size": 16},
        projection_dim=32,
    )
    torch.manual_seed(seed)
    model = OwlViTForObjectDetection(cfg).eval()
    with torch.no_grad():
        for p in model.box_head.parameters():
            p.zero_()
    proc = OwlViTProcessor(
        image_processor=OwlViTImageProcessor(
            size={"height": 64, "width": 64}, crop_size={"height": 64, "width": 64}
        ),
        tokenizer=clip_tokenizer(),
    )
    model.save_pretrained(folder)
    proc.save_pretrained(folder)
    return folder
