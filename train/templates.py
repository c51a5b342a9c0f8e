"""Chat templates as data (``train/templates/<name>.yaml``) and the tokenisation with label masks.

A template says how turns become text: an optional BOS, a system block, ``user`` and ``assistant``
formats (``{content}``, ``{eos}``), the assistant prefix (prompt, never learned) and where the
image placeholder goes in the first human turn (``image: "{image}\\n{content}"``; ``plain`` keeps
only ``{image}``). :func:`encode` renders the segments, tokenises the whole string once with
offsets (so the tokens are exactly the tokenizer's for that text) and marks a token as learned when
its characters overlap a learned segment:

* ``learn="assistant"`` (default): each assistant ``content`` and its end token (``<|eot_id|>``,
  ``</s>``, plain's ``\\n``) — LLaVA's ``preprocess_v1`` / ``preprocess_plain`` masking;
* ``learn="all_after_bos"``: every text token after BOS, what Dragonfly's release does
  (togethercomputer/Dragonfly pipeline/data_utils/data.py:96 ``get_labels(special_token_id=128000)``,
  src/dragonfly/models/processing_dragonfly.py:492-503: labels = input_ids after the first
  ``<|begin_of_text|>``), i.e. the model also learns to write the user's questions and headers.

Image placeholders are expanded to the strategy's exact count and never learned; truncation to
``max_length`` never cuts an image's tokens (such a sample is skipped, with a reason).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from loupe.train.strategies.base import IMAGE_TOKEN

TEMPLATE_DIR = Path(__file__).parent / "templates"
IGNORE = -100
_IMAGE_IN_TEXT = re.compile(r"\s*<image>\s*")


class SkipSample(ValueError):
    """A sample that cannot be trained on; ``reason`` is counted and logged, the run goes on."""

    def __init__(self, detail: str, reason: str | None = None):
        super().__init__(detail)
        self.reason = reason or detail


@dataclass(frozen=True)
class ChatTemplate:
    name: str
    source: str
    bos: bool
    strip: bool
    system: str | None
    system_format: str
    user: str
    assistant_prefix: str
    assistant: str
    image: str
    two_turns: bool
    generation_prompt: str | None = None  # what ends an inference prompt (default: assistant_prefix)


@cache
def load_template(name: str) -> ChatTemplate:
    path = TEMPLATE_DIR / f"{name}.yaml"
    if not path.exists():
        valid = ", ".join(sorted(p.stem for p in TEMPLATE_DIR.glob("*.yaml")))
        raise ValueError(f"data.template: {name!r} is not a template; valid: {valid}")
    return ChatTemplate(**yaml.safe_load(path.read_text()))


def template_names() -> list[str]:
    return sorted(p.stem for p in TEMPLATE_DIR.glob("*.yaml"))


def render(
    tpl: ChatTemplate,
    turns: list[dict[str, str]],
    has_image: bool,
    bos: str = "",
    eos: str = "",
    system: str | None = None,
) -> list[tuple[str, bool]]:
    """Turns ``[{"from": "human"|"gpt"|"system", "value"}]`` -> ``[(text, is_assistant_content)]``.

    Any ``<image>`` already in the text (LLaVA JSON has one in turn 0) is removed and the placeholder
    is put where the template says, in the first human turn, when the sample has an image.
    """
    sys_turns = [t["value"] for t in turns if t["from"] == "system"]
    convo = [t for t in turns if t["from"] != "system"]
    if tpl.two_turns and len(convo) != 2:
        raise SkipSample(
            f"{tpl.name} template needs exactly 2 turns (image, caption), got {len(convo)}",
            f"{tpl.name} template needs 2 turns",
        )
    if tpl.two_turns and not has_image:
        raise SkipSample(f"{tpl.name} template needs an image")
    segs: list[tuple[str, bool]] = [(bos, False)] if tpl.bos and bos else []
    system = system if system is not None else (sys_turns[0] if sys_turns else tpl.system)
    if system and tpl.system_format:
        segs.append((tpl.system_format.format(system=system.strip() if tpl.strip else system), False))
    placed = False
    for t in convo:
        text = _IMAGE_IN_TEXT.sub(" ", t["value"]).strip() if IMAGE_TOKEN in t["value"] else t["value"]
        if tpl.strip:
            text = text.strip()
        if not text.strip() and not (t["from"] == "human" and has_image and not placed and tpl.two_turns):
            raise SkipSample(f"empty {t['from']} turn")
        if t["from"] == "human":
            if has_image and not placed:
                text = tpl.image.format(image=IMAGE_TOKEN, content=text)
                placed = True
            segs.append((tpl.user.format(content=text), False))
        else:
            segs.append((tpl.assistant_prefix, False))
            segs.append((tpl.assistant.format(content=text, eos=eos), True))
    return [s for s in segs if s[0]]


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]
    n_image_tokens: int


def encode(
    segments: list[tuple[str, bool]],
    tokenizer: Any,
    n_image_tokens: int,
    max_length: int,
    learn: str = "assistant",
) -> Encoded:
    """Tokenise rendered segments; expand the one ``<image>`` to ``n_image_tokens`` ids; mask labels."""
    text = "".join(s for s, _ in segments)
    spans, pos = [], 0
    for s, learned in segments:
        if learned:
            spans.append((pos, pos + len(s)))
        pos += len(s)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    image_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    bos_id = tokenizer.bos_token_id
    out_ids: list[int] = []
    labels: list[int] = []
    image_end = 0
    for i, (tid, (a, b)) in enumerate(zip(ids, offsets)):
        if tid == image_id:
            if image_end:
                raise SkipSample("more than one <image> placeholder")
            out_ids += [image_id] * n_image_tokens
            labels += [IGNORE] * n_image_tokens
            image_end = len(out_ids)
            continue
        if learn == "all_after_bos":
            learned = not (i == 0 and tid == bos_id)
        else:
            learned = any(a < e and b > s for s, e in spans)
        out_ids.append(tid)
        labels.append(tid if learned else IGNORE)
    if n_image_tokens and not image_end:
        raise SkipSample("the image placeholder was lost in tokenisation")
    if image_end > max_length:
        raise SkipSample(f"image tokens end at {image_end} > data.max_length {max_length}", "too long")
    out_ids, labels = out_ids[:max_length], labels[:max_length]
    if all(x == IGNORE for x in labels):
        raise SkipSample("no learned token within data.max_length", "too long")
    return Encoded(out_ids, labels, n_image_tokens if image_end else 0)


def prompt_ids(
    tpl: ChatTemplate,
    tokenizer: Any,
    question: str,
    n_image_tokens: int,
    system: str | None = None,
    history: list[dict[str, str]] = (),
) -> list[int]:
    """Input ids of a generation prompt: (history +) the question, then the assistant prefix, the
    ``<image>`` placeholder expanded to ``n_image_tokens`` (0: text-only)."""
    turns = [*history, {"from": "human", "value": question}]
    segs = render(
        tpl, turns, n_image_tokens > 0, tokenizer.bos_token or "", tokenizer.eos_token or "", system
    )
    gen = tpl.generation_prompt if tpl.generation_prompt is not None else tpl.assistant_prefix
    text = "".join(s for s, _ in segs) + gen
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    image_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    out: list[int] = []
    for t in ids:
        out += [image_id] * n_image_tokens if t == image_id else [t]
    return out
