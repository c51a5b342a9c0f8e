"""MG-LLaVA: low-res CLIP tokens fused with a high-res ConvNeXt stream, plus one token per box.

Upstream: PhoenixZ810/MG-LLaVA (``mg_llava/config/vicuna/fuse_more_vicuna7b_clip_L_14_336_sft_padding.py``:
``MultiFuseObjectLLaVAModel``, CLIP-L/14-336 + OpenCLIP ConvNeXt-L (d-320) at
``image_size_aux = 768``, ``pad_image_to_square = True``, ``limit_num = 100``).

- Pixels (``mg_llava/module/mg_llava_dataset.py`` L76-90): pad to square with the mean colour,
  CLIP-normalise at 768 (the auxiliary input), and the 336 CLIP input is that tensor bilinearly
  resized (L86-89). Boxes follow the padding and the resize (L79, L152-154).
- Low-res: CLIP penultimate layer without CLS, 24×24 = 576 tokens
  (``mg_llava/module/fuse_model.py`` ``_prepare_data_for_llm`` L149-153).
- High-res: the ConvNeXt stages (``openclip_encoder.py`` ``basic_forward`` L231-237); the last
  stage at 768/32 = 24×24 (1536 ch) is fused into the CLIP tokens by ``DualPathFuseModule``
  (``fuse_model.py`` L629-671): a 1×1 conv path on the ConvNeXt map and a 7×7 depth-wise path
  on the CLIP map, both ending in a zero-initialised 1×1 projection, mixed by a learned
  tanh gate: ``low + fast(low) + tanh(g) · slow(high)`` — at init the output is exactly the CLIP
  features. Then the ``mlp2x_gelu`` projector (L179-180). The fusion keeps 576 tokens.
- Objects (``fuse_model.py`` ``align_box`` L209-260): RoIAlign on the ConvNeXt features at
  ``spatial_scale = map_size / 768``, mean-pooled to one vector per box, through a 2-layer MLP
  ``bbox_projector`` (L45-49, L75); the box tokens follow the image tokens
  (``box_model.py`` L115-123). The release's map is all four stages bilinearly resized to the
  stage-0 grid and concatenated (``openclip_encoder.py`` ``backbone`` L158-187, 2880 channels
  for ConvNeXt-L, ``box_feature_levels="all"``, the default here) and its RoIAlign output is
  56×56 (L214, ``box_feat_size`` unset); we use the issue's 7×7 (``roi_output_size``), the size
  ``BoxLLaVAModel`` uses (``box_model.py`` L254) — the mean of the pooled grid changes little.
- Box limits (``mg_llava_dataset.py`` L100-146, ``limit_mode='per_category'``): when an image has
  more than ``limit_num`` boxes keep the 20 best per label; we then also cap at ``per_image``.

Token count: 576 + number of boxes.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, field_validator
from torch import nn
from torchvision.ops import roi_align

from loupe.schemas.train import TowerConfig
from loupe.train.strategies.base import (
    CLIP_MEAN,
    CLIP_STD,
    Strategy,
    image_token_id,
    pad_to_square,
    vision_config,
)
from loupe.train.strategies.composite import LANGUAGE_MODEL, MultimodalLM, build_towers


def mg_llava_token_count(grid: int = 24, boxes: int = 0) -> int:
    """Golden (CLIP-L/14 at 336): 576 fused tokens + one token per box."""
    if boxes < 0:
        raise ValueError(f"mg_llava: negative box count {boxes}")
    return grid * grid + boxes


def limit_boxes(
    scores: Sequence[float], labels: Sequence[str], per_label: int = 20, per_image: int = 100
) -> list[int]:
    """Indices of the boxes kept, in their original order. Over ``per_image`` boxes: the
    ``per_label`` best of each label (mg_llava_dataset.py L109-135), then the ``per_image``
    best overall."""
    n = len(scores)
    if len(labels) != n:
        raise ValueError(f"mg_llava: {n} box scores but {len(labels)} labels")
    keep = list(range(n))
    if n <= per_image:
        return keep
    by_label: dict[str, list[int]] = {}
    for i in keep:
        by_label.setdefault(labels[i], []).append(i)
    keep = sorted(i for idx in by_label.values() for i in sorted(idx, key=lambda j: -scores[j])[:per_label])
    if len(keep) > per_image:
        keep = sorted(sorted(keep, key=lambda j: -scores[j])[:per_image])
    return keep


def boxes_to_aux(boxes: torch.Tensor, image_size: tuple[int, int], aux_size: int) -> torch.Tensor:
    """Pixel xyxy boxes of the original image → xyxy on the padded square resized to
    ``aux_size`` (``adjust_padding_boxes`` then the resize, mg_llava_dataset.py L79, L153)."""
    w, h = image_size
    side = max(w, h)
    offset = torch.tensor([(side - w) // 2, (side - h) // 2] * 2, dtype=torch.float32)
    out = (boxes.float().reshape(-1, 4) + offset) * (aux_size / side)
    return out.clamp(0, aux_size)


def mg_llava_pixels(
    image: Image.Image, mean: Sequence[float], std: Sequence[float], aux_size: int, low_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(CLIP input ``[3, low, low]``, ConvNeXt input ``[3, aux, aux]``): pad to square with the
    mean colour, resize to ``aux_size``, normalise; the low-res input is the normalised aux
    tensor bilinearly resized (mg_llava_dataset.py L76-90)."""
    square = pad_to_square(image.convert("RGB"), tuple(mean))
    x = torch.from_numpy(np.array(square.resize((aux_size, aux_size), Image.BICUBIC))).float()
    x = (x.permute(2, 0, 1) / 255.0 - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)
    low = F.interpolate(x[None], size=(low_size, low_size), mode="bilinear", align_corners=False)[0]
    return low, x


class DualPathFuse(nn.Module):
    """``DualPathFuseModule`` (fuse_model.py L629-671), zero-initialised projections."""

    def __init__(self, low_dim: int, high_dim: int, zero_init: bool = True):
        super().__init__()
        self.slow_conv = nn.Conv2d(high_dim, high_dim, 1)
        self.slow_proj = nn.Conv2d(high_dim, low_dim, 1)
        self.fast_conv = nn.Conv2d(low_dim, low_dim, 7, padding=3, groups=low_dim)
        self.fast_proj = nn.Conv2d(low_dim, low_dim, 1)
        self.gate = nn.Sequential(
            nn.Linear(low_dim * 2, max(1, low_dim // 2)), nn.GELU(), nn.Linear(max(1, low_dim // 2), 1)
        )
        for conv in (self.slow_conv, self.fast_conv):
            nn.init.xavier_uniform_(conv.weight)
            nn.init.zeros_(conv.bias)
        for proj in (self.slow_proj, self.fast_proj):
            (nn.init.zeros_ if zero_init else nn.init.xavier_uniform_)(proj.weight)
            nn.init.zeros_(proj.bias)

    def forward(self, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
        """``low``: [b, n, d] CLIP tokens; ``high``: [b, c, s, s] with s² = n."""
        b, n, d = low.shape
        side = high.shape[-1]
        if side * side != n:
            raise ValueError(f"mg_llava: high-res map {side}x{side} does not match {n} low-res tokens")
        high = self.slow_proj(F.gelu(self.slow_conv(high))).reshape(b, d, n).transpose(1, 2)
        grid = low.transpose(1, 2).reshape(b, d, side, side)
        low = (grid + self.fast_proj(F.gelu(self.fast_conv(grid)))).reshape(b, d, n).transpose(1, 2)
        gate = self.gate(torch.cat([low, high], -1).mean(1)).unsqueeze(1)
        return low + high * gate.tanh()


class OpenCLIPConvNeXt(nn.Module):
    """The stem and stages of an OpenCLIP ConvNeXt (MG-LLaVA's ``OpenCLIPVisionTower``,
    ``openclip_encoder.py`` L44-73, L231-237) from a folder holding ``open_clip_config.json`` and
    ``open_clip_pytorch_model.bin`` (e.g. laion/CLIP-convnext_large_d_320.laion2B-s29B-b131K-ft-soup),
    with the interface of transformers' ``ConvNextModel`` used here: ``config.hidden_sizes``,
    ``config.patch_size`` and ``forward(x, output_hidden_states=True).hidden_states``."""

    def __init__(self, folder: str):
        import open_clip

        super().__init__()
        root = Path(folder)
        cfg = json.loads((root / "open_clip_config.json").read_text())["model_cfg"]
        model = open_clip.CLIP(**cfg)
        weights = root / "open_clip_pytorch_model.bin"
        state = torch.load(weights, map_location="cpu", weights_only=True)
        prefix = "visual.trunk."
        trunk = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        missing = model.visual.trunk.load_state_dict(trunk, strict=False).missing_keys
        lost = [k for k in missing if k.startswith(("stem.", "stages."))]
        if lost:
            raise ValueError(f"model.options.aux.path: {weights} lacks ConvNeXt weights, e.g. {lost[0]}")
        self.stem, self.stages = model.visual.trunk.stem, model.visual.trunk.stages
        widths = [st.blocks[-1].conv_dw.out_channels for st in self.stages]
        self.config = SimpleNamespace(hidden_sizes=widths, patch_size=self.stem[0].stride[0])

    def forward(self, x: torch.Tensor, output_hidden_states: bool = True) -> Any:
        outs = [self.stem(x)]
        for stage in self.stages:
            outs.append(stage(outs[-1]))
        return SimpleNamespace(hidden_states=tuple(outs), last_hidden_state=outs[-1])


def mlp2x_gelu(in_dim: int, out_dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_dim, out_dim), nn.GELU(), nn.Linear(out_dim, out_dim))


class MGLlavaEncoder(nn.Module):
    """CLIP + ConvNeXt (both frozen upstream) + fusion + projectors → one ``[576 + boxes, llm]``
    tensor per image."""

    def __init__(
        self,
        vision: nn.Module,
        aux: nn.Module,
        llm_hidden: int,
        aux_size: int = 768,
        roi_output_size: int = 7,
        box_feature_levels: str = "all",
        feature_layer: int = -2,
    ):
        super().__init__()
        cfg, acfg = vision.config, aux.config
        self.vision, self.aux = vision, aux
        self.grid = cfg.image_size // cfg.patch_size
        stride = acfg.patch_size * 2 ** (len(acfg.hidden_sizes) - 1)
        if aux_size // stride != self.grid:
            raise ValueError(
                f"model.options.aux_size: {aux_size} / ConvNeXt stride {stride} = {aux_size // stride}, "
                f"but the CLIP grid is {self.grid}; they must match (768/32 = 336/14 = 24 upstream)"
            )
        if box_feature_levels not in ("all", "last"):
            raise ValueError(
                f"model.options.box_feature_levels: {box_feature_levels!r}: expected 'all' or 'last'"
            )
        self.aux_size, self.roi_output_size, self.levels, self.feature_layer = (
            aux_size,
            roi_output_size,
            box_feature_levels,
            feature_layer,
        )
        box_dim = sum(acfg.hidden_sizes) if box_feature_levels == "all" else acfg.hidden_sizes[-1]
        self.fuse = DualPathFuse(cfg.hidden_size, acfg.hidden_sizes[-1])
        self.projector = mlp2x_gelu(cfg.hidden_size, llm_hidden)
        self.bbox_projector = mlp2x_gelu(box_dim, llm_hidden)

    def box_map(self, stages: Sequence[torch.Tensor]) -> torch.Tensor:
        if self.levels == "last":
            return stages[-1]
        size = stages[0].shape[-2:]
        ups = [stages[0]] + [
            F.interpolate(s.float(), size=size, mode="bilinear", align_corners=False).to(s.dtype)
            for s in stages[1:]
        ]
        return torch.cat(ups, dim=1)

    def forward(self, images: dict[str, torch.Tensor], ctx: Any = None) -> tuple[list[torch.Tensor], None]:
        counts = (
            images["box_counts"].tolist() if "box_counts" in images else [0] * images["pixel_values"].shape[0]
        )
        boxes = images["boxes"].split(counts) if "boxes" in images else [torch.zeros(0, 4)] * len(counts)
        return self.encode(images["pixel_values"], images["pixel_values_aux"], boxes), None

    def encode(
        self, low: torch.Tensor, aux: torch.Tensor, boxes: Sequence[torch.Tensor]
    ) -> list[torch.Tensor]:
        feats = self.vision(low, output_hidden_states=True).hidden_states[self.feature_layer][:, 1:]
        stages = self.aux(aux, output_hidden_states=True).hidden_states[1:]
        tokens = self.projector(self.fuse(feats, stages[-1]))
        fmap = self.box_map(stages)
        out = []
        for i, b in enumerate(boxes):
            if b.numel() == 0:
                out.append(tokens[i])
                continue
            roi = roi_align(
                fmap[i : i + 1].float(),  # in float32, as upstream (fuse_model.py L177, L243-248)
                [b.float().to(fmap.device)],
                output_size=self.roi_output_size,
                spatial_scale=fmap.shape[-1] / self.aux_size,
            )
            pooled = roi.mean(dim=(2, 3)).to(self.bbox_projector[0].weight.dtype)
            out.append(torch.cat([tokens[i], self.bbox_projector(pooled).to(tokens.dtype)], dim=0))
        return out


class MGLlavaOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    aux: TowerConfig = Field(
        description="High-res ConvNeXt tower (required): {path: <OpenCLIP folder (open_clip_config.json + "
        "open_clip_pytorch_model.bin), as the release, or a transformers ConvNext checkpoint>} or "
        "{config: {ConvNextConfig kwargs}} (random init). Its last stage must give the CLIP grid "
        "(aux_size / 32 = 24 for CLIP-L/14-336)."
    )

    @field_validator("aux")
    @classmethod
    def _one_source(cls, v: TowerConfig) -> TowerConfig:
        if (v.path is None) == (v.config is None):
            raise ValueError("give exactly one of path (pretrained) or config (random init)")
        return v

    aux_size: int = Field(768, ge=32, description="Input side of the ConvNeXt stream (image_size_aux).")
    roi_output_size: int = Field(7, ge=1, description="RoIAlign output side before mean pooling.")
    box_feature_levels: Literal["all", "last"] = Field(
        "all",
        description="Box features from all ConvNeXt stages at stage-0 resolution (release) or the last.",
    )
    max_boxes: int = Field(100, ge=0, description="Boxes per image, the first N as given (limit_num).")


PROJECTORS = ("encoder.projector.*", "encoder.bbox_projector.*", "encoder.fuse.*")
LLM = LANGUAGE_MODEL


class MGLlavaStrategy(Strategy):
    name = "mg_llava"
    Options = MGLlavaOptions
    # pretrain config: freeze_llm=True, both vision towers frozen; sft: freeze_llm=False
    trainable_presets = {"pretrain": PROJECTORS, "finetune": PROJECTORS + LLM}

    def image_token_count(self, width: int, height: int, n_boxes: int = 0) -> int:
        vc = vision_config(self.cfg.vision, self)
        return mg_llava_token_count(vc.image_size // vc.patch_size, min(n_boxes, self.options.max_boxes))

    def preprocess(self, image: Image.Image, boxes: Any = None, question: str | None = None) -> dict:
        low, aux = mg_llava_pixels(
            image, CLIP_MEAN, CLIP_STD, self.options.aux_size, self.vision_image_size()
        )
        b = (
            torch.zeros(0, 4)
            if boxes is None
            else torch.as_tensor(np.asarray(boxes, dtype=np.float32)).reshape(-1, 4)
        )
        b = boxes_to_aux(b[: self.options.max_boxes], image.size, self.options.aux_size)
        return {"pixel_values": low, "pixel_values_aux": aux, "boxes": b}

    def collate(self, items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """Pixels stacked; boxes of all images concatenated with ``box_counts`` [b]."""
        if not items:
            return {}
        return {
            "pixel_values": torch.stack([it["pixel_values"] for it in items]),
            "pixel_values_aux": torch.stack([it["pixel_values_aux"] for it in items]),
            "boxes": torch.cat([it["boxes"] for it in items]),
            "box_counts": torch.tensor([it["boxes"].shape[0] for it in items]),
        }

    def build_aux(self) -> nn.Module:
        from transformers import ConvNextConfig, ConvNextModel

        aux = self.options.aux
        if aux.config is not None:
            return ConvNextModel(ConvNextConfig(**aux.config))
        path = self.resolve(aux.path)
        if (Path(path) / "open_clip_config.json").exists():  # the release's OpenCLIP ConvNeXt
            return OpenCLIPConvNeXt(path)
        return ConvNextModel.from_pretrained(path)

    def build_model(self, tokenizer: Any) -> MultimodalLM:
        o = self.options
        vision, llm = build_towers(self, tokenizer)
        encoder = MGLlavaEncoder(
            vision,
            self.build_aux(),
            llm.get_input_embeddings().embedding_dim,
            o.aux_size,
            o.roi_output_size,
            o.box_feature_levels,
            self.cfg.vision_feature_layer,
        )
        return MultimodalLM(encoder, llm, image_token_id(tokenizer))
