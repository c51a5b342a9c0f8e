"""Dragonfly: a low-res view plus 40 zoomed crops, each crop mean-pooled to 37 tokens.

Upstream: togethercomputer/Dragonfly (release used for Llama-3-8B-Dragonfly-v1).

- ``src/dragonfly/models/processing_dragonfly.py`` ``process_anyres_image`` L216-244: the
  mid resolution is the best fit (L232) of {(2s, 2s), (s, 4s), (4s, s)} for s = 336 and the
  image is *resized* (not padded) to it and cut into 4 crops (L233-234); the high resolution is
  3× the mid one (L236), cut into 36 crops (L237-238); the low-res view is a plain resize to
  s×s (L240). Order: [low, 4 mid, 36 high] (L241).
- ``modeling_dragonfly.py`` ``forward`` L283-299: every crop through CLIP, penultimate layer
  *with* CLS (``hidden_states[-2]``), then the projector ``vision_embed_tokens`` (one Linear,
  L165) — pooling happens after projection; the low-res view keeps CLS + 576 (L286); each of
  the 40 other crops keeps CLS + the 24×24 grid average-pooled 4×4 → 6×6 (L291-296) = 37.
- ``processing_dragonfly.py`` L44-47 and L614-628: ``LOW_IMG_PATCH_SIZE = 577``,
  ``HIGH_IMG_EMB_LENGTH = 40``, ``HIGH_IMG_PATCH_SIZE = 37`` and an image-newline token
  (``<|reserved_special_token_1|>``, L36) after every view: 577 + 40·37 = 2057 visual
  embeddings in 578 + 40·38 = 2098 positions.

Zoom-in selection (optional, off by default as in the release, whose ``forward`` accepts
``topk`` but never uses it, L244-245): keep the mid crops and the ``zoom_top_k`` high-res crops
whose mean projected embedding is most cosine-similar to the question's mean token embedding,
in their original order — the Dragonfly README's "zoom-in patch selection" as the issue words it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from loupe.train.strategies.base import (
    Strategy,
    clip_pixels,
    image_token_id,
    vision_config,
)
from loupe.train.strategies.composite import LANGUAGE_MODEL, MultimodalLM, build_towers
from loupe.train.strategies.tiles import Size, divide_to_patches, select_best_resolution

MID_SCALES = ((2, 2), (1, 4), (4, 1))  # in units of the crop size (processing_dragonfly.py L232)
MID_CROPS = 4  # every candidate is 4 crops: 2×2, 1×4, 4×1
HIGH_ZOOM = 3  # high resolution = 3 × mid (L236)
POOL_KERNEL = 4  # 24×24 → 6×6 (modeling_dragonfly.py L294)


@dataclass(frozen=True)
class DragonflyLayout:
    mid: Size  # (width, height) the image is resized to for the mid crops
    high: Size
    mid_crops: int
    high_crops: int


def dragonfly_layout(image_size: Size, crop: int = 336) -> DragonflyLayout:
    """Where an image of ``image_size`` (w, h) is cut. Square → mid 672², high 2016²; wide (4:1)
    → 1344×336 and 4032×1008; always 4 mid and 36 high crops."""
    mid = select_best_resolution(image_size, [(cw * crop, ch * crop) for cw, ch in MID_SCALES])
    high = (mid[0] * HIGH_ZOOM, mid[1] * HIGH_ZOOM)
    return DragonflyLayout(
        mid=mid,
        high=high,
        mid_crops=(mid[0] // crop) * (mid[1] // crop),
        high_crops=(high[0] // crop) * (high[1] // crop),
    )


@dataclass(frozen=True)
class DragonflyTokens:
    embeddings: int  # visual embeddings (projected features)
    positions: int  # sequence positions: embeddings + one newline per view
    per_view: tuple[int, ...]  # embeddings of each view, low-res first


def dragonfly_token_count(
    grid: int = 24,
    pool_kernel: int = POOL_KERNEL,
    mid_crops: int = 4,
    high_crops: int = 36,
    zoom_top_k: int | None = None,
) -> DragonflyTokens:
    """Token arithmetic. Golden (CLIP-L/14 at 336, grid 24): 2057 embeddings, 2098 positions;
    with ``zoom_top_k=k`` the high-res crops drop to k."""
    if grid % pool_kernel:
        raise ValueError(f"dragonfly: grid {grid} is not divisible by pool_kernel {pool_kernel}")
    kept_high = high_crops if zoom_top_k is None else min(zoom_top_k, high_crops)
    crop_tokens = 1 + (grid // pool_kernel) ** 2
    per_view = (1 + grid * grid,) + (crop_tokens,) * (mid_crops + kept_high)
    return DragonflyTokens(
        embeddings=sum(per_view), positions=sum(per_view) + len(per_view), per_view=per_view
    )


def dragonfly_crops(image: Image.Image, crop: int) -> list[Image.Image]:
    """[low-res view, 4 mid crops, 36 high crops] as PIL images (process_anyres_image L228-241)."""
    lay = dragonfly_layout(image.size, crop)
    mid = divide_to_patches(image.resize(lay.mid), crop)
    high = divide_to_patches(image.resize(lay.high), crop)
    return [image.resize((crop, crop))] + mid + high


def select_zoom_crops(crop_embeds: torch.Tensor, question: torch.Tensor, k: int) -> torch.Tensor:
    """Indices (ascending) of the ``k`` crops whose mean embedding is most cosine-similar to the
    mean question embedding. ``crop_embeds``: [n, t, d]; ``question``: [q, d]."""
    if k >= crop_embeds.shape[0]:
        return torch.arange(crop_embeds.shape[0], device=crop_embeds.device)
    sim = F.cosine_similarity(crop_embeds.mean(1), question.mean(0, keepdim=True), dim=-1)
    return sim.topk(k).indices.sort().values


class DragonflyEncoder(nn.Module):
    """CLIP + ``vision_embed_tokens`` + crop pooling + newline embeddings:
    ``pixel_values`` ``[b, 41, 3, s, s]`` → ``b × [positions, llm_hidden]``."""

    def __init__(
        self,
        vision: nn.Module,
        llm_hidden: int,
        newline_id: int,
        pool_kernel: int = POOL_KERNEL,
        feature_layer: int = -2,
        zoom_top_k: int | None = None,
    ):
        super().__init__()
        self.vision = vision
        self.projector = nn.Linear(vision.config.hidden_size, llm_hidden)  # vision_embed_tokens, L165
        self.newline_id = int(newline_id)
        self.pool_kernel = pool_kernel
        self.feature_layer = feature_layer
        self.zoom_top_k = zoom_top_k
        self.grid = vision.config.image_size // vision.config.patch_size

    def views(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``[b, 1 + crops, 3, s, s]`` → (low-res ``[b, 1 + grid², d]``, crops ``[b, crops, 1 + (grid/k)², d]``)."""
        b, n = pixel_values.shape[:2]
        feats = self.vision(pixel_values.flatten(0, 1), output_hidden_states=True).hidden_states[
            self.feature_layer
        ]
        feats = self.projector(feats).unflatten(0, (b, n))  # CLS kept, projected before pooling (L283-284)
        low, crops = feats[:, 0], feats[:, 1:].flatten(0, 1)
        d = crops.shape[-1]
        grid_map = crops[:, 1:].reshape(-1, self.grid, self.grid, d).permute(0, 3, 1, 2)
        pooled = F.avg_pool2d(grid_map, kernel_size=self.pool_kernel, stride=self.pool_kernel)
        crops = torch.cat([crops[:, :1], pooled.flatten(2).transpose(1, 2)], dim=1)
        return low, crops.unflatten(0, (b, n - 1))

    def forward(self, images: dict[str, torch.Tensor], ctx: Any) -> tuple[list[torch.Tensor], None]:
        low, crops = self.views(images["pixel_values"])
        newline = ctx.embed(torch.tensor([self.newline_id], device=low.device)).to(low.dtype)
        mid = MID_CROPS
        out = []
        for i in range(low.shape[0]):
            kept = crops[i]
            if self.zoom_top_k is not None:
                question = ctx.text[i][ctx.prompt[i]] if bool(ctx.prompt[i].any()) else ctx.text[i]
                keep = select_zoom_crops(kept[mid:], question, self.zoom_top_k) + mid
                kept = torch.cat([kept[:mid], kept[keep]], dim=0)
            views = [low[i]] + list(kept.unbind(0))
            out.append(torch.cat([t for v in views for t in (v, newline)], dim=0))
        return out, None


class DragonflyOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    zoom_top_k: int | None = Field(
        None,
        ge=1,
        description="Zoom-in selection: keep this many high-res crops, those most similar to the question "
        "(the release keeps all 36: leave unset).",
    )
    pool_kernel: int = Field(
        POOL_KERNEL, ge=1, description="Average-pool kernel on each crop's patch grid (24 → 6)."
    )
    newline_token: str | None = Field(
        None,
        description="Token whose embedding follows each view. Default: <|reserved_special_token_1|> "
        "(the release, Llama-3) when the tokenizer has it, else the tokenizer's newline.",
    )


PROJECTOR = ("encoder.projector.*",)
LLM = LANGUAGE_MODEL


class DragonflyStrategy(Strategy):
    name = "dragonfly"
    Options = DragonflyOptions
    # Dragonfly stage 1 (train_dragonfly_stage1.sh --tune_vision_embed_tokens_only) / stage 2
    trainable_presets = {"pretrain": PROJECTOR, "finetune": PROJECTOR + LLM}

    def arithmetic(self, width: int, height: int) -> DragonflyTokens:
        vc = vision_config(self.cfg.vision, self)
        lay = dragonfly_layout((width, height), vc.image_size)
        return dragonfly_token_count(
            vc.image_size // vc.patch_size,
            self.options.pool_kernel,
            lay.mid_crops,
            lay.high_crops,
            self.options.zoom_top_k,
        )

    def image_token_count(self, width: int, height: int, n_boxes: int = 0) -> int:
        """Positions: visual embeddings + one newline per view (2098 at CLIP-L/14-336)."""
        return self.arithmetic(width, height).positions

    def preprocess(self, image: Image.Image, boxes: Any = None, question: str | None = None) -> dict:
        size = self.vision_image_size()
        crops = dragonfly_crops(image.convert("RGB"), size)
        return {"pixel_values": torch.stack([clip_pixels(c, size) for c in crops])}

    def newline_id(self, tokenizer: Any) -> int:
        name = self.options.newline_token
        if name is None:
            name = (
                "<|reserved_special_token_1|>"
                if "<|reserved_special_token_1|>" in tokenizer.get_vocab()
                else "\n"
            )
        ids = tokenizer(name, add_special_tokens=False)["input_ids"]
        if len(ids) != 1:
            raise ValueError(
                f"model.options.newline_token: {name!r} is {len(ids)} tokens for this tokenizer, need 1"
            )
        return ids[0]

    def build_model(self, tokenizer: Any) -> MultimodalLM:
        vision, llm = build_towers(self, tokenizer)
        encoder = DragonflyEncoder(
            vision,
            llm.get_input_embeddings().embedding_dim,
            self.newline_id(tokenizer),
            self.options.pool_kernel,
            self.cfg.vision_feature_layer,
            self.options.zoom_top_k,
        )
        return MultimodalLM(encoder, llm, image_token_id(tokenizer))
