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
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

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
        raise ValueError(f"s2 scales {scales}: the smallest scale must be a multiple of patch_size {patch_size}")
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
    features: nn.Module | callable, images: torch.Tensor, img_sizes: Sequence[int], max_split_size: int
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


class S2VisionTower(nn.Module):
    """CLIP run at several scales (LLaVA ``CLIPVisionTowerS2``): ``pixel_values`` at the largest
    scale → ``[b, grid², hidden × len(scales)]``."""

    def __init__(self, vision: nn.Module, scales: Sequence[int] = DEFAULT_SCALES, feature_layer: int = -2):
        super().__init__()
        self.vision = vision
        self.scales = sorted(int(s) for s in scales)
        self.feature_layer = feature_layer
        cfg = vision.config
        if self.scales[0] != cfg.image_size:
            raise ValueError(
                f"s2 scales {self.scales}: the smallest scale must equal the vision tower's image_size {cfg.image_size}"
            )
        self.arith = s2_token_count(cfg.hidden_size, cfg.patch_size, self.scales)

    def tile_features(self, tiles: torch.Tensor) -> torch.Tensor:
        out = self.vision(tiles, output_hidden_states=True).hidden_states[self.feature_layer]
        return out[:, 1:]  # 'patch' features: CLS dropped (clip_encoder.py L38-39)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return multiscale_forward(self.tile_features, pixel_values, self.scales, self.scales[0])
