"""SliME: a global view, a separator, and resampled local crops kept by a text-guided router.

Upstream: yfzhang114/SliME (``scripts/vicuna/vicuna_7b_{pt,sft}.sh``: ``--image_aspect_ratio
anyres --mm_patch_merge_type spatial --mm_projector_type gated --mm_resampler_type cosine
--mm_resampler_dim 144 --mm_resampler_topp 0.95`` at fine-tune, ``1.0`` at pre-alignment).

- Views (``llava/mm_utils.py`` ``process_anyres_image`` L177-210): the global view is a plain
  resize to 336² (L200); local crops tile the image resized-and-padded (L195) to a grid.
  ``train.py`` L1109 sets the pinpoints [(672,672),(336,672),(672,336),(336,1008),(1008,336),
  (336,1344),(1344,336)] (the issue's rule, our default ``grid_rule="pinpoints"``); the released
  ``process_anyres_image`` actually calls ``select_best_resolution_uhd`` (L194, L41-97), which
  ignores them — offered as ``grid_rule="uhd"``.
- Global path (``llava/model/llava_arch.py`` ``encode_images`` L222-224): CLIP penultimate
  patches (576) through the ``gated`` projector (``multimodal_projector/builder.py``
  ``GatedBlock`` L38-209: a soft mixture of an MLP expert and a 24×24-query resampler + MLP
  expert; the gate weights start at zero, i.e. 50/50).
- Separator (L219, L254): the LLM's embedding of the tokenizer's ``,`` (``train.py`` L1092).
- Local path (L226-248): every 336² crop → CLIP 576 → ``Resampler`` with 12×12 = 144 learned
  queries (``multimodal_resampler/builder.py`` L239-245, ``sampler.py`` L91-173) → the projector's
  MLP (L180-181: non-576 inputs skip the gate) → tokens laid out spatially across crops
  (L240-244) → the text-guided router (``TextGuidedSampler.forward`` L248-281): per token, the
  sum over the text tokens of its cosine similarity to each (``TextGuidedRouterCosine``
  L189-201), plus N(0, 0.1²) noise in training, softmax, then the smallest prefix of the sorted
  tokens whose probability mass reaches ``top_p`` (plus one), back in the original order.

Token count before routing: 576 + 1 + crops × 144 (1153 for a square image on the pinpoints).
Routing drops local tokens per sample; here they keep their slots but are masked out of
attention, and the positions after them are compacted (``composite.MultimodalLM``) so the
language model computes exactly what upstream's shorter sequence computes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field
from torch import nn
from torch.nn.init import trunc_normal_

from loupe.train.strategies.base import (
    Strategy,
    clip_pixels,
    image_token_id,
    vision_config,
)
from loupe.train.strategies.composite import LANGUAGE_MODEL, MultimodalLM, build_towers
from loupe.train.strategies.tiles import (
    Size,
    divide_to_patches,
    grid_shape,
    resize_and_pad,
    select_best_resolution,
    select_best_resolution_uhd,
)

# train.py L1109, in units of the 336 crop
PINPOINTS = ((2, 2), (1, 2), (2, 1), (1, 3), (3, 1), (1, 4), (4, 1))
LOCAL_GRID = 12  # --mm_resampler_dim 144
TOP_P = {"pretrain": 1.0, "finetune": 0.95}


def slime_grid(
    image_size: Size, crop: int = 336, grid_rule: Literal["pinpoints", "uhd"] = "pinpoints"
) -> tuple[int, int]:
    """``(columns, rows)`` of local crops for an image of ``image_size`` (w, h)."""
    if grid_rule == "pinpoints":
        best = select_best_resolution(image_size, [(w * crop, h * crop) for w, h in PINPOINTS])
    elif grid_rule == "uhd":
        best = select_best_resolution_uhd(image_size, crop)
    else:
        raise ValueError(f"slime grid_rule {grid_rule!r}: expected 'pinpoints' or 'uhd'")
    return grid_shape(best, crop)


@dataclass(frozen=True)
class SlimeTokens:
    global_tokens: int
    separator: int
    local_tokens: int  # before routing
    total: int


def slime_token_count(grid: int = 24, local_grid: int = LOCAL_GRID, crops: int = 4) -> SlimeTokens:
    """Token arithmetic before routing. Golden (CLIP-L/14 at 336): 576 + 1 + crops·144, e.g.
    1153 for a 2×2 grid, 865 for 1×2, 1009 for 1×3."""
    local = crops * local_grid * local_grid
    return SlimeTokens(
        global_tokens=grid * grid, separator=1, local_tokens=local, total=grid * grid + 1 + local
    )


def top_p_keep(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Indices (ascending) of the smallest set of highest-probability entries whose cumulative
    mass reaches ``top_p``: those with cumsum ≤ top_p plus one more
    (``multimodal_resampler/builder.py`` L259-272). ``top_p=1.0`` keeps everything."""
    sorted_probs, order = torch.sort(probs, descending=True)
    n_keep = int((torch.cumsum(sorted_probs, 0) <= top_p).sum())
    if n_keep < order.numel():
        n_keep += 1
    return order[:n_keep].sort().values


def _sincos_1d(dim: int, pos: np.ndarray) -> np.ndarray:
    omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
    out = np.einsum("m,d->md", pos.reshape(-1), omega)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)


def sincos_2d(dim: int, grid: int) -> torch.Tensor:
    """2-D sin-cos position table ``[grid², dim]`` (sampler.py L39-88)."""
    if dim % 4:
        raise ValueError(f"slime resampler: embedding width {dim} must be a multiple of 4")
    gw, gh = np.meshgrid(np.arange(grid, dtype=np.float32), np.arange(grid, dtype=np.float32))
    emb = np.concatenate([_sincos_1d(dim // 2, gw), _sincos_1d(dim // 2, gh)], axis=1)
    return torch.from_numpy(emb).float()


class Resampler(nn.Module):
    """One cross-attention from ``grid²`` learned queries to the patch tokens, 2-D sin-cos
    positions on both sides (sampler.py ``Resampler`` L91-173; the key positions are the query
    table bicubically resized to the input grid, ``get_abs_pos`` L27-36)."""

    def __init__(self, grid: int, dim: int, heads: int | None = None):
        super().__init__()
        self.grid = grid
        self.register_buffer("pos_embed", sincos_2d(dim, grid), persistent=False)
        self.query = nn.Parameter(torch.zeros(grid * grid, dim))
        trunc_normal_(self.query, std=0.02)
        self.attn = nn.MultiheadAttention(dim, heads or max(1, dim // 128), batch_first=True)
        self.ln_q = nn.LayerNorm(dim, eps=1e-6)
        self.ln_kv = nn.LayerNorm(dim, eps=1e-6)
        self.ln_post = nn.LayerNorm(dim, eps=1e-6)

    def key_positions(self, tokens: int) -> torch.Tensor:
        side = math.isqrt(tokens)
        table = self.pos_embed.reshape(1, self.grid, self.grid, -1).permute(0, 3, 1, 2)
        table = F.interpolate(table, size=(side, side), mode="bicubic", align_corners=False)
        return table.permute(0, 2, 3, 1).reshape(side * side, -1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [n, tokens, dim] -> [n, grid², dim]
        x = self.ln_kv(x)
        q = (self.ln_q(self.query) + self.pos_embed).expand(x.shape[0], -1, -1)
        k = x + self.key_positions(x.shape[1]).to(x.dtype)
        return self.ln_post(self.attn(q, k, x, need_weights=False)[0])


class GatedProjector(nn.Module):
    """SliME's ``gated`` projector (builder.py ``GatedBlock`` L38-209) for the global view: a
    per-token soft mixture of ``mlp(x)`` and ``mlp(resampler(x))``. Upstream's noisy top-k with
    k = 2 of 2 experts reduces to a softmax over the two gate logits, ``x @ w_gate`` (zero-init:
    50/50), with noise of std softplus(x @ w_gate) + 0.01 in training (L148-152).
    ``learnable_gated`` 0 or 1 returns one expert (upstream's pre-alignment stages)."""

    def __init__(self, vision_hidden: int, llm_hidden: int, global_grid: int, learnable_gated: int = -1):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(vision_hidden, llm_hidden), nn.GELU(), nn.Linear(llm_hidden, llm_hidden)
        )
        self.resampler = Resampler(global_grid, vision_hidden)
        self.w_gate = nn.Parameter(torch.zeros(vision_hidden, 2))
        self.learnable_gated = learnable_gated

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [n, grid², vision] -> [n, grid², llm]
        experts = [self.mlp(x), self.mlp(self.resampler(x))]
        if self.learnable_gated >= 0:
            return experts[self.learnable_gated]
        logits = x @ self.w_gate
        if self.training:
            logits = logits + torch.randn_like(logits) * (F.softplus(logits) + 1e-2)
        gates = logits.softmax(-1)
        return experts[0] * gates[..., :1] + experts[1] * gates[..., 1:]


def router_scores(
    local: torch.Tensor, text: torch.Tensor, text_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Per local token: Σ over attended text tokens of cos(local, text) (``TextGuidedRouterCosine``
    L189-201). ``local``: [n, d]; ``text``: [t, d]; ``text_mask``: [t] bool."""
    sim = F.cosine_similarity(local.unsqueeze(1), text.unsqueeze(0), dim=-1)
    if text_mask is None:
        return sim.mean(-1)
    return sim.masked_fill(~text_mask.bool().unsqueeze(0), 0.0).sum(-1)


class SlimeEncoder(nn.Module):
    """Per image ``[1 + crops, 3, s, s]`` (global first) → ``[grid² + 1 + crops·q, llm]`` (global,
    separator, local tokens in spatial order) and the router's keep mask over those positions."""

    def __init__(
        self,
        vision: nn.Module,
        llm_hidden: int,
        separator_id: int,
        local_grid: int = LOCAL_GRID,
        top_p: float = TOP_P["finetune"],
        temperature: float = 1.0,
        learnable_gated: int = -1,
        router_text: str = "all",
        feature_layer: int = -2,
    ):
        super().__init__()
        cfg = vision.config
        self.vision = vision
        self.grid = cfg.image_size // cfg.patch_size
        self.local_grid = local_grid
        self.projector = GatedProjector(cfg.hidden_size, llm_hidden, self.grid, learnable_gated)
        self.sampler = Resampler(local_grid, cfg.hidden_size)  # sampler.post_qformer
        self.separator_id = int(separator_id)
        self.top_p, self.temperature, self.feature_layer = top_p, temperature, feature_layer
        self.router_text = router_text

    def route(self, local: torch.Tensor, text: torch.Tensor, text_mask: torch.Tensor | None) -> torch.Tensor:
        """Keep mask over ``local`` tokens (``TextGuidedSampler.forward`` L248-281)."""
        if self.top_p >= 1.0 or text.shape[0] == 0:
            return torch.ones(local.shape[0], dtype=torch.bool, device=local.device)
        scores = router_scores(local.detach().float(), text.detach().float(), text_mask)
        if self.training:
            scores = scores + torch.randn_like(scores) * 0.1  # builder.py L254-256
        keep = top_p_keep((scores / self.temperature).softmax(-1), self.top_p)
        mask = torch.zeros(local.shape[0], dtype=torch.bool, device=local.device)
        mask[keep] = True
        return mask

    def local_tokens(self, feats: torch.Tensor, cols: int, rows: int) -> torch.Tensor:
        if feats.shape[0] != cols * rows:
            raise ValueError(f"slime: {feats.shape[0]} local crops for a {cols}x{rows} grid")
        local = self.projector.mlp(self.sampler(feats))  # [crops, q², d]: non-576 inputs skip the gate
        g, d = self.local_grid, local.shape[-1]
        return local.reshape(rows, cols, g, g, d).permute(0, 2, 1, 3, 4).reshape(rows * g * cols * g, d)

    def forward(
        self, images: dict[str, torch.Tensor], ctx: Any
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        views, grids = images["pixel_values"], images["image_grids"]
        feats = self.vision(views, output_hidden_states=True).hidden_states[self.feature_layer][:, 1:]
        counts = [1 + int(c) * int(r) for c, r in grids.tolist()]
        out, keep = [], []
        for i, per_image in enumerate(feats.split(counts)):
            global_ = self.projector(per_image[:1])[0]
            sep = ctx.embed(torch.tensor([self.separator_id], device=views.device)).to(global_.dtype)
            local = self.local_tokens(per_image[1:], *grids[i].tolist())
            # upstream scores against every attended text token of the sample, a masked *sum*
            # (get_pure_text_embedding L162-210 gives the mask; the router's mask branch L193-197)
            text_mask = ctx.prompt[i] if self.router_text == "prompt" else torch.ones_like(ctx.prompt[i])
            kept = self.route(local, ctx.text[i], text_mask)
            out.append(torch.cat([global_, sep, local]))
            keep.append(
                torch.cat([torch.ones(global_.shape[0] + 1, dtype=torch.bool, device=kept.device), kept])
            )
        return out, keep


def slime_views(
    image: Image.Image, crop: int, grid_rule: Literal["pinpoints", "uhd"] = "pinpoints"
) -> tuple[list[Image.Image], tuple[int, int]]:
    """[global view, local crops row-major] and the ``(columns, rows)`` grid."""
    cols, rows = slime_grid(image.size, crop, grid_rule)
    local = divide_to_patches(resize_and_pad(image, (cols * crop, rows * crop)), crop)
    return [image.resize((crop, crop))] + local, (cols, rows)


class SlimeOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    grid_rule: Literal["pinpoints", "uhd"] = Field(
        "pinpoints",
        description="Local crop grid: `pinpoints` (SliME train.py's list: 2×2, 1×2, 2×1, 1×3, 3×1, 1×4, 4×1 "
        "crops) or `uhd` (what the released preprocessing actually runs: 2-7 crops by image area).",
    )
    local_grid: int = Field(
        LOCAL_GRID, ge=1, description="Resampler queries per side for each local crop (12 → 144)."
    )
    top_p: float = Field(
        TOP_P["finetune"],
        gt=0,
        le=1,
        description="Router mass of local tokens kept: 0.95 at fine-tune, 1.0 (keep all) at pre-alignment.",
    )
    temperature: float = Field(1.0, gt=0, description="Router softmax temperature (--mm_resampler_temp).")
    learnable_gated: int = Field(
        -1, ge=-1, le=1, description="Global projector: -1 gated mixture, 0 MLP only, 1 resampler only."
    )
    router_text: Literal["all", "prompt"] = Field(
        "all",
        description="Text the router compares with: `all` tokens of the sample (upstream, answers included) "
        "or only the `prompt` (unlearned) tokens.",
    )
    separator_token: str = Field(",", description="Token whose embedding separates global and local tokens.")


PROJECTOR = ("encoder.projector.*", "encoder.sampler.*")
LLM = LANGUAGE_MODEL


class SlimeStrategy(Strategy):
    name = "slime"
    Options = SlimeOptions
    # vicuna_7b_pt.sh trains projector + sampler (L1115-1122), vicuna_7b_sft.sh also the LLM
    trainable_presets = {"pretrain": PROJECTOR, "finetune": PROJECTOR + LLM}

    def arithmetic(self, width: int, height: int) -> SlimeTokens:
        vc = vision_config(self.cfg.vision, self)
        cols, rows = slime_grid((width, height), vc.image_size, self.options.grid_rule)
        return slime_token_count(vc.image_size // vc.patch_size, self.options.local_grid, cols * rows)

    def image_token_count(self, width: int, height: int, n_boxes: int = 0) -> int:
        """Positions before routing (576 + 1 + crops·144); routed-out tokens keep masked slots."""
        return self.arithmetic(width, height).total

    def preprocess(self, image: Image.Image, boxes: Any = None, question: str | None = None) -> dict:
        size = self.vision_image_size()
        views, (cols, rows) = slime_views(image.convert("RGB"), size, self.options.grid_rule)
        return {
            "pixel_values": torch.stack([clip_pixels(v, size) for v in views]),
            "image_grids": torch.tensor([cols, rows]),
        }

    def collate(self, items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """Views of all images concatenated (their count varies with the grid) + ``image_grids`` [b, 2]."""
        if not items:
            return {}
        return {
            "pixel_values": torch.cat([it["pixel_values"] for it in items]),
            "image_grids": torch.stack([it["image_grids"] for it in items]),
        }

    def separator_id(self, tokenizer: Any) -> int:
        # train.py L1092: tokenizer(',')['input_ids'][-1]
        ids = tokenizer(self.options.separator_token, add_special_tokens=False)["input_ids"]
        if not ids:
            raise ValueError(f"model.options.separator_token: {self.options.separator_token!r} has no tokens")
        return ids[-1]

    def build_model(self, tokenizer: Any) -> MultimodalLM:
        o = self.options
        vision, llm = build_towers(self, tokenizer)
        encoder = SlimeEncoder(
            vision,
            llm.get_input_embeddings().embedding_dim,
            self.separator_id(tokenizer),
            o.local_grid,
            o.top_p,
            o.temperature,
            o.learnable_gated,
            o.router_text,
            self.cfg.vision_feature_layer,
        )
        return MultimodalLM(encoder, llm, image_token_id(tokenizer))
