"""Open-answer tasks: VQAv2, TextVQA, GQA (LLaVA-1.5 prompts; scorers in ``eval/scorers``), and
``vqa_jsonl``: questions from one JSONL file (``loupe pipeline``'s held-out split)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from loupe.eval.scorers.gqa import gqa_correct
from loupe.eval.scorers.vqa import normalize_answer, vqa_accuracy
from loupe.eval.tasks.base import SHORT_ANSWER, Sample, Task, field_of, register
from loupe.schemas.errors import LoupeError


def _mean(xs: list[float]) -> float:
    return 100.0 * sum(xs) / len(xs) if xs else 0.0


@register
class VQAv2(Task):
    """VQAv2 (``--split val2014`` scored locally; ``test-dev2015`` / ``test2015`` have no answers:
    ``answers_upload.json`` for the EvalAI server is written instead, processed by
    ``EvalAIAnswerProcessor`` as LLaVA's ``scripts/convert_vqav2_for_submission.py`` does)."""

    name = "vqav2"
    headline = "accuracy"
    files = (
        "v2_OpenEnded_mscoco_<split>_questions.json, v2_mscoco_<split>_annotations.json (val) and "
        "<split>/COCO_<split>_<image_id:012d>.jpg"
    )

    def samples(self) -> list[Sample]:
        split = self.options.get("split") or "val2014"
        qs = field_of(
            self.read_json(f"v2_OpenEnded_mscoco_{split}_questions.json"), "questions", "questions file"
        )
        answers: dict[int, list[str]] = {}
        if not split.startswith("test"):
            anns = self.read_json(f"v2_mscoco_{split}_annotations.json")
            for a in field_of(anns, "annotations", "annotations file"):
                answers[a["question_id"]] = [x["answer"] for x in a["answers"]]
        image_split = "test2015" if split.startswith("test") else split
        out = []
        for q in qs:
            qid = field_of(q, "question_id", "vqav2 question")
            img = self.data / image_split / f"COCO_{image_split}_{int(q['image_id']):012d}.jpg"
            out.append(
                Sample(
                    str(qid),
                    img,
                    f"{q['question']}\n{SHORT_ANSWER}",
                    q["question"],
                    gt={"answers": answers.get(qid)},
                )
            )
        return out

    def score(self, samples: list[Sample], preds: dict[str, str | None]) -> dict[str, Any]:
        scored = [s for s in samples if s.gt.get("answers")]
        if not scored:
            return {
                "accuracy": None,
                "note": "no ground-truth answers in this split; submit answers_upload.json",
            }
        return {
            "accuracy": _mean([vqa_accuracy(preds.get(s.qid), s.gt["answers"]) for s in scored]),
            "n": len(scored),
        }

    @staticmethod
    def upload(samples: list[Sample], preds: dict[str, str | None]) -> list[dict]:
        """EvalAI upload rows: every question, a missing answer as '' (convert_vqav2_for_submission.py L43-53)."""
        return [
            {"question_id": int(s.qid), "answer": normalize_answer(preds.get(s.qid) or "")} for s in samples
        ]


@register
class TextVQA(Task):
    """TextVQA val with LLaVA-1.5's OCR-token prompt (``llava_textvqa_val_v051_ocr.jsonl``:
    ``{question}\\nReference OCR token: {tokens}\\n{SHORT_ANSWER}``, the 3-line form
    ``llava/eval/eval_textvqa.py`` L22-26 parses). ``ocr_tokens=False`` drops the OCR line.
    Predictions are matched by ``question_id`` (upstream keys by image id + question text)."""

    name = "textvqa"
    headline = "accuracy"
    files = "TextVQA_0.5.1_val.json and train_images/<image_id>.jpg"

    def samples(self) -> list[Sample]:
        data = field_of(self.read_json("TextVQA_0.5.1_val.json"), "data", "TextVQA_0.5.1_val.json")
        use_ocr = self.options.get("ocr_tokens", True)
        out = []
        for q in data:
            prompt = q["question"]
            if use_ocr and q.get("ocr_tokens"):
                prompt += "\nReference OCR token: " + ", ".join(q["ocr_tokens"])
            img = self.data / "train_images" / f"{q['image_id']}.jpg"
            out.append(
                Sample(
                    str(q["question_id"]),
                    img,
                    f"{prompt}\n{SHORT_ANSWER}",
                    q["question"],
                    gt={"answers": q["answers"]},
                )
            )
        return out

    def score(self, samples: list[Sample], preds: dict[str, str | None]) -> dict[str, Any]:
        return {
            "accuracy": _mean([vqa_accuracy(preds.get(s.qid), s.gt["answers"]) for s in samples]),
            "n": len(samples),
        }


@register
class GQA(Task):
    """GQA testdev-balanced: ``{question}\\n{SHORT_ANSWER}`` (``llava_gqa_testdev_balanced.jsonl``)."""

    name = "gqa"
    headline = "accuracy"
    files = "testdev_balanced_questions.json and images/<imageId>.jpg"

    def samples(self) -> list[Sample]:
        qs = self.read_json("testdev_balanced_questions.json")
        return [
            Sample(
                qid,
                self.data / "images" / f"{q['imageId']}.jpg",
                f"{q['question']}\n{SHORT_ANSWER}",
                q["question"],
                gt={"answer": q["answer"]},
            )
            for qid, q in qs.items()
        ]

    def score(self, samples: list[Sample], preds: dict[str, str | None]) -> dict[str, Any]:
        return {
            "accuracy": _mean([float(gqa_correct(preds.get(s.qid), s.gt["answer"])) for s in samples]),
            "n": len(samples),
        }


@register
class VQAJsonl(Task):
    """Open-answer questions from one JSONL file (``--data held-out.jsonl``), e.g. the held-out split
    ``loupe pipeline`` writes. Each line: ``question_id``, ``image`` (a path, relative to the file's
    folder or absolute), ``question``, and either ``answers`` (human answers, VQA-style) or ``answer``
    (one ground truth, counted as all ten human answers: an exact match after the EvalAI
    normalisation scores 1, anything else 0). The prompt is the bare question."""

    name = "vqa_jsonl"
    headline = "accuracy"
    files = "a .jsonl file: question_id, image, question, answers (list) or answer (string) per line"

    def samples(self) -> list[Sample]:
        import json

        if not self.data.is_file():
            raise LoupeError(f"--data: {self.name} reads one .jsonl file, got the folder {self.data}")
        out = []
        for n, line in enumerate(self.data.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            where = f"{self.data}:{n}"
            try:
                q = json.loads(line)
            except json.JSONDecodeError as e:
                raise LoupeError(f"{where}: not JSON ({e})") from None
            answers = q.get("answers") if isinstance(q, dict) else None
            if answers is None:
                answers = [str(field_of(q, "answer", where))] * 10
            image = Path(str(field_of(q, "image", where)))
            question = str(field_of(q, "question", where))
            out.append(
                Sample(
                    str(field_of(q, "question_id", where)),
                    image if image.is_absolute() else self.data.parent / image,
                    question,
                    question,
                    gt={"answers": [str(a) for a in answers]},
                )
            )
        return out

    def score(self, samples: list[Sample], preds: dict[str, str | None]) -> dict[str, Any]:
        return {
            "accuracy": _mean([vqa_accuracy(preds.get(s.qid), s.gt["answers"]) for s in samples]),
            "n": len(samples),
        }
