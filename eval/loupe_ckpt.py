"""``loupe train`` checkpoints of any strategy, through the strategy contract (train/strategies/base.py).

A checkpoint folder holds the model (``save_pretrained`` or ``model.safetensors``), its tokenizer and
``loupe_train.yaml`` (the training config: ``config.model`` and the chat ``template``); train's
``load_for_inference`` rebuilds model, tokenizer, strategy and template from it. Images go
through the strategy's own ``preprocess`` / ``collate`` (the llava strategy pads to a square, as
LLaVA-1.5); each ``<image>`` of the prompt becomes ``image_token_count(w, h)`` image tokens, as the
training data pipeline expands it. Prompts use the template the model was trained with
(``vicuna_v1`` or ``llama3``, with the tokenizer's BOS as in ``train/templates/*.yaml``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from loupe.eval.model import CHAT_FORMATS, IMAGE, TokenVLM, default_device
from loupe.schemas.errors import LoupeError

CONFIG_FILE = "loupe_train.yaml"  # loupe.train.trainer.CONFIG_FILE (not imported: trainer pulls torch)


def is_loupe_checkpoint(path: Path) -> bool:
    return (path / CONFIG_FILE).is_file()


class StrategyVLM(TokenVLM):
    """A ``loupe train`` output folder as a :class:`~loupe.eval.model.VLM`, loaded by
    ``loupe.train.inference.load_for_inference`` (model, tokenizer, strategy, template, system)."""

    def __init__(self, path: str | Path, chat_format: str | None = None, device: str | None = None):
        from loupe.train.inference import load_for_inference

        path = Path(path)
        try:
            bundle = load_for_inference(path)
        except Exception as e:  # a damaged yaml, an unknown strategy, missing weights: one line naming it
            msg = f"{type(e).__name__}: {e}".splitlines()[0]
            raise LoupeError(f"--model: cannot load the loupe train checkpoint {path} ({msg})") from None
        self.strategy, self.tokenizer, self.system = bundle.strategy, bundle.tokenizer, bundle.system
        name = getattr(bundle.template, "name", "vicuna_v1")
        self.chat_format = chat_format or (name if name in CHAT_FORMATS else "vicuna_v1")
        if self.chat_format not in CHAT_FORMATS:
            raise LoupeError(
                f"chat_format: {self.chat_format!r} is not known; valid: {', '.join(CHAT_FORMATS)}"
            )
        self.device = default_device(device)
        self.model = bundle.model.to(self.device).eval()
        self.name = path.name

    def _encode(
        self, texts: list[str], images: list[Any], padding_side: str, questions: list[str] | None = None
    ) -> dict:
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
            qs = questions or [None] * len(images)
            enc.update(
                self.strategy.collate([self.strategy.preprocess(im, question=q) for im, q in zip(images, qs)])
            )
        return enc
