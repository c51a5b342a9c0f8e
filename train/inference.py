"""Load a ``loupe train`` output for inference: ``load_for_inference(path)`` -> model, tokenizer, strategy.

``eval/`` and scripts use this one entry point for every strategy. A ``llava`` output is also a plain
HF folder (``LlavaForConditionalGeneration.from_pretrained(path)`` works without Loupe); other
strategies are rebuilt from the ``loupe_train.yaml`` saved beside the weights.

    bundle = load_for_inference("runs/train/tiny_llava")
    inputs = bundle.inputs(image, "What is in the image?")
    out = bundle.model.generate(**inputs, max_new_tokens=32)
    print(bundle.decode(out, inputs))
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from loupe.train.trainer import CONFIG_FILE


@dataclass
class InferenceBundle:
    model: Any
    tokenizer: Any
    strategy: Any
    template: Any
    system: str | None = None

    def inputs(self, image: Any, question: str, boxes: Any = None) -> dict[str, Any]:
        """Batch of one: ``input_ids``, ``attention_mask`` and the strategy's image tensors."""
        import torch

        from loupe.train.templates import prompt_ids

        n = (
            self.strategy.image_token_count(*image.size, n_boxes=len(boxes) if boxes is not None else 0)
            if image
            else 0
        )
        ids = torch.tensor([prompt_ids(self.template, self.tokenizer, question, n, self.system)])
        batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        if image is not None:
            batch.update(
                self.strategy.collate([self.strategy.preprocess(image, boxes=boxes, question=question)])
            )
        device = next(self.model.parameters()).device
        return {k: v.to(device) for k, v in batch.items()}

    def decode(self, generated: Any, inputs: dict[str, Any]) -> str:
        """The newly generated text (the prompt cut off, special tokens dropped)."""
        return self.tokenizer.decode(
            generated[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True
        ).strip()


def load_for_inference(path: str | Path, template: str | None = None) -> InferenceBundle:
    """Model (eval mode), tokenizer, strategy and chat template of a training output folder."""
    from loupe.schemas.train import ModelConfig, TowerConfig
    from loupe.train.strategies import build_strategy
    from loupe.train.templates import load_template
    from loupe.train.tokenizer import load_tokenizer

    p = Path(path)
    meta_file = p / CONFIG_FILE
    if meta_file.exists():
        meta = yaml.safe_load(meta_file.read_text())
        cfg = meta["config"]
        mc = ModelConfig.model_validate(cfg["model"])
        mc.init_from = None
        strategy = build_strategy(mc, meta.get("config_dir", "."))
        template = template or meta.get("template", "llama3")
        system = cfg.get("data", {}).get("system")
    else:  # a plain HF LLaVA folder (e.g. llava-hf/llava-1.5-7b-hf): geometry from its config
        from transformers import AutoConfig

        hf = AutoConfig.from_pretrained(str(p))
        if hf.model_type != "llava":
            raise ValueError(
                f"{p}: no {CONFIG_FILE} and not a LLaVA checkpoint (model_type {hf.model_type!r})"
            )
        vc = hf.vision_config.to_dict()
        mc = ModelConfig(
            strategy="llava",
            vision=TowerConfig(config=vc),
            llm=TowerConfig(path=str(p)),
            vision_feature_layer=hf.vision_feature_layer,
        )
        strategy = build_strategy(mc)
        template = template or "vicuna_v1"
        system = None
    model = strategy.load_model(p).eval()
    return InferenceBundle(model, load_tokenizer(p), strategy, load_template(template), system)
