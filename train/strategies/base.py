"""The vision-strategy contract: how an image becomes LLM input positions, and the model that fills them.

A strategy is one file under ``train/strategies/`` with one subclass of :class:`Strategy`, listed in
``train/strategies/__init__.py``'s ``REGISTRY``. The trainer, the data pipeline and ``eval/`` know
only this interface:

``name`` (class attribute)
    The config value ``model.strategy`` that selects it (``llava``, ``s2``, ``dragonfly``, ...).
``Options`` (class attribute, a pydantic model, ``extra="forbid"``)
    The strategy's own knobs, validated from ``model.options`` (errors name ``model.options.<field>``).
``trainable_presets`` (class attribute)
    ``{"pretrain": (...), "finetune": (...)}``: parameter-name glob patterns (``fnmatch`` on
    ``model.named_parameters()`` names) trained at each stage; everything else is frozen.
``__init__(self, model_cfg: ModelConfig, base_dir: Path)``
    Keep the config; load no weights here (the data pipeline builds strategies in worker processes).
``image_token_count(width, height, n_boxes=0) -> int``
    PURE token arithmetic: the number of LLM positions one image of that original size occupies
    (including any separators/newline embeddings). The data pipeline expands the single image
    placeholder of a sample to exactly this many ``image_token_id`` tokens and never truncates them.
    The model must produce exactly this many embeddings for that image (checked at run time).
``preprocess(image, boxes=None, question=None) -> dict[str, Tensor]``
    One RGB PIL image (original size) -> tensors WITHOUT a batch dimension, e.g.
    ``{"pixel_values": (3, 336, 336)}``. ``boxes``: ``(N, 4)`` float pixel ``x1, y1, x2, y2`` in the
    original image (from the run's ``detect`` table; only passed when ``data.boxes`` is on);
    ``question``: the first human turn's text (for text-guided zoom/routing). Runs in DataLoader workers.
``collate(items: list[dict]) -> dict[str, Tensor]``
    Batch the ``preprocess`` outputs of the samples that HAVE an image, in sample order (text-only
    samples contribute no item; an all-text batch calls nothing and passes no image keys). Default:
    ``torch.stack`` per key; override for ragged inputs (variable crops, boxes).
``build_model(tokenizer) -> torch.nn.Module``
    A freshly initialised model (pretrained towers loaded from ``model.vision.path`` / ``model.llm.path``,
    or random from ``.config``). Its ``forward(input_ids, attention_mask, labels, **collate_output)``
    returns an object with ``.loss`` and ``.logits``; positions where ``input_ids == image_token_id``
    (see :func:`image_token_id`) are replaced by the image embeddings, image after image, in order
    (use :func:`scatter_image_features`). Prefer a ``transformers.PreTrainedModel`` so the Trainer saves
    ``save_pretrained`` folders; a plain ``nn.Module`` is saved as ``model.safetensors`` state dict.
``load_model(path) -> torch.nn.Module``
    The model saved in a checkpoint folder (default: ``build_model`` then load ``model.safetensors``).

The trainer calls ``model.config.use_cache = False`` when it exists, resizes nothing (the tokenizer's
size is fixed before ``build_model``), and freezes by the presets. Shared building blocks for
strategies live below: tower/LLM builders, the LLaVA projector, pad-to-square, CLIP normalisation.
"""

from __future__ import annotations

import fnmatch
import re
from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:
    import torch
    from PIL import Image

    from loupe.schemas.train import ModelConfig, TowerConfig

IMAGE_TOKEN = "<image>"
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # OpenAI CLIP image_mean (CLIPImageProcessor default)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class NoOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Strategy(ABC):
    """Base class of a vision strategy; see the module docstring for the contract."""

    name: ClassVar[str]
    Options: ClassVar[type[BaseModel]] = NoOptions
    trainable_presets: ClassVar[dict[str, tuple[str, ...]]] = {}

    def __init__(self, model_cfg: ModelConfig, base_dir: Path | str = "."):
        self.cfg = model_cfg
        self.base_dir = Path(base_dir)
        self.options = self.Options.model_validate(model_cfg.options)

    # -- token arithmetic -------------------------------------------------------------------
    @abstractmethod
    def image_token_count(self, width: int, height: int, n_boxes: int = 0) -> int: ...

    # -- data -------------------------------------------------------------------------------
    @abstractmethod
    def preprocess(
        self, image: Image.Image, boxes: Any = None, question: str | None = None
    ) -> dict[str, torch.Tensor]: ...

    def collate(self, items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        import torch

        return {k: torch.stack([it[k] for it in items]) for k in items[0]} if items else {}

    # -- model ------------------------------------------------------------------------------
    @abstractmethod
    def build_model(self, tokenizer: Any) -> torch.nn.Module: ...

    def load_model(self, path: str | Path) -> torch.nn.Module:
        from safetensors.torch import load_file

        from loupe.train.tokenizer import load_tokenizer

        model = self.build_model(load_tokenizer(path))
        model.load_state_dict(load_file(str(Path(path) / "model.safetensors")), strict=True)
        return model

    # -- helpers ----------------------------------------------------------------------------
    def resolve(self, p: str) -> str:
        """A config path relative to the config file; hub ids (not existing locally) pass through."""
        q = Path(p).expanduser()
        if not q.is_absolute():
            q = self.base_dir / q
        return str(q) if q.exists() else p

    def vision_image_size(self) -> int:
        return int(vision_config(self.cfg.vision, self).image_size)


def image_token_id(tokenizer: Any) -> int:
    """Id of the ``<image>`` placeholder token (added as a special token by ``loupe.train.tokenizer``)."""
    tid = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    if tid is None or tid == tokenizer.unk_token_id:
        raise ValueError(f"the tokenizer has no {IMAGE_TOKEN!r} token; load it with loupe.train.tokenizer")
    return int(tid)


def trainable_names(
    names: list[str], trainable: list[str] | tuple[str, ...], frozen: list[str] = ()
) -> set[str]:
    """Parameter names matched by any ``trainable`` glob and by no ``frozen`` glob."""
    return {
        n
        for n in names
        if any(fnmatch.fnmatchcase(n, p) for p in trainable)
        and not any(fnmatch.fnmatchcase(n, p) for p in frozen)
    }


# ---------------------------------------------------------------------------------- builders
def vision_config(tower: TowerConfig, strategy: Strategy | None = None):
    """CLIPVisionConfig of a tower: read from ``path`` (a CLIP or CLIPVision checkpoint) or built from ``config``."""
    from transformers import AutoConfig, CLIPVisionConfig

    if tower.config is not None:
        return CLIPVisionConfig(**tower.config)
    path = strategy.resolve(tower.path) if strategy else tower.path
    cfg = AutoConfig.from_pretrained(path)
    return getattr(cfg, "vision_config", cfg)


def build_vision_tower(tower: TowerConfig, strategy: Strategy | None = None):
    """A ``CLIPVisionModel``: pretrained from ``path`` or random from ``config``."""
    from transformers import CLIPVisionModel

    if tower.config is not None:
        return CLIPVisionModel(vision_config(tower))
    return CLIPVisionModel.from_pretrained(strategy.resolve(tower.path) if strategy else tower.path)


def llm_config(tower: TowerConfig, vocab_size: int, strategy: Strategy | None = None):
    """The LLM's config; random-init configs get the tokenizer's vocabulary size."""
    from transformers import AutoConfig

    if tower.config is not None:
        kw = dict(tower.config)
        kw.setdefault("vocab_size", vocab_size)
        return AutoConfig.for_model(kw.pop("model_type", "llama"), **kw)
    return AutoConfig.from_pretrained(strategy.resolve(tower.path) if strategy else tower.path)


def build_llm(tower: TowerConfig, vocab_size: int, strategy: Strategy | None = None):
    """A causal LM (``AutoModelForCausalLM``): pretrained from ``path`` or random from ``config``;
    its embeddings are resized to the tokenizer when the tokenizer added tokens (``<image>``, pad)."""
    from transformers import AutoModelForCausalLM

    if tower.config is not None:
        model = AutoModelForCausalLM.from_config(llm_config(tower, vocab_size))
    else:
        model = AutoModelForCausalLM.from_pretrained(strategy.resolve(tower.path) if strategy else tower.path)
    if model.get_input_embeddings().num_embeddings < vocab_size:
        model.resize_token_embeddings(vocab_size)
    return model


def build_projector(kind: str, in_dim: int, out_dim: int):
    """LLaVA's projector builder (haotian-liu/LLaVA llava/model/multimodal_projector/builder.py:33-52):
    ``linear`` or ``mlp<N>x_gelu`` = Linear(in, out) followed by N-1 × (GELU, Linear(out, out))."""
    from torch import nn

    if kind == "linear":
        return nn.Linear(in_dim, out_dim)
    m = re.match(r"^mlp(\d+)x_gelu$", kind)
    if not m:
        raise ValueError(f"model.projector: {kind!r} is not a projector; valid: linear, mlp<N>x_gelu")
    layers: list[nn.Module] = [nn.Linear(in_dim, out_dim)]
    for _ in range(1, int(m.group(1))):
        layers += [nn.GELU(), nn.Linear(out_dim, out_dim)]
    return nn.Sequential(*layers)


# ------------------------------------------------------------------------------ image helpers
def pad_to_square(image: Image.Image, mean: tuple[float, ...] = CLIP_MEAN) -> Image.Image:
    """LLaVA's ``expand2square`` (haotian-liu/LLaVA llava/mm_utils.py:152-164, called with
    ``tuple(int(x*255) for x in image_processor.image_mean)`` at line 171): pad the short side
    symmetrically (floor offset) with the mean colour."""
    from PIL import Image as PILImage

    w, h = image.size
    if w == h:
        return image
    colour = tuple(int(x * 255) for x in mean)
    side = max(w, h)
    out = PILImage.new(image.mode, (side, side), colour)
    out.paste(image, ((side - w) // 2, (side - h) // 2))
    return out


def clip_pixels(image: Image.Image, size: int, mean=CLIP_MEAN, std=CLIP_STD) -> torch.Tensor:
    """CLIPImageProcessor's transform for a square input: bicubic resize of the short side to ``size``,
    centre crop ``size``², scale to [0, 1], normalise -> float tensor (3, size, size)."""
    import numpy as np
    import torch
    from PIL import Image as PILImage

    w, h = image.size
    s = size / min(w, h)
    nw, nh = max(size, round(w * s)), max(size, round(h * s))
    im = image.convert("RGB").resize((nw, nh), PILImage.BICUBIC)
    left, top = (nw - size) // 2, (nh - size) // 2
    im = im.crop((left, top, left + size, top + size))
    x = torch.from_numpy(np.asarray(im, dtype=np.float32) / 255.0).permute(2, 0, 1)
    return (x - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)


def scatter_image_features(
    inputs_embeds: torch.Tensor, input_ids: torch.Tensor, image_token_id: int, features: torch.Tensor
) -> torch.Tensor:
    """Replace the ``image_token_id`` positions of ``inputs_embeds`` (B, T, D) by ``features`` (N, D),
    row-major (sample after sample, image after image). The counts must match exactly."""
    mask = input_ids == image_token_id
    n = int(mask.sum())
    if n != features.shape[0]:
        raise ValueError(
            f"image tokens and image features differ: {n} placeholder tokens, {features.shape[0]} features"
        )
    return inputs_embeds.masked_scatter(mask.unsqueeze(-1), features.to(inputs_embeds.dtype))
