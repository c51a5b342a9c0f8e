"""POPE (object hallucination) metrics, from LLaVA's ``llava/eval/eval_pope.py`` (haotian-liu/LLaVA @ c121f04).

Answer parsing (L8-20): keep the text before the first ``.``, delete commas, split on single spaces;
the answer is "no" when any word is exactly ``No``, ``not`` or ``no``, otherwise "yes" (so "Not
really" counts as yes: upstream tests ``'not'`` case-sensitively; kept). Labels other than "no" are
positives (L22-26). Per split (adversarial, popular, random: one ``coco_pope_<split>.json`` each):
accuracy, precision, recall, F1 and the ratio of "yes" answers (L35-61). LLaVA-1.5 / DenseFusion
report the mean F1 over the three splits (x100) as "POPE".

Where upstream divides by zero (no positive predictions) we report 0.0 instead of crashing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping


def pope_parse(text: str | None) -> str:
    """``"yes"`` or ``"no"`` from a free-form answer (eval_pope.py L8-20); ``""`` for a missing one."""
    if text is None:
        return ""
    if text.find(".") != -1:
        text = text.split(".")[0]
    words = text.replace(",", "").split(" ")
    return "no" if ("No" in words or "not" in words or "no" in words) else "yes"


def pope_metrics(preds: Iterable[str | None], labels: Iterable[str]) -> dict[str, float]:
    """accuracy, precision, recall, f1, yes_ratio (fractions) and the confusion counts.

    A missing prediction (None) counts as wrong: it is neither a yes nor a no, so it lowers accuracy
    and recall (if the label is yes) without being silently dropped.
    """
    tp = tn = fp = fn = n_yes = n = 0
    for text, label in zip(preds, labels, strict=True):
        n += 1
        pos = label != "no"
        pred = pope_parse(text)
        if pred == "yes":
            n_yes += 1
            tp += pos
            fp += not pos
        elif pred == "no":
            tn += not pos
            fn += pos
        else:  # missing: wrong whatever the label
            fn += pos
            fp += not pos
    if n == 0:
        raise ValueError("no questions to score")
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "accuracy": (tp + tn) / n,
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "yes_ratio": n_yes / n,
        "tp": tp,
        "fp": fp,
        "tn": tn,
        "fn": fn,
        "n": n,
    }


def pope_summary(per_split: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """Headline POPE = mean F1 over the splits, x100, plus the mean accuracy x100."""
    if not per_split:
        raise ValueError("no POPE splits to summarise")
    k = len(per_split)
    return {
        "f1": 100.0 * sum(m["f1"] for m in per_split.values()) / k,
        "accuracy": 100.0 * sum(m["accuracy"] for m in per_split.values()) / k,
    }
