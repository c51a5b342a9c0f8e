"""Run a task with a model: batched inference -> ``predictions.jsonl`` -> ``scores.json``.

``predictions.jsonl`` has one line per model answer, in LLaVA's answer-file shape
(``question_id``, ``prompt``, ``text``, ``model_id``; DualFocus adds its trace). ``scores.json``
holds the task's scores, its ``headline`` key and value, the number of questions and of missing
predictions, and the throughput. Re-scoring a predictions file (:func:`score_predictions`) counts
every question without a prediction as wrong and says how many there were.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from loupe.eval.model import VLM, Query
from loupe.eval.tasks.base import Sample, Task
from loupe.schemas.errors import LoupeError

POLICIES = ("greedy", "dualfocus")


def infer(
    model: VLM,
    samples: list[Sample],
    batch_size: int = 8,
    policy: str = "greedy",
    max_new_tokens: int = 128,
    progress: Callable[[int, int], None] | None = None,
) -> list[dict[str, Any]]:
    """Answer every sample, ``batch_size`` questions per model call; returns prediction records."""
    if policy not in POLICIES:
        raise LoupeError(f"--policy: {policy!r} is not known; valid: {', '.join(POLICIES)}")
    if batch_size < 1:
        raise LoupeError(f"--batch-size: must be >= 1, got {batch_size}")
    out: list[dict[str, Any]] = []
    for start in range(0, len(samples), batch_size):
        chunk = samples[start : start + batch_size]
        images = [s.load_image() for s in chunk]
        if policy == "dualfocus":
            from loupe.eval.dualfocus import DualFocusItem, dualfocus_answer

            with_img = [i for i, im in enumerate(images) if im is not None]
            texts: list[str | None] = [None] * len(chunk)
            traces: list[dict] = [{} for _ in chunk]
            res = dualfocus_answer(
                model,
                [
                    DualFocusItem(images[i], chunk[i].prompt, chunk[i].question, chunk[i].options)
                    for i in with_img
                ],
                max_new_tokens,
            )
            for i, r in zip(with_img, res):
                texts[i] = r.answer
                traces[i] = {"dualfocus": {"base": r.base_answer, "box": r.box_text, "crop": r.crop, "focus": r.focus_answer,
                                           "losses": r.losses, "chosen": r.chosen, "reason": r.reason}}  # fmt: skip
            no_img = [i for i, im in enumerate(images) if im is None]
            if no_img:  # text-only questions (ScienceQA) have nothing to zoom into
                for i, t in zip(
                    no_img,
                    model.answer([Query([], [("user", chunk[i].prompt)]) for i in no_img], max_new_tokens),
                ):
                    texts[i] = t
        else:
            queries = [
                Query.single(im, s.prompt) if im is not None else Query([], [("user", s.prompt)])
                for s, im in zip(chunk, images)
            ]
            texts = list(model.answer(queries, max_new_tokens))
            traces = [{} for _ in chunk]
        for s, t, tr in zip(chunk, texts, traces):
            out.append({"question_id": s.qid, "prompt": s.prompt, "text": t, **tr})
        if progress:
            progress(len(out), len(samples))
    return out


def limit_samples(samples: list[Sample], limit: int | None) -> list[Sample]:
    """The first ``limit`` questions, never cutting a group of rotations (MMBench) in two."""
    if not limit or limit >= len(samples):
        return samples
    end = limit
    group = samples[end - 1].gt.get("group")
    while group is not None and end < len(samples) and samples[end].gt.get("group") == group:
        end += 1
    return samples[:end]


def read_predictions(path: str | Path) -> dict[str, str | None]:
    """``question_id -> text`` from a predictions JSONL; a malformed line is an error naming it."""
    p = Path(path)
    if not p.is_file():
        raise LoupeError(f"--predictions: {p} does not exist")
    preds: dict[str, str | None] = {}
    for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise LoupeError(f"{p}:{n}: not JSON ({e})") from None
        if not isinstance(rec, dict) or "question_id" not in rec or "text" not in rec:
            raise LoupeError(f"{p}:{n}: a prediction needs 'question_id' and 'text'")
        preds[str(rec["question_id"])] = rec["text"]
    return preds


def score_samples(task: Task, samples: list[Sample], preds: dict[str, str | None]) -> dict[str, Any]:
    """The task's scores plus the bookkeeping every scores.json carries."""
    known = {s.qid for s in samples}
    missing = [s.qid for s in samples if preds.get(s.qid) is None]
    scores = task.score(samples, preds)
    return {
        "task": task.name,
        "headline": task.headline,
        "score": scores.get(task.headline),
        "n_questions": len(samples),
        "n_missing": len(missing),
        "missing_examples": missing[:10],
        "n_unknown_ids": len(set(preds) - known),
        **scores,
    }


def score_predictions(task: Task, predictions: str | Path, limit: int | None = None) -> dict[str, Any]:
    """Score an existing predictions file against the task's annotations (missing = wrong)."""
    return score_samples(task, limit_samples(task.samples(), limit), read_predictions(predictions))


def run_task(
    task: Task,
    model: VLM,
    out_dir: str | Path,
    model_id: str = "",
    batch_size: int = 8,
    policy: str = "greedy",
    limit: int | None = None,
    max_new_tokens: int = 128,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Inference + scoring; writes ``out_dir/predictions.jsonl`` and ``out_dir/scores.json``."""
    samples = limit_samples(task.samples(), limit)
    if not samples:
        raise LoupeError(f"{task.name}: no questions found under {task.data}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    records = infer(model, samples, batch_size, policy, max_new_tokens, progress)
    seconds = time.perf_counter() - t0
    with (out / "predictions.jsonl").open("w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps({**r, "model_id": model_id}, ensure_ascii=False) + "\n")
    preds = {r["question_id"]: r["text"] for r in records}
    scores = score_samples(task, samples, preds)
    scores.update(model=model_id, policy=policy, batch_size=batch_size, seconds=round(seconds, 3),
                  questions_per_s=round(len(samples) / seconds, 3) if seconds else None)  # fmt: skip
    if task.name == "vqav2" and scores.get("accuracy") is None:
        from loupe.eval.tasks.vqa import VQAv2

        (out / "answers_upload.json").write_text(json.dumps(VQAv2.upload(samples, preds)))
    (out / "scores.json").write_text(json.dumps(scores, indent=2, default=str))
    return scores
