"""MME scores, from the MME release's ``eval_tool/calculation.py`` (BradyFU/Awesome-Multimodal-Large-
Language-Models, Evaluation branch; the copy LLaVA-1.5's ``scripts/v1_5/eval/mme.sh`` runs) and
VLMEvalKit's ``MME_rating`` (open-compass/VLMEvalKit @ e8e78f05, ``vlmeval/dataset/utils/yorn.py`` L50-93).

Per subtask: answers are lower-cased and parsed by ``parse_pred_ans`` -- exactly "yes"/"no", else
"yes" or "no" found in the first 4 characters, else "other" (which is always wrong). ``acc`` is the
fraction of questions right; ``acc+`` the fraction of images whose questions (two per image) are
all right; the subtask score is ``100 * acc + 100 * acc+`` (max 200). Perception is the sum over its
10 subtasks (max 2000), cognition over its 4 (max 800). LLaVA-1.5 (1510.7) and DenseFusion (1574)
report perception. A question with no prediction counts as "other", i.e. wrong.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

PERCEPTION = (
    "existence", "count", "position", "color", "posters", "celebrity", "scene", "landmark", "artwork", "OCR",
)  # fmt: skip
COGNITION = ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning")


def mme_parse(pred: str | None) -> str:
    """``parse_pred_ans`` of calculation.py on the lower-cased answer."""
    if pred is None:
        return "other"
    pred = pred.lower()
    if pred in ("yes", "no"):
        return pred
    prefix = pred[:4]
    if "yes" in prefix:
        return "yes"
    if "no" in prefix:
        return "no"
    return "other"


def mme_scores(rows: Iterable[tuple[str, str, str | None, str]]) -> dict:
    """``rows``: (subtask, image id, prediction or None, ground truth "Yes"/"No").

    Returns ``{"perception", "cognition", "total", "subtasks": {name: {"acc", "acc_plus", "score",
    "n"}}, "missing_subtasks": [...]}`` with acc and acc+ x100.
    """
    by_task: dict[str, dict[str, list[bool]]] = defaultdict(lambda: defaultdict(list))
    for task, image, pred, gt in rows:
        by_task[task][image].append(mme_parse(pred) == gt.lower())
    if not by_task:
        raise ValueError("no questions to score")
    subtasks = {}
    for task, images in by_task.items():
        answers = [ok for oks in images.values() for ok in oks]
        acc = 100.0 * sum(answers) / len(answers)
        acc_plus = 100.0 * sum(all(oks) for oks in images.values()) / len(images)
        subtasks[task] = {"acc": acc, "acc_plus": acc_plus, "score": acc + acc_plus, "n": len(answers)}
    perception = sum(subtasks[t]["score"] for t in PERCEPTION if t in subtasks)
    cognition = sum(subtasks[t]["score"] for t in COGNITION if t in subtasks)
    return {
        "perception": perception,
        "cognition": cognition,
        "total": perception + cognition,
        "subtasks": subtasks,
        "missing_subtasks": [t for t in (*PERCEPTION, *COGNITION) if t not in subtasks],
    }
