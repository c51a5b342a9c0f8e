"""Pure benchmark scorers, each written from the official code it cites (see each module)."""

from loupe.eval.scorers.gqa import gqa_accuracy, gqa_correct, gqa_normalize
from loupe.eval.scorers.mcq import (
    can_infer,
    circular_rotations,
    mcq_accuracy,
    mmbench_circular_hit,
    seed_correct,
)
from loupe.eval.scorers.mme import COGNITION, PERCEPTION, mme_parse, mme_scores
from loupe.eval.scorers.pope import pope_metrics, pope_parse, pope_summary
from loupe.eval.scorers.sqa import sqa_extract_letter, sqa_img_accuracy, sqa_pred_index
from loupe.eval.scorers.vqa import answer_scores, normalize_answer, vqa_accuracy, vqa_mean_accuracy

__all__ = [
    "COGNITION", "PERCEPTION", "answer_scores", "can_infer", "circular_rotations", "gqa_accuracy",
    "gqa_correct", "gqa_normalize", "mcq_accuracy", "mme_parse", "mme_scores", "mmbench_circular_hit",
    "normalize_answer", "pope_metrics", "pope_parse", "pope_summary", "seed_correct",
    "sqa_extract_letter", "sqa_img_accuracy", "sqa_pred_index", "vqa_accuracy", "vqa_mean_accuracy",
]  # fmt: skip
