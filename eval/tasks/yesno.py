"""Yes/no tasks: POPE and MME, with LLaVA-1.5's short-answer prompt."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from loupe.eval.scorers.mme import COGNITION, PERCEPTION, mme_scores
from loupe.eval.scorers.pope import pope_metrics, pope_summary
from loupe.eval.tasks.base import SHORT_ANSWER, Sample, Task, register
from loupe.schemas.errors import LoupeError

POPE_SPLITS = ("adversarial", "popular", "random")
IMAGE_EXTS = (".jpg", ".png", ".jpeg", ".JPG", ".PNG")


@register
class POPE(Task):
    """POPE on COCO: one ``coco/coco_pope_<split>.json`` per split (JSON lines with ``question_id``,
    ``image``, ``text``, ``label``), images in ``val2014/``. Prompt ``{text}\\n{SHORT_ANSWER}``
    (``llava_pope_test.jsonl``). Headline: mean F1 over the splits, x100."""

    name = "pope"
    headline = "f1"
    files = "coco/coco_pope_{adversarial,popular,random}.json and val2014/<image>"

    def samples(self) -> list[Sample]:
        out = []
        for split in self.options.get("splits") or POPE_SPLITS:
            p = self.file("coco", f"coco_pope_{split}.json")
            for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    q = json.loads(line)
                    qid, image, text, label = q["question_id"], q["image"], q["text"], q["label"]
                except (json.JSONDecodeError, KeyError) as e:
                    raise LoupeError(f"pope: {p}:{n}: not a POPE question line ({e})") from None
                out.append(
                    Sample(
                        f"{split}/{qid}",
                        self.data / "val2014" / image,
                        f"{text}\n{SHORT_ANSWER}",
                        text,
                        gt={"split": split, "label": label},
                    )
                )
        return out

    def score(self, samples: list[Sample], preds: dict[str, str | None]) -> dict[str, Any]:
        per: dict[str, Any] = {}
        for split in dict.fromkeys(s.gt["split"] for s in samples):
            sub = [s for s in samples if s.gt["split"] == split]
            per[split] = pope_metrics([preds.get(s.qid) for s in sub], [s.gt["label"] for s in sub])
        return {**pope_summary(per), "splits": per}


def _mme_root(data: Path) -> Path:
    inner = data / "MME_Benchmark_release_version"
    return inner if inner.is_dir() else data


@register
class MME(Task):
    """MME: ``MME_Benchmark_release_version/<subtask>/`` holding either ``images/`` +
    ``questions_answers_YN/`` or image/``.txt`` pairs side by side; each ``.txt`` has two lines
    ``question<TAB>Yes|No``. LLaVA-1.5's prompt replaces the question's "Please answer yes or no."
    by ``\\n{SHORT_ANSWER}`` (its ``convert_answer_to_mme.py`` undoes exactly that to find the
    ground truth). Headline: perception (10 subtasks, max 2000)."""

    name = "mme"
    headline = "perception"
    files = "MME_Benchmark_release_version/<14 subtask folders> (each with questions_answers_YN/ + images/, or .txt + image pairs)"

    def samples(self) -> list[Sample]:
        root = _mme_root(self.data)
        out = []
        for task in self.options.get("subtasks") or (*PERCEPTION, *COGNITION):
            d = root / task
            if not d.is_dir():
                raise LoupeError(f"mme: missing subtask folder {d} (expected under --data: {self.files})")
            qa_dir, img_dir = (
                (d / "questions_answers_YN", d / "images") if (d / "images").is_dir() else (d, d)
            )
            for txt in sorted(qa_dir.glob("*.txt")):
                image = next(
                    (img_dir / (txt.stem + e) for e in IMAGE_EXTS if (img_dir / (txt.stem + e)).exists()),
                    None,
                )
                if image is None:
                    raise LoupeError(f"mme: no image for {txt} in {img_dir}")
                for n, line in enumerate(txt.read_text(encoding="utf-8").splitlines()):
                    if not line.strip():
                        continue
                    try:
                        question, answer = line.strip().split("\t")
                    except ValueError:
                        raise LoupeError(f"mme: {txt}:{n + 1}: expected 'question<TAB>answer'") from None
                    q = question.replace("Please answer yes or no.", "").strip()
                    out.append(
                        Sample(
                            f"{task}/{image.name}#{n}",
                            image,
                            f"{q}\n{SHORT_ANSWER}",
                            q,
                            gt={"task": task, "image": image.name, "answer": answer},
                        )
                    )
        return out

    def score(self, samples: list[Sample], preds: dict[str, str | None]) -> dict[str, Any]:
        return mme_scores((s.gt["task"], s.gt["image"], preds.get(s.qid), s.gt["answer"]) for s in samples)
