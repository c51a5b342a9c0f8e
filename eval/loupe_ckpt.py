"""``loupe train`` checkpoints of any strategy, through the strategy contract (train/strategies/base.py).

A checkpoint folder holds the model (``save_pretrained`` or ``model.safetensors``), its tokenizer and
``loupe_train.yaml`` (the training config: ``config.model`` and the chat ``template``). Images go
through the strategy's own ``preprocess`` / ``collate`` (the llava strategy pads to a square, as
LLaVA-1.5); each ``<image>`` of the prompt becomes ``image_token_count(w, h)`` image tokens, as the
training data pipeline expands it. Prompts use the template the model was trained with
(``vicuna_v1`` or ``llama3``, with the tokenizer's BOS as in ``train/templates/*.yaml``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from loupe.eval.model import CHAT_FORMATS, IMAGE, TokenVLM, default_device
from loupe.pipeline.errors import LoupeError

CONFIG_FILE = "loupe_train.yaml"


def is_loupe_checkpoint(path: Path) -> bool:
    return (path / CONFIG_FILE).is_file()


class StrategyVLM(TokenVLM):
    """A ``loupe train`` output folder as a :class:`~loupe.eval.model.VLM`."""

    def __init__(self, path: str | Path, chat_format: str | None = None, device: str | None = None):
        import yaml

        from loupe.schemas.train import ModelConfig
        from loupe.train.strategies import build_strategy
        from loupe.train.tokenizer import load_tokenizer

        path = Path(path)
        try:
            meta = yaml.safe_load((path / CONFIG_FILE).read_text()) or {}
            model_cfg = ModelConfig.model_validate(meta["config"]["model"])
        except Exception as e:  # a damaged or foreign yaml: one line naming the file
            raise LoupeError(
                f"--model: {path / CONFIG_FILE} is not a loupe train config ({e})".splitlines()[0]
            ) from None
        template = meta.get("template") or (meta["config"].get("data") or {}).get("template") or "vicuna_v1"
        self.chat_format = chat_format or (template if template in CHAT_FORMATS else "vicuna_v1")
        if self.chat_format not in CHAT_FORMATS:
            raise LoupeError(
                f"chat_format: {self.chat_format!r} is not known; valid: {', '.join(CHAT_FORMATS)}"
            )
        try:
            self.strategy = build_strategy(model_cfg, meta.get("config_dir") or path)
            self.tokenizer = load_tokenizer(path)
            model = self.strategy.load_model(path)
        except (ValueError, OSError) as e:
            raise LoupeError(
                f"--model: cannot load the {model_cfg.strategy} checkpoint {path}: {e}".splitlines()[0]
            ) from None
        self.device = default_device(device)
        self.model = model.to(self.device).eval()
        self.name = path.name

    def _encode(self, texts: list[str], images: list[Any], padding_side: str) -> dict:
        it = iter(images)
        expanded = []
        for text in texts:
            parts = text.split(IMAGE)
            out = parts[0]
            for p in parts[1:]:
                im = next(it)
                out += IMAGE * self.strategy.image_token_count(im.width, im.height) + p
            bos = (
                self.tokenizer.bos_token
                if self.chat_format == "vicuna_v1" and self.tokenizer.bos_token
                else ""
            )
            expanded.append(bos + out)
        self.tokenizer.padding_side = padding_side
        enc = dict(self.tokenizer(expanded, add_special_tokens=False, padding=True, return_tensors="pt"))
        if images:
            enc.update(self.strategy.collate([self.strategy.preprocess(im) for im in images]))
        return enc
