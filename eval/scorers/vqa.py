"""VQAv2 / TextVQA accuracy: EvalAI answer normalisation + leave-one-out soft accuracy.

Written from LLaVA's ``llava/eval/m4c_evaluator.py`` (haotian-liu/LLaVA @ c121f04), itself copied from
MMF's ``pythia/tasks/processors.py`` (EvalAIAnswerProcessor), which is what LLaVA-1.5 / DenseFusion
use to score TextVQA locally and to prepare VQAv2 test-dev uploads
(``scripts/convert_vqav2_for_submission.py``).

Normalisation (``EvalAIAnswerProcessor.__call__``, m4c_evaluator.py L213-218), in this order:

1. ``word_tokenize`` (L181-184): lower-case, delete every ``,`` and ``?``, ``'s`` -> `` 's``, strip.
   Deleting commas first is why "1,000" becomes "1000".
2. newlines / tabs -> spaces, strip (L215).
3. ``process_punctuation`` (L186-196): each mark in ``PUNCTUATIONS`` is deleted when it touches a
   space in the *input* (or the input has a digit,digit comma), otherwise replaced by a space; then
   ``PERIOD_STRIP`` deletes periods not followed by a digit. Two upstream quirks are kept on purpose:
   the look-behind is written ``(?!<=\\d)`` (a look-*ahead* for the literal "<=", so it never
   matches) and ``re.UNICODE`` is passed as ``sub``'s *count* argument, so at most 32 periods go.
4. ``process_digit_article`` (L198-211): lower-case, split on whitespace, number words "none"/"zero"
   .. "ten" -> digits, drop the articles a/an/the, then expand contractions ("isnt" -> "isn't").

Accuracy (``TextVQAAccuracyEvaluator._compute_answer_scores``, L225-246): for each of the 10 human
answers leave it out and score ``min(1, matches among the other 9 / 3)``; average the 10 values.
A prediction that normalises to no human answer scores 0. Because the 10 subsets differ only by
which answer is left out, an answer given ``c`` times out of ``n`` scores
``(c * min(1, (c-1)/3) + (n-c) * min(1, c/3)) / n`` -- the same number, computed without the
O(n^2) loop (``tests/eval/test_scorers_vqa.py`` checks both agree).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from functools import lru_cache

CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've",
    "hasnt": "hasn't", "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've",
    "hes": "he's", "howd": "how'd", "howll": "how'll", "hows": "how's", "Id've": "I'd've",
    "I'dve": "I'd've", "Im": "I'm", "Ive": "I've", "isnt": "isn't", "itd": "it'd", "itd've": "it'd've",
    "it'dve": "it'd've", "itll": "it'll", "let's": "let's", "maam": "ma'am", "mightnt": "mightn't",
    "mightnt've": "mightn't've", "mightn'tve": "mightn't've", "mightve": "might've",
    "mustnt": "mustn't", "mustve": "must've", "neednt": "needn't", "notve": "not've",
    "oclock": "o'clock", "oughtnt": "oughtn't", "ow's'at": "'ow's'at", "'ows'at": "'ow's'at",
    "'ow'sat": "'ow's'at", "shant": "shan't", "shed've": "she'd've", "she'dve": "she'd've",
    "she's": "she's", "shouldve": "should've", "shouldnt": "shouldn't", "shouldnt've": "shouldn't've",
    "shouldn'tve": "shouldn't've", "somebody'd": "somebodyd", "somebodyd've": "somebody'd've",
    "somebody'dve": "somebody'd've", "somebodyll": "somebody'll", "somebodys": "somebody's",
    "someoned": "someone'd", "someoned've": "someone'd've", "someone'dve": "someone'd've",
    "someonell": "someone'll", "someones": "someone's", "somethingd": "something'd",
    "somethingd've": "something'd've", "something'dve": "something'd've", "somethingll": "something'll",
    "thats": "that's", "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've",
    "therere": "there're", "theres": "there's", "theyd": "they'd", "theyd've": "they'd've",
    "they'dve": "they'd've", "theyll": "they'll", "theyre": "they're", "theyve": "they've",
    "twas": "'twas", "wasnt": "wasn't", "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've",
    "werent": "weren't", "whatll": "what'll", "whatre": "what're", "whats": "what's",
    "whatve": "what've", "whens": "when's", "whered": "where'd", "wheres": "where's",
    "whereve": "where've", "whod": "who'd", "whod've": "who'd've", "who'dve": "who'd've",
    "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll", "whyre": "why're",
    "whys": "why's", "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't",
    "wouldnt've": "wouldn't've", "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll",
    "y'allll": "y'all'll", "yall'd've": "y'all'd've", "y'alld've": "y'all'd've",
    "y'all'dve": "y'all'd've", "youd": "you'd", "youd've": "you'd've", "you'dve": "you'd've",
    "youll": "you'll", "youre": "you're", "youve": "you've",
}  # fmt: skip
NUMBER_MAP = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
    "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}  # fmt: skip
ARTICLES = frozenset(("a", "an", "the"))
PUNCTUATIONS = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!")  # fmt: skip
# Upstream spelling kept verbatim (see module docstring): "(?!<=\d)" is not a look-behind.
PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
COMMA_STRIP = re.compile(r"(?<=\d)(\,)+(?=\d)")
_PERIOD_COUNT = re.UNICODE  # upstream passes re.UNICODE (== 32) as Pattern.sub's count


def _process_punctuation(in_text: str) -> str:
    out_text = in_text
    has_digit_comma = COMMA_STRIP.search(in_text) is not None
    for p in PUNCTUATIONS:
        if p not in out_text:
            continue  # replace() would be a no-op either way; skipping is only faster
        if (p + " " in in_text or " " + p in in_text) or has_digit_comma:
            out_text = out_text.replace(p, "")
        else:
            out_text = out_text.replace(p, " ")
    return PERIOD_STRIP.sub("", out_text, _PERIOD_COUNT)


def _process_digit_article(in_text: str) -> str:
    words = [NUMBER_MAP.get(w, w) for w in in_text.lower().split()]
    words = [w for w in words if w not in ARTICLES]
    return " ".join(CONTRACTIONS.get(w, w) for w in words)


@lru_cache(maxsize=1 << 20)
def normalize_answer(answer: str) -> str:
    """EvalAI / m4c answer normalisation (see module docstring). Memoised: benchmark answers repeat."""
    item = answer.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()
    item = item.replace("\n", " ").replace("\t", " ").strip()
    item = _process_punctuation(item)
    return _process_digit_article(item)


def _loo_score(count: int, n: int) -> float:
    # mean over the n leave-one-out subsets of min(1, matches/3); see module docstring
    return (count * min(1.0, (count - 1) / 3) + (n - count) * min(1.0, count / 3)) / n


def answer_scores(gt_answers: Sequence[str]) -> dict[str, float]:
    """Soft score of every distinct normalised human answer (``_compute_answer_scores``)."""
    if not gt_answers:
        raise ValueError("gt_answers is empty: a VQA question needs its human answers")
    counts = Counter(normalize_answer(a) for a in gt_answers)
    n = len(gt_answers)
    return {a: _loo_score(c, n) for a, c in counts.items()}


def vqa_accuracy(pred: str | None, gt_answers: Sequence[str]) -> float:
    """Accuracy in [0, 1] of one prediction against its (usually 10) human answers.

    ``pred=None`` (no prediction for the question) scores 0, as a wrong answer.
    """
    if pred is None:
        return 0.0
    if not gt_answers:
        raise ValueError("gt_answers is empty: a VQA question needs its human answers")
    p = normalize_answer(pred)
    count = sum(1 for a in gt_answers if normalize_answer(a) == p)
    return _loo_score(count, len(gt_answers)) if count else 0.0


def vqa_mean_accuracy(preds: Iterable[str | None], gts: Iterable[Sequence[str]]) -> float:
    """Mean ``vqa_accuracy`` x 100 over paired predictions and answer lists (``eval_pred_list``)."""
    scores = [vqa_accuracy(p, g) for p, g in zip(preds, gts, strict=True)]
    if not scores:
        raise ValueError("no questions to score")
    return 100.0 * sum(scores) / len(scores)
