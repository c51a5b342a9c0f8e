"""Multiple-choice tasks: SEED-Bench-IMG, ScienceQA-IMG, MMBench (circular)."""

from __future__ import annotations

import base64
import binascii
import csv
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

from loupe.eval.scorers.mcq import circular_rotations, mcq_accuracy, mmbench_circular_hit, seed_correct
from loupe.eval.scorers.sqa import OPTIONS, sqa_img_accuracy
from loupe.eval.tasks.base import LETTER_ANSWER, Sample, Task, field_of, register
from loupe.schemas.errors import LoupeError

LETTERS = "ABCDEFGHIJ"


def letter_prompt(stem: str, options: list[str]) -> str:
    """``{stem}\\nA. {o1}\\nB. {o2}...\\n{LETTER_ANSWER}`` (LLaVA ``model_vqa_mmbench.py`` L85-99)."""
    lines = [stem] + [f"{LETTERS[i]}. {o}" for i, o in enumerate(options)]
    return "\n".join(lines) + "\n" + LETTER_ANSWER


@register
class SEED(Task):
    """SEED-Bench image questions (``data_type == "image"``) from ``SEED-Bench.json``, images in
    ``SEED-Bench-image/<data_id>`` (``llava-seed-bench.jsonl``'s prompt). Headline: accuracy x100."""

    name = "seed"
    headline = "accuracy"
    files = "SEED-Bench.json and SEED-Bench-image/<data_id>"

    def samples(self) -> list[Sample]:
        qs = field_of(self.read_json("SEED-Bench.json"), "questions", "SEED-Bench.json")
        out = []
        for q in qs:
            if q.get("data_type") != "image":
                continue
            opts = [q[f"choice_{c}"] for c in "abcd"]
            out.append(
                Sample(
                    str(q["question_id"]),
                    self.data / "SEED-Bench-image" / q["data_id"],
                    letter_prompt(q["question"], opts),
                    q["question"],
                    opts,
                    gt={"answer": q["answer"]},
                )
            )
        return out

    def score(self, samples: list[Sample], preds: dict[str, str | None]) -> dict[str, Any]:
        return {
            "accuracy": mcq_accuracy(seed_correct(preds.get(s.qid), s.gt["answer"]) for s in samples),
            "n": len(samples),
        }


@register
class ScienceQA(Task):
    """ScienceQA ``test`` split from ``problems.json`` + ``pid_splits.json``, images at
    ``images/test/<pid>/image.png``. Prompt as LLaVA-1.5's ``llava_test_CQM-A.json`` with
    ``--single-pred-prompt`` (reproduced by lmms-eval's ``scienceqa/utils.py`` ``sqa_doc_to_text``):
    ``Context: {hint}\\n`` (when a hint exists) ``{question}\\nA. ...\\n{LETTER_ANSWER}``. Every test
    question is asked (text-only ones without an image); the headline counts image questions only.
    ``fallback``: ``wrong`` (LLaVA-1.5) or ``random`` (seeded), see ``eval/scorers/sqa.py``."""

    name = "sqa"
    headline = "img_accuracy"
    files = "problems.json, pid_splits.json and images/test/<pid>/image.png"

    def samples(self) -> list[Sample]:
        split = self.options.get("split") or "test"
        splits = self.read_json("pid_splits.json")
        if split not in splits:
            raise LoupeError(f"sqa: split {split!r} not in pid_splits.json; valid: {', '.join(splits)}")
        problems = self.read_json("problems.json")
        out = []
        for pid in splits[split]:
            p = field_of(problems, pid, "problems.json")
            ctx = f"Context: {p['hint']}\n" if p.get("hint") else ""
            opts = list(p["choices"])
            img = self.data / "images" / split / pid / p["image"] if p.get("image") else None
            out.append(
                Sample(
                    pid,
                    img,
                    letter_prompt(ctx + p["question"], opts),
                    p["question"],
                    opts,
                    gt={"answer": p["answer"], "has_image": img is not None},
                )
            )
        return out

    def score(self, samples: list[Sample], preds: dict[str, str | None]) -> dict[str, Any]:
        items = ((preds.get(s.qid), len(s.options or []), s.gt["answer"], s.gt["has_image"]) for s in samples)
        return sqa_img_accuracy(
            items, fallback=self.options.get("fallback") or "wrong", seed=int(self.options.get("seed") or 0)
        )


def _mmbench_file(data: Path) -> Path:
    if data.is_file():
        return data
    found = sorted(data.glob("mmbench*.tsv")) + sorted(data.glob("MMBench*.tsv"))
    if not found:
        raise LoupeError(
            f"mmbench: missing annotation file {data}/mmbench_dev_20230712.tsv (or another MMBench .tsv)"
        )
    return found[0]


@register
class MMBench(Task):
    """MMBench (English dev ``.tsv`` with base64 images). Each question is asked in every rotation
    of its options; when the file already carries the rotated copies (``index >= 1e6``, grouped by
    ``index % 1e6`` as VLMEvalKit does) those rows are used as given. Prompt: ``{hint}\\n{question}``
    + options + ``LETTER_ANSWER`` (``model_vqa_mmbench.py`` L81-99). Headline: circular accuracy."""

    name = "mmbench"
    headline = "circular_accuracy"
    files = "mmbench_dev_20230712.tsv (or the .tsv path itself)"

    def samples(self) -> list[Sample]:
        path = _mmbench_file(self.data)
        csv.field_size_limit(sys.maxsize)
        with path.open(encoding="utf-8", newline="") as f:
            rows = list(csv.DictReader(f, delimiter="\t"))
        if not rows or "index" not in rows[0] or "question" not in rows[0]:
            raise LoupeError(f"mmbench: {path} has no 'index'/'question' columns")
        groups: dict[int, list[dict]] = defaultdict(list)
        for r in rows:
            groups[int(float(r["index"])) % 1_000_000].append(r)
        given = any(len(g) > 1 for g in groups.values())
        out = []
        for g, members in groups.items():
            members.sort(key=lambda r: int(float(r["index"])))
            main = members[0]
            try:
                image = base64.b64decode(main["image"])
            except (binascii.Error, KeyError, TypeError) as e:
                raise LoupeError(
                    f"mmbench: {path}: row index {main['index']}: bad base64 'image' ({e})"
                ) from None
            hint = main.get("hint") or ""
            hint = "" if hint.strip().lower() in ("", "nan", "none") else hint
            stem = f"{hint}\n{main['question']}" if hint else main["question"]
            if given:
                variants = []
                for k, r in enumerate(members):
                    opts = _options(r)
                    variants.append((k, opts, r.get("answer") or None))
            else:
                opts = _options(main)
                ans = main.get("answer") or None
                rots = (
                    circular_rotations(opts, ans)
                    if ans in LETTERS[: len(opts)]
                    else [
                        ({LETTERS[i]: o for i, o in enumerate(opts[k:] + opts[:k])}, None)
                        for k in range(len(opts))
                    ]
                )
                variants = [(k, list(ch.values()), gt) for k, (ch, gt) in enumerate(rots)]
            for k, opts, gt in variants:
                out.append(
                    Sample(
                        f"{g}/{k}",
                        image,
                        letter_prompt(stem, opts),
                        main["question"],
                        opts,
                        gt={"group": g, "answer": gt},
                    )
                )
        return out

    def score(self, samples: list[Sample], preds: dict[str, str | None]) -> dict[str, Any]:
        groups: dict[int, list[Sample]] = defaultdict(list)
        for s in samples:
            groups[s.gt["group"]].append(s)
        if any(s.gt["answer"] is None for s in samples):
            return {
                "circular_accuracy": None,
                "note": "no answers in this file (test split): submit predictions",
            }
        hits = []
        for members in groups.values():
            rot = [({LETTERS[i]: o for i, o in enumerate(s.options or [])}, s.gt["answer"]) for s in members]
            hits.append(mmbench_circular_hit([preds.get(s.qid) for s in members], rot))
        single = [
            mmbench_circular_hit(
                [preds.get(m[0].qid)],
                [({LETTERS[i]: o for i, o in enumerate(m[0].options or [])}, m[0].gt["answer"])],
            )
            for m in groups.values()
        ]
        return {
            "circular_accuracy": mcq_accuracy(hits),
            "vanilla_accuracy": mcq_accuracy(single),
            "n": len(groups),
        }


def _options(row: dict) -> list[str]:
    """Options A, B, ... up to the first empty one (``get_options``, model_vqa_mmbench.py L44-51)."""
    opts = []
    for c in OPTIONS[:4]:
        v = row.get(c)
        if v is None or v.strip().lower() in ("", "nan", "none"):
            break
        opts.append(v)
    return opts
