"""ScienceQA-IMG accuracy, from LLaVA's ``llava/eval/eval_science_qa.py`` (haotian-liu/LLaVA @ c121f04).

Letter extraction (L65-75), options ``A``-``E``:

1. the whole answer is a letter -> that letter;
2. it starts with ``"<letter>. "`` (e.g. "A. a cat") -> that letter;
3. ``re.findall(r'The answer is ([A-Z]).')`` has exactly one match -> that letter;
4. otherwise "FAILED".

A letter beyond the question's number of choices is no answer (``get_pred_idx`` L28-36). What
happens to an unparsed answer differs between upstream versions: LLaVA v1 (commit 8959d5c) and the
ScienceQA release pick ``random.choice(range(len(choices)))``; LLaVA-1.5 (commit ce1aa08, the code
behind the published 66.8) inserted ``return -1`` before that line, so an unparsed answer is wrong.
``fallback="wrong"`` (default) reproduces LLaVA-1.5; ``fallback="random"`` reproduces the older
rule with a seeded ``random.Random`` so scores are repeatable. A question with no prediction is
scored as the text "FAILED" (L58-60), never skipped. SQA-IMG counts only questions that have an image
(``is_multimodal``, L85 and L99-103).
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable

OPTIONS = ("A", "B", "C", "D", "E")
_ANSWER_IS = re.compile(r"The answer is ([A-Z]).")


def sqa_extract_letter(text: str | None) -> str:
    """The answer letter, or ``"FAILED"`` (eval_science_qa.py L65-75)."""
    if text is None:
        return "FAILED"
    if text in OPTIONS:
        return text
    if len(text) >= 3 and text[0] in OPTIONS and text[1:3] == ". ":
        return text[0]
    res = _ANSWER_IS.findall(text)
    return res[0] if len(res) == 1 else "FAILED"


def sqa_pred_index(
    text: str | None, n_choices: int, fallback: str = "wrong", rng: random.Random | None = None
) -> int:
    """Index of the chosen option, ``-1`` when none (``get_pred_idx``); see module docstring for ``fallback``."""
    letter = sqa_extract_letter(text)
    if letter in OPTIONS[:n_choices]:
        return OPTIONS.index(letter)
    if fallback == "random":
        if rng is None:
            raise ValueError("fallback='random' needs a seeded rng")
        return rng.choice(range(n_choices))
    if fallback != "wrong":
        raise ValueError(f"fallback: {fallback!r} is not valid; valid: wrong, random")
    return -1


def sqa_img_accuracy(
    items: Iterable[tuple[str | None, int, int, bool]], fallback: str = "wrong", seed: int = 0
) -> dict[str, float]:
    """``items``: (prediction text or None, number of choices, answer index, has image).

    Returns ``img_accuracy`` (the SQA-IMG headline) and ``accuracy`` over all questions, x100.
    """
    rng = random.Random(seed)
    n = hits = n_img = hits_img = 0
    for text, n_choices, answer, has_image in items:
        ok = sqa_pred_index(text, n_choices, fallback, rng) == answer
        n += 1
        hits += ok
        if has_image:
            n_img += 1
            hits_img += ok
    if n == 0:
        raise ValueError("no questions to score")
    return {
        "img_accuracy": 100.0 * hits_img / n_img if n_img else 0.0,
        "accuracy": 100.0 * hits / n,
        "n": n,
        "n_img": n_img,
    }
