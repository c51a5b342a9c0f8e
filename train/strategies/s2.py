"""S2 (Scaling on Scales): one image seen at several scales, still 576 tokens, 3× the channels.

Upstream: bfshi/scaling_on_scales ``s2wrapper/core.py`` L14-62 (``forward``) with LLaVA's
integration haotian-liu/LLaVA ``llava/model/multimodal_encoder/clip_encoder.py``
``CLIPVisionTowerS2`` L93-142:

- scales ``336,672,1008`` sorted (L97-99); the split size is the smallest scale (L100) and the
  image is preprocessed at the largest (L101, L105-106: shortest edge and crop = 1008);
- each scale is the 1008 image bicubically resized (core.py L33), cut into ceil(size/336)²
  tiles (L30, L34: 1, 4, 9 tiles) and all 14 tiles go through the *same* CLIP at 336;
- per tile, the penultimate layer without CLS (``feature_select``, clip_encoder.py L36-44);
  tiles are merged back into one map per scale (core.py L47: 24², 48², 72²) and each map is
  area-pooled to the first scale's 24×24 (L50-53), then the scales are concatenated on channels;
- so the LLM sees 576 tokens of width ``hidden × len(scales)`` (clip_encoder.py L141-142:
  3 × 1024 = 3072 for CLIP-L/14), and the projector maps 3072 → LLM hidden.

Training uses LLaVA's ordinary (non-anyres) settings (scaling_on_scales README, "Training").
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from loupe.train.strategies.base import (
    Strategy,
    build_projector,
    clip_pixels,
    image_token_id,
    pad_to_square,
    vision_config,
)
from loupe.train.strategies.composite import LANGUAGE_MODEL, MultimodalLM, build_towers

DEFAULT_SCALES = (336, 672, 1008)


@dataclass(frozen=True)
class S2Tokens:
    tokens: int  # visual embeddings the LLM sees
    width: int  # channels of each embedding before the projector
    tiles: tuple[int, ...]  # vision forward passes per scale
    grid: int  # side of the token grid


def s2_token_count(
    hidden_size: int = 1024, patch_size: int = 14, scales: Sequence[int] = DEFAULT_SCALES
) -> S2Tokens:
    """Token arithmetic of S2. Golden (CLIP-L/14, 336/672/1008): 576 tokens × 3072 channels,
    tiles (1, 4, 9)."""
    scales = sorted(int(s) for s in scales)
    if not scales or scales[0] % patch_size:
        raise ValueError(
            f"s2 scales {scales}: the smallest scale must be a multiple of patch_size {patch_size}"
        )
    split = scales[0]
    grid = split // patch_size
    tiles = tuple(math.ceil(s / split) ** 2 for s in scales)
    return S2Tokens(tokens=grid * grid, width=hidden_size * len(scales), tiles=tiles, grid=grid)


def split_chessboard(x: torch.Tensor, num_split: int) -> torch.Tensor:
    """``b c (nh h) (nw w) -> (nh nw b) c h w`` (s2wrapper/utils.py L11-19)."""
    b, c, h, w = x.shape
    if h % num_split or w % num_split:
        raise ValueError(f"a {h}x{w} map does not split into {num_split}x{num_split} tiles")
    x = x.reshape(b, c, num_split, h // num_split, num_split, w // num_split)
    return x.permute(2, 4, 0, 1, 3, 5).reshape(num_split * num_split * b, c, h // num_split, w // num_split)


def merge_chessboard(x: torch.Tensor, num_split: int) -> torch.Tensor:
    """``(nh nw b) c h w -> b c (nh h) (nw w)``, the inverse of :func:`split_chessboard` (L21-31)."""
    n, c, h, w = x.shape
    b = n // (num_split * num_split)
    x = x.reshape(num_split, num_split, b, c, h, w)
    return x.permute(2, 3, 0, 4, 1, 5).reshape(b, c, num_split * h, num_split * w)


def multiscale_forward(
    features: Callable[[torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    img_sizes: Sequence[int],
    max_split_size: int,
) -> torch.Tensor:
    """s2wrapper ``forward`` (core.py L14-62) for ViT features without prefix tokens:
    ``features(tiles) -> [n, h*w, c]``; returns ``[b, grid², c × len(img_sizes)]``."""
    if images.dim() != 4 or images.shape[2] != images.shape[3]:
        raise ValueError(f"s2 needs square images [b, 3, s, s], got {tuple(images.shape)}")
    num_splits = [math.ceil(s / max_split_size) for s in img_sizes]
    maps = []
    for size, n in zip(img_sizes, num_splits):
        x = F.interpolate(images.float(), size=(size, size), mode="bicubic").to(images.dtype)
        out = features(split_chessboard(x, n))
        side = math.isqrt(out.shape[1])
        out = out.transpose(1, 2).reshape(out.shape[0], out.shape[2], side, side)
        maps.append(merge_chessboard(out, n))
    side = maps[0].shape[-1]
    pooled = [F.interpolate(m.float(), size=(side, side), mode="area").to(m.dtype) for m in maps]
    return torch.cat(pooled, dim=1).flatten(2).transpose(1, 2)


class S2Encoder(nn.Module):
    """CLIP run at several scales (LLaVA ``CLIPVisionTowerS2``) + the projector:
    ``pixel_values`` ``[b, 3, S, S]`` at the largest scale → ``b × [grid², llm_hidden]``."""

    def __init__(
        self,
        vision: nn.Module,
        projector: nn.Module,
        scales: Sequence[int] = DEFAULT_SCALES,
        feature_layer: int = -2,
    ):
        super().__init__()
        self.vision = vision
        self.projector = projector
        self.scales = sorted(int(s) for s in scales)
        self.feature_layer = feature_layer
        if self.scales[0] != vision.config.image_size:
            raise ValueError(
                f"model.options.scales: the smallest scale {self.scales[0]} must equal the vision tower's "
                f"image_size {vision.config.image_size}"
            )

    def tile_features(self, tiles: torch.Tensor) -> torch.Tensor:
        out = self.vision(tiles, output_hidden_states=True).hidden_states[self.feature_layer]
        return out[:, 1:]  # 'patch' features: CLS dropped (clip_encoder.py L38-39)

    def multiscale(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``[b, grid², hidden × len(scales)]`` before the projector."""
        return multiscale_forward(self.tile_features, pixel_values, self.scales, self.scales[0])

    def forward(self, images: dict[str, torch.Tensor], ctx: Any = None) -> tuple[list[torch.Tensor], None]:
        return list(self.projector(self.multiscale(images["pixel_values"])).unbind(0)), None


class S2Options(BaseModel):
    model_config = ConfigDict(extra="forbid")
    scales: list[int] | None = Field(
        None,
        min_length=1,
        description="Image sizes S2 sees; the smallest must be the tower's image_size. Default: 1×, 2×, 3× it "
        "(336, 672, 1008 for CLIP-L/14-336, LLaVA's s2_scales).",
    )


PROJECTOR = ("encoder.projector.*",)
LLM = LANGUAGE_MODEL


class S2Strategy(Strategy):
    name = "s2"
    Options = S2Options
    trainable_presets = {"pretrain": PROJECTOR, "finetune": PROJECTOR + LLM}

    def scales(self) -> list[int]:
        s = self.vision_image_size()
        return sorted(self.options.scales or [s, 2 * s, 3 * s])

    def arithmetic(self) -> S2Tokens:
        vc = vision_config(self.cfg.vision, self)
        return s2_token_count(vc.hidden_size, vc.patch_size, self.scales())

    def image_token_count(self, width: int, height: int, n_boxes: int = 0) -> int:
        """576 at CLIP-L/14-336 for any image size: the image is made square at the largest scale."""
        return self.arithmetic().tokens

    def preprocess(self, image: Image.Image, boxes: Any = None, question: str | None = None) -> dict:
        image = image.convert("RGB")
        if self.cfg.image_aspect == "pad":
            image = pad_to_square(image)
        else:
            image = image.resize((image.width, image.width))
        return {"pixel_values": clip_pixels(image, self.scales()[-1])}

    def build_model(self, tokenizer: Any) -> MultimodalLM:
        vision, llm = build_towers(self, tokenizer)
        width = self.arithmetic().width
        projector = build_projector(self.cfg.projector, width, llm.get_input_embeddings().embedding_dim)
        encoder = S2Encoder(vision, projector, self.scales(), self.cfg.vision_feature_layer)
        return MultimodalLM(encoder, llm, image_token_id(tokenizer))
