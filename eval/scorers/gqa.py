"""GQA accuracy as LLaVA-1.5 reports it.

LLaVA's ``scripts/convert_gqa_for_eval.py`` (haotian-liu/LLaVA @ c121f04, L14) turns each answer into
``text.rstrip('.').lower()``; the official GQA ``eval.py --tier testdev_balanced`` then counts a
question right when that prediction equals the annotated ``answer`` string exactly (its "Accuracy";
GQA answers are already lower-case single words or short phrases).
"""

from __future__ import annotations

from collections.abc import Iterable


def gqa_normalize(pred: str) -> str:
    """``rstrip('.')`` then lower-case, as convert_gqa_for_eval.py L14 (no strip of spaces)."""
    return pred.rstrip(".").lower()


def gqa_correct(pred: str | None, answer: str) -> bool:
    """Exact match of the normalised prediction; a missing prediction is wrong."""
    return pred is not None and gqa_normalize(pred) == answer


def gqa_accuracy(preds: Iterable[str | None], answers: Iterable[str]) -> float:
    """Accuracy x 100 over paired predictions and answers."""
    hits = [gqa_correct(p, a) for p, a in zip(preds, answers, strict=True)]
    if not hits:
        raise ValueError("no questions to score")
    return 100.0 * sum(hits) / len(hits)
