"""The model interface eval needs, and its implementation for HF LLaVA-style checkpoints.

A :class:`Query` is a conversation whose last turn is the user's, plus the images its ``<image>``
markers stand for, in order. A model answers a batch of queries with greedy decoding
(:meth:`VLM.answer`) and scores given answers by their mean token cross-entropy
(:meth:`VLM.answer_loss`, what DualFocus's "PPL selection" uses). Tasks and inference policies
(``eval/dualfocus.py``) only see this interface, so they are tested with stub models.

:class:`HFLlava` wraps any ``LlavaForConditionalGeneration`` folder (llava-hf conversions, and
``loupe train`` checkpoints of the ``llava`` strategy, which are saved in that format) with its
processor (or a tokenizer plus ``CLIPImageProcessor``). Prompts are rendered with LLaVA-1.5's
``vicuna_v1`` conversation (haotian-liu/LLaVA ``llava/conversation.py`` L54-63, L242-252:
``"{system} USER: {q} ASSISTANT: {a}</s>USER: ..."``), which is how the seed models were evaluated,
or with Loupe's Llama-3 template (``chat_format="llama3"``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from loupe.pipeline.errors import LoupeError

IMAGE = "<image>"
VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
CHAT_FORMATS = ("vicuna_v1", "llama3")


@dataclass
class Query:
    """``turns``: ``[("user", text), ("assistant", text), ..., ("user", text)]``; each ``<image>``
    in the texts takes the next image of ``images``."""

    images: list[Any]
    turns: list[tuple[str, str]]
    meta: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def single(cls, image: Any, prompt: str) -> Query:
        """One image, one question: ``<image>\\n{prompt}`` as LLaVA builds it."""
        return cls([image], [("user", f"{IMAGE}\n{prompt}")])


class VLM(Protocol):
    """What a model must offer to be evaluated."""

    def answer(self, queries: Sequence[Query], max_new_tokens: int = 128) -> list[str]: ...

    def answer_loss(self, queries: Sequence[Query], answers: Sequence[str]) -> list[float]: ...


def render(
    turns: Sequence[tuple[str, str]], chat_format: str = "vicuna_v1", answer: str | None = None
) -> str:
    """The prompt text ending where the assistant speaks next; with ``answer``, the answer and its
    end-of-turn separator are appended (the text whose answer tokens ``answer_loss`` scores)."""
    if chat_format == "vicuna_v1":
        seps = (" ", "</s>")
        out = VICUNA_SYSTEM + seps[0]
        for i, (role, text) in enumerate(turns):
            out += ("USER" if role == "user" else "ASSISTANT") + ": " + text + seps[i % 2]
        out += "ASSISTANT:"
        return out if answer is None else out + " " + answer + seps[1]
    if chat_format == "llama3":
        from loupe.schemas.llama3 import EOT, llama3_render

        out = llama3_render([{"role": r, "content": t} for r, t in turns], add_generation_prompt=True)
        return out if answer is None else out + answer.strip() + EOT
    raise LoupeError(f"chat_format: {chat_format!r} is not known; valid: {', '.join(CHAT_FORMATS)}")


class HFLlava:
    """A ``LlavaForConditionalGeneration`` checkpoint folder, run with batched greedy decoding."""

    def __init__(
        self, path: str | Path, chat_format: str = "vicuna_v1", device: str | None = None, dtype: str = "auto"
    ):
        import torch
        from transformers import AutoConfig, AutoProcessor, LlavaForConditionalGeneration
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        path = Path(path)
        if not (path / "config.json").is_file():
            raise LoupeError(f"--model: {path} has no config.json (not a Hugging Face model folder)")
        cfg = AutoConfig.from_pretrained(path)
        if cfg.model_type != "llava":
            raise LoupeError(
                f"--model: {path} is a {cfg.model_type!r} model; eval runs LLaVA-style models (llava)"
            )
        if chat_format not in CHAT_FORMATS:
            raise LoupeError(f"chat_format: {chat_format!r} is not known; valid: {', '.join(CHAT_FORMATS)}")
        self.chat_format = chat_format
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        torch_dtype = {"auto": torch.float16 if self.device.startswith("cuda") else torch.float32,
                       "float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[dtype]  # fmt: skip
        self.processor = AutoProcessor.from_pretrained(path)
        self.tokenizer = self.processor.tokenizer
        self.model = (
            LlavaForConditionalGeneration.from_pretrained(path, dtype=torch_dtype).to(self.device).eval()
        )
        self.name = path.name

    def _batch(self, texts: list[str], images: list[Any], padding_side: str):
        self.tokenizer.padding_side = padding_side
        enc = self.processor(text=texts, images=images or None, padding=True, return_tensors="pt")
        return {k: v.to(self.device) for k, v in enc.items()}

    def answer(self, queries: Sequence[Query], max_new_tokens: int = 128) -> list[str]:
        import torch

        if not queries:
            return []
        texts = [render(q.turns, self.chat_format) for q in queries]
        enc = self._batch(texts, [im for q in queries for im in q.images], "left")
        if "pixel_values" in enc:
            enc["pixel_values"] = enc["pixel_values"].to(self.model.dtype)
        with torch.inference_mode():
            out = self.model.generate(
                **enc,
                do_sample=False,
                num_beams=1,
                max_new_tokens=max_new_tokens,
                pad_token_id=self.tokenizer.pad_token_id,
            )
        new = out[:, enc["input_ids"].shape[1] :]
        return [t.strip() for t in self.tokenizer.batch_decode(new, skip_special_tokens=True)]

    def answer_loss(self, queries: Sequence[Query], answers: Sequence[str]) -> list[float]:
        """Mean token cross-entropy of each answer (and its end-of-turn token) given its query,
        as DualFocus's ``reduction='none'`` loss (llava_llama.py L99-115)."""
        import torch

        if not queries:
            return []
        prompts = [render(q.turns, self.chat_format) for q in queries]
        fulls = [render(q.turns, self.chat_format, answer=a) for q, a in zip(queries, answers, strict=True)]
        images = [im for q in queries for im in q.images]
        enc = self._batch(fulls, images, "right")
        prompt_lens = [
            int(self._batch([p], list(q.images), "right")["input_ids"].shape[1])
            for p, q in zip(prompts, queries)
        ]
        labels = enc["input_ids"].clone()
        labels[enc["attention_mask"] == 0] = -100
        for i, n in enumerate(prompt_lens):
            labels[i, :n] = -100
        if "pixel_values" in enc:
            enc["pixel_values"] = enc["pixel_values"].to(self.model.dtype)
        with torch.inference_mode():
            logits = self.model(**enc).logits.float()
        shift_logits, shift_labels = logits[:, :-1], labels[:, 1:]
        ce = torch.nn.functional.cross_entropy(
            shift_logits.reshape(-1, shift_logits.shape[-1]), shift_labels.reshape(-1), reduction="none"
        ).view(shift_labels.shape)
        mask = shift_labels != -100
        return ((ce * mask).sum(1) / mask.sum(1).clamp(min=1)).tolist()


def load_vlm(path: str | Path, chat_format: str | None = None, device: str | None = None) -> VLM:
    """A model folder -> a :class:`VLM`. Knows HF LLaVA folders (``config.json`` with
    ``model_type: llava``), which includes ``loupe train`` checkpoints of the llava strategy."""
    p = Path(path).expanduser()
    if not p.exists():
        raise LoupeError(f"--model: {p} does not exist")
    if not p.is_dir():
        raise LoupeError(
            f"--model: {p} is not a folder (expected a model checkpoint folder with config.json)"
        )
    cfg = p / "config.json"
    if not cfg.is_file():
        raise LoupeError(
            f"--model: {p} has no config.json (expected a Hugging Face LLaVA folder or a loupe train checkpoint)"
        )
    try:
        json.loads(cfg.read_text())
    except json.JSONDecodeError as e:
        raise LoupeError(f"--model: {cfg} is not valid JSON: {e}") from e
    return HFLlava(p, chat_format=chat_format or "vicuna_v1", device=device)
