"""The model interface eval needs, and its implementation for HF LLaVA-style checkpoints.

A :class:`Query` is a conversation whose last turn is the user's, plus the images its ``<image>``
markers stand for, in order. A model answers a batch of queries with greedy decoding
(:meth:`VLM.answer`) and scores given answers by their mean token cross-entropy
(:meth:`VLM.answer_loss`, what DualFocus's "PPL selection" uses). Tasks and inference policies
(``eval/dualfocus.py``) only see this interface, so they are tested with stub models.

:class:`HFLlava` wraps any ``LlavaForConditionalGeneration`` folder (llava-hf conversions, and
``loupe train`` checkpoints of the ``llava`` strategy, which are saved in that format) with its
processor; images are padded to a square first, as LLaVA-1.5 evaluates. Prompts are rendered with LLaVA-1.5's
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

from loupe.schemas.errors import LoupeError

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


def _image_turns(q: Query) -> list[str]:
    """The turn text of each image of ``q``, in image order."""
    return [t for _, t in q.turns for _ in range(t.count(IMAGE))]


def _question(text: str) -> str:
    return text.replace(IMAGE, "").strip()


def render(
    turns: Sequence[tuple[str, str]],
    chat_format: str = "vicuna_v1",
    answer: str | None = None,
    system: str | None = None,
) -> str:
    """The prompt text ending where the assistant speaks next; with ``answer``, the answer and its
    end-of-turn separator are appended (the text whose answer tokens ``answer_loss`` scores).
    ``system`` replaces the template's system prompt (a checkpoint trained with ``data.system``)."""
    if chat_format == "vicuna_v1":
        seps = (" ", "</s>")
        out = (system or VICUNA_SYSTEM) + seps[0]
        for i, (role, text) in enumerate(turns):
            out += ("USER" if role == "user" else "ASSISTANT") + ": " + text + seps[i % 2]
        out += "ASSISTANT:"
        return out if answer is None else out + " " + answer + seps[1]
    if chat_format == "llama3":
        from loupe.schemas.llama3 import EOT, llama3_render

        out = llama3_render(
            [{"role": r, "content": t} for r, t in turns], system=system, add_generation_prompt=True
        )
        return out if answer is None else out + answer.strip() + EOT
    raise LoupeError(f"chat_format: {chat_format!r} is not known; valid: {', '.join(CHAT_FORMATS)}")


class TokenVLM:
    """Shared batched greedy decoding and answer scoring over a ``_encode`` hook.

    Subclasses set ``model``, ``tokenizer``, ``device``, ``chat_format`` and implement
    ``_encode(texts, images, padding_side) -> dict`` (model inputs, ``input_ids`` and
    ``attention_mask`` included, images expanded to their tokens).
    """

    model: Any
    tokenizer: Any
    device: str
    chat_format: str

    system: str | None = None

    def _encode(
        self, texts: list[str], images: list[Any], padding_side: str, questions: list[str] | None = None
    ) -> dict:
        raise NotImplementedError

    def _stop_ids(self) -> list[int]:
        """Token ids that end an answer: EOS, and ``<|eot_id|>`` for the Llama-3 format (a Loupe model
        trained with the llama3 template ends each answer with it, not with EOS)."""
        ids = [self.tokenizer.eos_token_id]
        if self.chat_format == "llama3":
            eot = self.tokenizer.convert_tokens_to_ids("<|eot_id|>")
            if isinstance(eot, int) and eot != self.tokenizer.unk_token_id:
                ids.append(eot)
        return [i for i in ids if i is not None]

    def _inputs(self, queries: Sequence[Query], texts: list[str], padding_side: str) -> dict:
        import torch

        images = [im for q in queries for im in q.images]
        # per image, the text of the turn it appears in (text-guided strategies zoom by the question)
        questions = [_question(t) for q in queries for t in _image_turns(q)]
        enc = {k: v.to(self.device) for k, v in self._encode(texts, images, padding_side, questions).items()}
        dtype = next(self.model.parameters()).dtype
        return {k: v.to(dtype) if torch.is_floating_point(v) else v for k, v in enc.items()}

    def answer(self, queries: Sequence[Query], max_new_tokens: int = 128) -> list[str]:
        import torch

        if not queries:
            return []
        texts = [render(q.turns, self.chat_format, system=self.system) for q in queries]
        if not hasattr(self.model, "generate"):
            return [self._greedy(q, t, max_new_tokens) for t, q in zip(texts, queries)]
        enc = self._inputs(queries, texts, "left")
        with torch.inference_mode():
            out = self.model.generate(
                **enc, do_sample=False, num_beams=1, max_new_tokens=max_new_tokens,
                pad_token_id=self.tokenizer.pad_token_id, eos_token_id=self._stop_ids(),
            )[:, enc["input_ids"].shape[1] :]  # fmt: skip
        return [t.strip() for t in self.tokenizer.batch_decode(out, skip_special_tokens=True)]

    def _greedy(self, query: Query, text: str, max_new_tokens: int) -> str:
        """Greedy decoding for models without ``generate`` (strategy modules): one query at a time
        (the strategy contract has no ``position_ids``, so left padding would shift positions, and
        ragged image inputs cannot be split per row), no KV cache: each step re-runs the sequence."""
        import torch

        enc = self._inputs([query], [text], "right")
        ids = enc.pop("input_ids")
        enc.pop("attention_mask", None)
        stop = set(self._stop_ids())
        new: list[int] = []
        with torch.inference_mode():
            for _ in range(max_new_tokens):
                t = int(
                    self.model(input_ids=ids, attention_mask=torch.ones_like(ids), **enc)
                    .logits[0, -1]
                    .argmax()
                )
                if t in stop:
                    break
                new.append(t)
                ids = torch.cat([ids, ids.new_tensor([[t]])], 1)
        return self.tokenizer.decode(new, skip_special_tokens=True).strip()

    def answer_loss(self, queries: Sequence[Query], answers: Sequence[str]) -> list[float]:
        """Mean token cross-entropy of each answer (and its end-of-turn token) given its query,
        as DualFocus's ``reduction='none'`` loss (llava_llama.py L99-115)."""
        import torch

        if not queries:
            return []
        sys_ = self.system
        fulls = [
            render(q.turns, self.chat_format, answer=a, system=sys_)
            for q, a in zip(queries, answers, strict=True)
        ]
        enc = self._inputs(queries, fulls, "right")
        prompt_lens = [
            int(
                self._inputs([q], [render(q.turns, self.chat_format, system=sys_)], "right")[
                    "input_ids"
                ].shape[1]
            )
            for q in queries
        ]
        labels = enc["input_ids"].clone()
        labels[enc["attention_mask"] == 0] = -100
        for i, n in enumerate(prompt_lens):
            labels[i, :n] = -100
        with torch.inference_mode():
            logits = self.model(**enc).logits.float()
        shift_logits, shift_labels = logits[:, :-1], labels[:, 1:]
        ce = torch.nn.functional.cross_entropy(
            shift_logits.reshape(-1, shift_logits.shape[-1]), shift_labels.reshape(-1), reduction="none"
        ).view(shift_labels.shape)
        mask = shift_labels != -100
        return ((ce * mask).sum(1) / mask.sum(1).clamp(min=1)).tolist()


def _torch_dtype(dtype: str, device: str):
    import torch

    if dtype == "auto":
        return torch.float16 if device.startswith("cuda") else torch.float32
    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[dtype]


def default_device(device: str | None) -> str:
    import torch

    return device or ("cuda" if torch.cuda.is_available() else "cpu")


class HFLlava(TokenVLM):
    """A ``LlavaForConditionalGeneration`` folder with its processor, batched greedy decoding."""

    def __init__(
        self,
        path: str | Path,
        chat_format: str = "vicuna_v1",
        device: str | None = None,
        dtype: str = "auto",
        pad_to_square: bool = True,
    ):
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
        if (
            not (path / "preprocessor_config.json").is_file()
            and not (path / "processor_config.json").is_file()
        ):
            raise LoupeError(
                f"--model: {path} has no processor files (preprocessor_config.json); save the processor with the model"
            )
        self.chat_format = chat_format
        # LLaVA-1.5 evaluates with image_aspect_ratio='pad': expand2square with the CLIP mean colour
        # before the processor (llava/mm_utils.py L152-176); HF processors alone would centre-crop.
        self.pad_to_square = pad_to_square
        self.device = default_device(device)
        self.processor = AutoProcessor.from_pretrained(path)
        self.tokenizer = self.processor.tokenizer
        self.model = (
            LlavaForConditionalGeneration.from_pretrained(path, dtype=_torch_dtype(dtype, self.device))
            .to(self.device)
            .eval()
        )
        self.name = path.name

    def _encode(
        self, texts: list[str], images: list[Any], padding_side: str, questions: list[str] | None = None
    ) -> dict:
        self.tokenizer.padding_side = padding_side
        if self.pad_to_square and images:
            from loupe.train.strategies.base import pad_to_square

            mean = tuple(
                getattr(self.processor.image_processor, "image_mean", None)
                or (0.48145466, 0.4578275, 0.40821073)
            )
            images = [pad_to_square(im.convert("RGB"), mean) for im in images]
        return dict(self.processor(text=texts, images=images or None, padding=True, return_tensors="pt"))


def load_vlm(path: str | Path, chat_format: str | None = None, device: str | None = None) -> VLM:
    """A model folder -> a :class:`VLM`: a ``loupe train`` checkpoint (``loupe_train.yaml``; any
    strategy, see ``eval/loupe_ckpt.py``) or a HF LLaVA folder (``config.json`` with
    ``model_type: llava`` and its processor files)."""
    p = Path(path).expanduser()
    if not p.exists():
        raise LoupeError(f"--model: {p} does not exist")
    if not p.is_dir():
        raise LoupeError(f"--model: {p} is not a folder (expected a model checkpoint folder)")
    from loupe.eval.loupe_ckpt import StrategyVLM, is_loupe_checkpoint

    if is_loupe_checkpoint(p):
        return StrategyVLM(p, chat_format=chat_format, device=device)
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
