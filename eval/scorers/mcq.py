"""Multiple-choice scorers: SEED-Bench-IMG exact letter match and MMBench circular evaluation.

SEED-IMG: LLaVA's ``scripts/convert_seed_for_submission.py`` (haotian-liu/LLaVA @ c121f04, L22-47)
counts a question right when the generated text equals the annotated letter exactly
(``row['text'] == question_data['answer']``), keeps only ``data_type == 'image'`` questions for
SEED-IMG, and counts a question with no prediction as wrong (L30-32). Accuracy is micro-averaged
(total right / total questions, L37-47).

MMBench: VLMEvalKit's circular evaluation (open-compass/VLMEvalKit @ e8e78f05,
``vlmeval/dataset/utils/multiple_choice.py`` ``prefetch_circular_group`` / ``eval_circular_group``
and ``mcq_circular_eval``): a question is asked once per rotation of its options (LLaVA's
``model_vqa_mmbench.py --all-rounds`` rotates ``options[1:] + options[:1]``, L137-139) and scores 1
only if the option extracted from *every* rotation equals that rotation's answer letter.
Extraction is VLMEvalKit's exact-matching ``can_infer`` (``vlmeval/utils/matching_util.py`` L18-127):
``can_infer_option`` then ``can_infer_text``. Its GPT-judge fallback is not used (the
``exact_matching`` policy: an answer that cannot be inferred is wrong, L403-405 of
multiple_choice.py), and its ``VERBOSE``-only "A might be a quantifier" branch is left out.
"""

from __future__ import annotations

import re
import string
from collections.abc import Iterable, Mapping, Sequence

LETTERS = string.ascii_uppercase
_REJECT = (
    "Sorry, I can't help with images of people yet.",
    "I can't process this file.",
    "I'm sorry, but without the image provided",
    "Cannot determine the answer",
)
_VERBOSE_ANSWER = re.compile(r"(?i)(?:correct\s+)?answer\s+is\s+\**([ABCD])\**")


def seed_correct(pred: str | None, answer: str) -> bool:
    """SEED-Bench: exact equality of the generated text and the answer letter."""
    return pred is not None and pred == answer


def can_infer_option(answer: str, choices: Mapping[str, str]) -> str | None:
    """The option letter named in ``answer``, ``"Z"`` for a refusal, or None (matching_util.py L18-61)."""
    if "Failed to obtain answer via API" in answer:
        return None
    if any(r in answer for r in _REJECT):
        return "Z"
    mod = answer
    for c in ".()[],:;!*#{}":
        mod = mod.replace(c, " ")
    splits = [x.strip() for x in mod.split()]
    count = sum(1 for c in choices if c in splits)
    if count == 1:
        for ch in choices:
            if ch in splits and splits.index(ch) > len(splits) - 5:
                return ch
    elif count == 0 and sum(1 for c in ("Z", "") if c in splits) == 1:
        return "Z"
    m = _VERBOSE_ANSWER.search(answer or "")
    if m and m.group(1).upper() in choices:
        return m.group(1).upper()
    return None


def can_infer_text(answer: str, choices: Mapping[str, str]) -> str | None:
    """The single option whose text appears in ``answer`` (matching_util.py L107-121)."""
    answer = answer.lower()
    if len(answer) > 2 * sum(len(str(v)) for v in choices.values()):
        return None
    cands = [k for k, v in choices.items() if str(v).lower() in answer]
    return cands[0] if len(cands) == 1 else None


def can_infer(answer: str | None, choices: Mapping[str, str]) -> str | None:
    """Option letter from a free-form answer: by letter first, then by option text; None if neither."""
    if answer is None:
        return None
    answer = str(answer)
    return can_infer_option(answer, choices) or can_infer_text(answer, choices)


def circular_rotations(options: Sequence[str], answer: str) -> list[tuple[dict[str, str], str]]:
    """Every rotation of ``options`` as ({letter: text}, answer letter in that rotation).

    Rotation k shows ``options[k:] + options[:k]`` (model_vqa_mmbench.py L137-139); the right
    option moves with it.
    """
    n = len(options)
    correct = LETTERS.index(answer)
    out = []
    for k in range(n):
        rotated = list(options[k:]) + list(options[:k])
        out.append(({LETTERS[i]: o for i, o in enumerate(rotated)}, LETTERS[(correct - k) % n]))
    return out


def mmbench_circular_hit(
    preds: Sequence[str | None], rotations: Sequence[tuple[Mapping[str, str], str]]
) -> bool:
    """1 only if every rotation's inferred option equals its answer; a missing rotation is wrong."""
    if len(preds) != len(rotations):
        return False
    return all(can_infer(p, ch) == gt for p, (ch, gt) in zip(preds, rotations))


def mcq_accuracy(hits: Iterable[bool]) -> float:
    """Accuracy x 100."""
    hits = list(hits)
    if not hits:
        raise ValueError("no questions to score")
    return 100.0 * sum(hits) / len(hits)
