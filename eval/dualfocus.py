"""DualFocus inference (Cao et al. 2024): answer on the whole image and on a zoomed sub-region,
keep the answer the model itself finds more likely.

Written from the official evaluation code, InternLM/InternLM-XComposer @ 0f70c3e,
``projects/DualFocus/dualfocus/eval/model_vqa_{textvqa,seed,gqa,mmbench}.py`` and
``dualfocus/misc/{boxes,eval}.py``; per question:

1. base answer: the usual prompt on the full image (model_vqa_textvqa.py L104-110);
2. box: ask ``"Please provide the bounding box coordinate of the region this question asks:
   {question}"`` (L113) and take the first 4-number group (``find_boxes``, boxes.py L53-61);
3. geometry (L125-133): scale the normalised box to pixels (``denorm_bbox``), make it a square of
   side ``max(w, h)`` around its centre clipped to the image (``expand_box``, which also rejects a
   box still <= 1 in every coordinate), grow it by 25 px per side and clip again (``enlarge_box``),
   truncate to int and crop ``[y1:y2, x1:x2]``;
4. focus answer: a second turn ``"Please combine the information from these two images and answer
   this question: {prompt}"`` with the full image and the crop (L139-152), stripped of ``\\n``/``.``;
5. selection ("PPL", L154-187): both answers are scored by mean token cross-entropy under the
   scoring prompt (box turn, its answer, then ``"Please combine ... this question: {question}\\n
   Answer the question using a single word or phrase"``); the lower loss wins, the base answer on
   a tie (``argmin``).

When no box parses, or the crop is empty, the base answer is returned. (Upstream's TextVQA script
would then score a stale ``cot_answer`` left from the previous question -- a bug not reproduced.)
Multiple-choice tasks (SEED, GQA-MCQ, MMBench; seed.py L111-209, ``process_outputs`` in eval.py)
first map each answer to a letter; if only one of the two is a valid letter it wins, if neither the
base answer stands, and only when both are valid are the two *option texts* scored.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from loupe.eval.model import IMAGE, VLM, Query

BOX_PROMPT = "Please provide the bounding box coordinate of the region this question asks: {question}"
FOCUS_PROMPT = "Please combine the information from these two images and answer this question: {prompt}"
SCORE_PROMPT = (
    "Please combine the information from these two images and answer this question: {question}\n"
    "Answer the question using a single word or phrase"
)
ENLARGE_PX = 25
MCQ_LETTERS = ("A", "B", "C", "D")
_BOX = re.compile(r"\d+\.?\d*,\s*\d+\.?\d*,\s*\d+\.?\d*,\s*\d+\.?\d*")


def parse_box(text: str) -> tuple[float, float, float, float] | None:
    """The first ``x1, y1, x2, y2`` number group of a model answer (``find_boxes``), or None."""
    m = _BOX.search(text or "")
    if not m:
        return None
    x1, y1, x2, y2 = (float(v) for v in m.group(0).split(","))
    return x1, y1, x2, y2


def focus_crop_box(
    box: Sequence[float], width: int, height: int, enlarge: int = ENLARGE_PX
) -> tuple[int, int, int, int] | None:
    """Pixel crop ``(x1, y1, x2, y2)`` for a normalised box (steps 3 of the module docstring), or
    None where upstream raises (box not in pixels after scaling) or the crop would be empty."""
    x1, y1, x2, y2 = box[0] * width, box[1] * height, box[2] * width, box[3] * height
    if max(x1, y1, x2, y2) <= 1.0:  # expand_box's assert: not a pixel box
        return None
    w_max, h_max = float(width - 1), float(height - 1)
    cx, cy = (x1 + x2) / 2.0, (y1 + y2) / 2.0
    side = max(x2 - x1, y2 - y1)
    sq = (cx - side / 2.0, cy - side / 2.0, cx + side / 2.0, cy + side / 2.0)
    sq = (
        min(max(sq[0], 0.0), w_max),
        min(max(sq[1], 0.0), h_max),
        min(max(sq[2], 0.0), w_max),
        min(max(sq[3], 0.0), h_max),
    )
    big = (sq[0] - enlarge, sq[1] - enlarge, sq[2] + enlarge, sq[3] + enlarge)
    big = (
        min(max(big[0], 0.0), w_max),
        min(max(big[1], 0.0), h_max),
        min(max(big[2], 0.0), w_max),
        min(max(big[3], 0.0), h_max),
    )
    ix1, iy1, ix2, iy2 = (int(v) for v in big)  # astype(np.int32) truncates
    if ix2 <= ix1 or iy2 <= iy1:
        return None
    return ix1, iy1, ix2, iy2


def mcq_letter(answer: str, options: Sequence[str]) -> str:
    """DualFocus ``process_outputs`` (misc/eval.py): a longer answer starting with a/b/c/d becomes
    that first character; otherwise the first option contained in it (or containing it) gives the
    letter; a one-character answer is kept as is."""
    if len(answer) > 1:
        if answer[0].lower() in ("a", "b", "c", "d"):
            return answer[0]
        for i, option in enumerate(options):
            if answer.lower() in option.lower() or option.lower() in answer.lower():
                return chr(ord("A") + i)
    return answer


@dataclass
class DualFocusItem:
    """One question: ``prompt`` is the full task prompt (question, options, instruction);
    ``question`` the bare question the box and scoring prompts quote; ``options`` the option
    texts for multiple-choice tasks (None for open answers)."""

    image: object
    prompt: str
    question: str
    options: list[str] | None = None


@dataclass
class DualFocusResult:
    answer: str
    base_answer: str
    box_text: str = ""
    crop: tuple[int, int, int, int] | None = None
    focus_answer: str | None = None
    losses: tuple[float, float] | None = None
    chosen: str = "base"  # base | focus
    reason: str = ""
    extra: dict = field(default_factory=dict)


def _valid(letter: str, n_options: int) -> bool:
    # upstream checks A-D only and would crash indexing a letter past the last option
    return letter.upper() in MCQ_LETTERS[:n_options]


def dualfocus_answer(
    model: VLM, items: Sequence[DualFocusItem], max_new_tokens: int = 128
) -> list[DualFocusResult]:
    """Run the policy on a batch: every model call is one batched call over the questions that need it."""
    base = model.answer([Query.single(it.image, it.prompt) for it in items], max_new_tokens)
    box_turns = [(("user", f"{IMAGE}\n" + BOX_PROMPT.format(question=it.question))) for it in items]
    boxes = model.answer([Query([it.image], [t]) for it, t in zip(items, box_turns)], max_new_tokens)
    results: list[DualFocusResult] = []
    focus_idx, focus_q = [], []
    for i, it in enumerate(items):
        b = mcq_letter(base[i], it.options) if it.options is not None else base[i]
        r = DualFocusResult(answer=b, base_answer=b, box_text=boxes[i])
        results.append(r)
        box = parse_box(boxes[i])
        w, h = it.image.size
        r.crop = focus_crop_box(box, w, h) if box else None
        if r.crop is None:
            r.reason = "no box parsed" if box is None else "empty crop"
            continue
        crop_img = it.image.crop(r.crop)
        turns = [
            box_turns[i],
            ("assistant", boxes[i]),
            ("user", f"{IMAGE}\n" + FOCUS_PROMPT.format(prompt=it.prompt)),
        ]
        focus_idx.append(i)
        focus_q.append(Query([it.image, crop_img], turns, meta={"crop_image": crop_img}))
    focus = model.answer(focus_q, max_new_tokens) if focus_q else []
    score_q, score_a, score_for = [], [], []
    for i, q, fa in zip(focus_idx, focus_q, focus):
        it, r = items[i], results[i]
        fa = fa.strip("\n").strip(".")
        if it.options is not None:
            fa = mcq_letter(fa, it.options)
        r.focus_answer = fa
        if it.options is not None:
            bv, fv = _valid(r.base_answer, len(it.options)), _valid(fa, len(it.options))
            if not (bv and fv):
                if fv and not bv:
                    r.answer, r.chosen, r.reason = fa, "focus", "only the focus answer is a valid letter"
                else:
                    r.reason = (
                        "base answer is the only valid letter" if bv else "neither answer is a valid letter"
                    )
                continue
            cands = [it.options[ord(r.base_answer.upper()) - 65], it.options[ord(fa.upper()) - 65]]
        else:
            cands = [r.base_answer, fa]
        sq = Query(
            q.images,
            [q.turns[0], q.turns[1], ("user", f"{IMAGE}\n" + SCORE_PROMPT.format(question=it.question))],
        )
        for c in cands:
            score_q.append(sq)
            score_a.append(c)
        score_for.append(i)
    losses = model.answer_loss(score_q, score_a) if score_q else []
    for k, i in enumerate(score_for):
        r = results[i]
        lb, lf = losses[2 * k], losses[2 * k + 1]
        r.losses = (lb, lf)
        if lf < lb:
            r.answer, r.chosen, r.reason = r.focus_answer, "focus", "lower loss"
        else:
            r.reason = "lower or equal loss"
    return results
