"""The model shell shared by the multi-view strategies (s2, dragonfly, slime, mg_llava).

``MultimodalLM`` = a strategy's vision ``encoder`` + a causal ``language_model``. ``forward`` embeds
the tokens, asks the encoder for one ``[positions, hidden]`` tensor per image (separators and
newlines included, so it matches ``Strategy.image_token_count``), scatters them over the
``<image>`` placeholders (``base.scatter_image_features``) and calls the language model with
``inputs_embeds``. An encoder may also return, per image, a boolean mask of the positions that
stay (SliME's router): dropped ones leave attention and the positions after them are compacted,
which is what the shorter upstream sequence computes.

Parameter names: ``encoder.*`` (``encoder.vision.*`` is the CLIP tower) and ``language_model.*``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from loupe.train.strategies.base import build_llm, build_vision_tower, scatter_image_features

LANGUAGE_MODEL = ("language_model.*",)  # parameter patterns of the LLM, trained at fine-tune


def build_towers(strategy: Any, tokenizer: Any) -> tuple[nn.Module, nn.Module]:
    """(CLIP vision tower, causal LM sized to the tokenizer) of ``strategy.cfg``."""
    return build_vision_tower(strategy.cfg.vision, strategy), build_llm(
        strategy.cfg.llm, len(tokenizer), strategy
    )


@dataclass
class ImageContext:
    """What an encoder may read besides pixels, one entry per image, in image order."""

    text: list[torch.Tensor]  # [t, hidden] embeddings of the text tokens of the sample holding the image
    prompt: list[torch.Tensor]  # [t] bool: tokens that are not learned (labels == -100), all when no labels
    embed: nn.Module  # the LLM's input embedding table (newline / separator tokens)


class MultimodalLM(nn.Module):
    """``forward(input_ids, attention_mask, labels, **images)`` → the language model's output."""

    def __init__(self, encoder: nn.Module, language_model: nn.Module, image_token_id: int):
        super().__init__()
        self.encoder = encoder
        self.language_model = language_model
        self.image_token_id = int(image_token_id)

    def gradient_checkpointing_enable(self, **kwargs: Any) -> None:
        self.language_model.gradient_checkpointing_enable(**kwargs)

    def context(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        labels: torch.Tensor | None,
        embeds: torch.Tensor,
    ) -> ImageContext:
        is_image = input_ids == self.image_token_id
        text, prompt = [], []
        for b in range(input_ids.shape[0]):
            n_images = int(is_image[b].any())  # one image per sample in Loupe's data
            keep = attention_mask[b].bool() & ~is_image[b]
            learned = labels[b][keep] != -100 if labels is not None else torch.zeros_like(keep[keep])
            for _ in range(n_images):
                text.append(embeds[b][keep])
                prompt.append(~learned)
        return ImageContext(text=text, prompt=prompt, embed=self.language_model.get_input_embeddings())

    def embed_inputs(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **images: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(inputs_embeds with the images in, attention mask, position ids or None)."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        embeds = self.language_model.get_input_embeddings()(input_ids)
        position_ids = None
        if images:
            ctx = self.context(input_ids, attention_mask, labels, embeds)
            feats, keep = self.encoder(images, ctx)
            embeds = scatter_image_features(embeds, input_ids, self.image_token_id, torch.cat(feats))
            if keep is not None:
                slots = input_ids == self.image_token_id
                attention_mask = attention_mask.masked_scatter(
                    slots, torch.cat(keep).to(attention_mask.dtype)
                )
                position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        return embeds, attention_mask, position_ids

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **images: torch.Tensor,
    ):
        embeds, attention_mask, position_ids = self.embed_inputs(input_ids, attention_mask, labels, **images)
        return self.language_model(
            inputs_embeds=embeds, attention_mask=attention_mask, position_ids=position_ids, labels=labels
        )

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs: Any):
        """The language model's ``generate`` on the prompt with its images (tensor keyword arguments are
        the strategy's collate output; the rest go to ``generate``). Returns prompt + new tokens, as
        transformers does for ``input_ids`` (``load_for_inference``'s ``decode`` cuts the prompt).
        Routed-out slots stay masked; ``generate`` derives positions from the mask's cumulative sum."""
        images = {k: kwargs.pop(k) for k in list(kwargs) if isinstance(kwargs[k], torch.Tensor)}
        embeds, attention_mask, _ = self.embed_inputs(input_ids, attention_mask, None, **images)
        new = self.language_model.generate(inputs_embeds=embeds, attention_mask=attention_mask, **kwargs)
        return torch.cat([input_ids, new.to(input_ids.device)], dim=1)
