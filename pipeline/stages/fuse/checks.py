"""Caption checks: length, evidence coverage and hallucination flags.

* ``ocr_coverage`` - share of the OCR words (alphanumeric tokens of 2+ characters) that appear
  in the caption; None when the image has no OCR text.
* ``label_coverage`` - share of distinct detected labels named in the caption; None without boxes.
* ``hallucinated`` - object nouns from the known object vocabulary (COCO/ImageNet/tag vocabulary)
  that the caption names but no evidence mentions (alt-text, tags, labels, OCR).
* ``repetition`` - word n-gram repetition ratio, Data-Juicer's ``word_repetition_filter``
  (data_juicer/ops/filter/word_repetition_filter.py, ``compute_stats_batched``): over the caption's
  lower-cased words, the occurrences of n-grams that occur more than once divided by all n-grams
  (0 for a caption shorter than n). A looping LLM ("a cat is a cat is a cat ...") scores near 1.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from loupe.pipeline.stages.fuse.prompt import Evidence

WORD = re.compile(r"[a-z0-9]+")
VOCAB_DIR = Path(__file__).resolve().parents[3] / "experts" / "vocab"
# Tag-vocabulary words that name the picture's medium or lighting rather than a thing in it ("text in
# the image reads", "a portrait image", "light blue"): naming them is not an object hallucination.
NOT_OBJECTS = frozenset(
    {"text", "portrait", "document", "page", "screenshot", "website", "drawing", "painting", "cartoon",
     "diagram", "chart", "light", "night", "space", "field"}
)  # fmt: skip


def words(text: str | None) -> list[str]:
    return WORD.findall((text or "").lower())


def _singular(w: str) -> str:
    if len(w) > 3 and w.endswith("ies"):
        return w[:-3] + "y"
    if len(w) > 3 and w.endswith("es") and w[-3] in "sxz":
        return w[:-2]
    if len(w) > 2 and w.endswith("s") and not w.endswith(("ss", "us", "is")):  # bus, cactus, iris
        return w[:-1]
    return w


def _stems(text: str | None) -> set[str]:
    return {_singular(w) for w in words(text)}


@lru_cache(maxsize=1)
def object_vocabulary() -> frozenset[str]:
    """Single-word object names from the shipped tag vocabulary and ImageNet classes."""
    out: set[str] = set()
    for name in ("tags.txt", "imagenet.tsv"):
        p = VOCAB_DIR / name
        if not p.is_file():
            continue
        for line in p.read_text(encoding="utf-8").splitlines():
            if not line or line.startswith("#"):
                continue
            fields = line.split("\t")
            for label in fields[1:] if name.endswith(".tsv") else fields[:1]:
                ws = words(label)
                if len(ws) == 1 and len(ws[0]) > 2:
                    out.add(_singular(ws[0]))
    return frozenset(out - NOT_OBJECTS)


def ngram_repetition(text: str | None, n: int = 4) -> float:
    """Share of word n-gram occurrences whose n-gram occurs more than once (see module docstring)."""
    ws = words(text)
    grams = Counter(tuple(ws[i : i + n]) for i in range(len(ws) - n + 1))
    total = sum(grams.values())
    return sum(c for c in grams.values() if c > 1) / total if total else 0.0


@dataclass
class CaptionCheck:
    n_words: int
    ocr_coverage: float | None
    label_coverage: float | None
    hallucinated: list[str]
    repetition: float = 0.0


def check_caption(caption: str, ev: Evidence, repetition_ngram: int = 4) -> CaptionCheck:
    cap_words = set(words(caption))
    cap_stems = {_singular(w) for w in cap_words}
    ocr_words = [w for o in ev.ocr for w in words(o["text"]) if len(w) >= 2]
    ocr_cov = sum(w in cap_words for w in ocr_words) / len(ocr_words) if ocr_words else None
    labels = sorted({b["label"] for b in ev.boxes})
    label_cov = (
        sum(all(_singular(w) in cap_stems for w in words(lb)) for lb in labels) / len(labels)
        if labels
        else None
    )
    seen = _stems(ev.alt_text)
    for b in ev.boxes:
        seen |= _stems(b["label"])
    for t in ev.tags:
        seen |= _stems(t["tag"])
    for o in ev.ocr:
        seen |= _stems(o["text"])
    vocab = object_vocabulary()
    hallucinated = sorted(s for s in cap_stems if s in vocab and s not in seen)
    rep = ngram_repetition(caption, repetition_ngram)
    return CaptionCheck(len(caption.split()), ocr_cov, label_cov, hallucinated, rep)
