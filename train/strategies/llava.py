"""``llava``: LLaVA-1.5 single-resolution strategy, built as transformers' ``LlavaForConditionalGeneration``.

Faithful to haotian-liu/LLaVA (commit c121f04):

* one 336² view of CLIP ViT-L/14-336 -> (336/14)² = 24×24 = **576** visual tokens: the hidden states
  of the **penultimate** layer (``mm_vision_select_layer=-2``; ``clip_encoder.py:36``) with the **CLS
  token dropped** (``select_feature='patch'`` -> ``image_features[:, 1:]``; ``clip_encoder.py:37-38``);
* ``mlp2x_gelu`` projector: Linear(1024, d) -> GELU -> Linear(d, d)
  (``llava/model/multimodal_projector/builder.py:39-45``);
* ``image_aspect_ratio='pad'``: the image is padded to a square with the CLIP mean colour before
  the CLIP processor (``llava/mm_utils.py:152-171``; ``llava/train/train.py:702-715``).

transformers' ``LlavaConfig`` carries exactly these as ``vision_feature_layer=-2``,
``vision_feature_select_strategy="default"`` (drop CLS) and ``projector_hidden_act="gelu"``; its
projector is ``linear_1 -> act -> linear_2`` (mlp2x_gelu only). The saved checkpoint is a plain HF
folder: ``LlavaForConditionalGeneration.from_pretrained(path)`` loads it with no Loupe code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from loupe.train.strategies.base import (
    Strategy,
    build_llm,
    build_vision_tower,
    clip_pixels,
    image_token_id,
    llm_config,
    pad_to_square,
    vision_config,
)

PROJECTOR = ("model.multi_modal_projector.*",)
LLM = ("model.language_model.*", "lm_head.*")


class LlavaStrategy(Strategy):
    name = "llava"
    trainable_presets = {"pretrain": PROJECTOR, "finetune": PROJECTOR + LLM}

    def image_token_count(self, width: int, height: int, n_boxes: int = 0) -> int:
        """(image_size / patch_size)² whatever the input size (the image is padded/resized to a square)."""
        vc = vision_config(self.cfg.vision, self)
        return (vc.image_size // vc.patch_size) ** 2

    def preprocess(self, image, boxes: Any = None, question: str | None = None) -> dict:
        if self.cfg.image_aspect == "pad":
            image = pad_to_square(image.convert("RGB"))
        else:
            image = image.convert("RGB").resize((image.width, image.width))
        return {"pixel_values": clip_pixels(image, self.vision_image_size())}

    def _llava_config(self, tokenizer: Any):
        from transformers import LlavaConfig

        if self.cfg.projector != "mlp2x_gelu":
            raise ValueError(
                f"model.projector: the llava strategy is transformers' LlavaForConditionalGeneration, whose "
                f"projector is mlp2x_gelu; got {self.cfg.projector!r}"
            )
        vc = vision_config(self.cfg.vision, self)
        tc = llm_config(self.cfg.llm, len(tokenizer), self)
        if getattr(tc, "vocab_size", 0) < len(tokenizer):
            tc.vocab_size = len(tokenizer)
        tc.pad_token_id = tokenizer.pad_token_id
        return LlavaConfig(
            vision_config=vc,
            text_config=tc,
            image_token_index=image_token_id(tokenizer),
            image_seq_length=self.image_token_count(vc.image_size, vc.image_size),
            projector_hidden_act="gelu",
            vision_feature_layer=self.cfg.vision_feature_layer,
            vision_feature_select_strategy="default",
            pad_token_id=tokenizer.pad_token_id,
        )

    def build_model(self, tokenizer: Any):
        from transformers import LlavaForConditionalGeneration

        config = self._llava_config(tokenizer)
        model = LlavaForConditionalGeneration(config)
        # pretrained towers: copy their weights into the freshly initialised LLaVA shell
        if self.cfg.vision.path is not None:
            model.model.vision_tower.load_state_dict(build_vision_tower(self.cfg.vision, self).state_dict())
        if self.cfg.llm.path is not None:
            llm = build_llm(self.cfg.llm, len(tokenizer), self)
            model.model.language_model.load_state_dict(llm.model.state_dict())
            model.lm_head.load_state_dict(llm.lm_head.state_dict())
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        model.generation_config.eos_token_id = tokenizer.eos_token_id
        return model

    def load_model(self, path: str | Path):
        from transformers import LlavaForConditionalGeneration

        return LlavaForConditionalGeneration.from_pretrained(str(path))
