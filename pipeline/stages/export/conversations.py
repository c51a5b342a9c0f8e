"""Conversation builders: a sample + its evidence -> training turns.

Tasks (``export.tasks`` in the recipe):

* ``caption``   - "describe the image in detail" -> the perceptual-fusion caption
  (instruction phrasing sampled per sample from ``DETAIL_PROMPTS`` with a seeded RNG);
* ``ocr``       - "what text is in the image?" -> the OCR lines in reading order;
* ``grounding`` - "where is the <label>?" -> its normalised box, for up to 3 distinct labels;
* ``source_qa`` - the question/answer turns that came with the source (SMR datasets).
"""

from __future__ import annotations

import hashlib
import random
from typing import Any

from loupe.pipeline.stages.fuse.prompt import fmt_box

DETAIL_PROMPTS = (
    "Describe this image in detail.",
    "Write a detailed description of the image.",
    "What is in this image? Describe everything you see.",
    "Give an elaborate explanation of the image you see.",
    "Provide a thorough description of this picture, including any text in it.",
    "Analyze the image in a comprehensive and detailed manner.",
)
OCR_PROMPTS = (
    "What text appears in the image?",
    "Read all the text in this image.",
    "Transcribe the visible text, line by line.",
)
GROUNDING_PROMPT = "Where is the {label} in the image? Answer with a box [x1, y1, x2, y2] in 0-1 coordinates."
MAX_GROUNDING = 3


def sample_rng(seed: int, uid: str) -> random.Random:
    """Per-sample RNG: the same phrasing for a uid whatever the batch or executor."""
    h = hashlib.sha256(f"{seed}:{uid}".encode()).digest()
    return random.Random(int.from_bytes(h[:8], "big"))


def caption_instruction(seed: int, uid: str) -> str:
    """The detail instruction ``build_turns`` puts before the caption of ``uid`` (its first draw)."""
    return sample_rng(seed, uid).choice(DETAIL_PROMPTS)


def useful_ocr_lines(ocr: list[dict] | None, min_score: float = 0.0, min_chars: int = 1) -> list[str]:
    """OCR lines worth a training turn, in reading order: recognised with at least ``min_score``
    confidence and holding at least ``min_chars`` letters or digits (drops "|", "-", lone glyphs)."""
    out = []
    for o in sorted(ocr or [], key=lambda o: o["line"]):
        text = (o["text"] or "").strip()
        score = o.get("score")
        if text and (score is None or score >= min_score) and sum(c.isalnum() for c in text) >= min_chars:
            out.append(text)
    return out


def build_turns(
    row: dict[str, Any], tasks: list[str], seed: int, ocr_min_score: float = 0.0, ocr_min_chars: int = 1
) -> list[dict[str, str]]:
    rng = sample_rng(seed, row["uid"])
    turns: list[dict[str, str]] = []
    caps = row.get("captions") or []
    if "caption" in tasks and caps:
        turns += [
            {"from": "human", "value": rng.choice(DETAIL_PROMPTS)},
            {"from": "gpt", "value": caps[0]["caption"]},
        ]
    ocr = useful_ocr_lines(row.get("ocr"), ocr_min_score, ocr_min_chars)
    if "ocr" in tasks and ocr:
        turns += [
            {"from": "human", "value": rng.choice(OCR_PROMPTS)},
            {"from": "gpt", "value": "\n".join(ocr)},
        ]
    if "grounding" in tasks:
        best: dict[str, dict] = {}
        for b in sorted(row.get("detect") or [], key=lambda b: -b["score"]):
            best.setdefault(b["label"], b)
        for label, b in list(best.items())[:MAX_GROUNDING]:
            turns += [
                {"from": "human", "value": GROUNDING_PROMPT.format(label=label)},
                {"from": "gpt", "value": fmt_box(b["box"])},
            ]
    if "source_qa" in tasks:
        turns += [{"from": t["from"], "value": t["value"]} for t in row.get("conversations") or []]
    return turns


def with_image_token(turns: list[dict[str, str]]) -> list[dict[str, str]]:
    """LLaVA's convention: ``<image>`` on its own line at the start of the first human turn."""
    out = [dict(t) for t in turns]
    for t in out:
        if t["from"] == "human":
            t["value"] = "<image>\n" + t["value"].replace("<image>", "").lstrip()
            break
    return out
