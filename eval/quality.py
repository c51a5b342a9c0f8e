"""Dataset-quality metrics of a Loupe run, computed from its tables with duckdb.

``quality_metrics(con, run_path)`` takes an open connection whose views are the run's tables
(``loupe.pipeline.query.connect``: ``samples``, ``live``, ``drops``, ``dedup``, ``ocr``, ``detect``,
``tags``, ``captions``) and returns plain numbers, grouped as:

* ``captions``: count, words per caption (mean, p10, p50, p90, max);
* ``evidence``: mean ``ocr_coverage`` / ``label_coverage`` of the captions that have OCR / boxes
  (the share of OCR words and detected labels a caption names), and the share of captions the fuse
  check flagged (``hallucinated`` non-empty: object words no evidence mentions);
* ``hallucination``: object-word hallucination against detections and tags only, CHAIR-style
  (Rohrbach et al. 2018): the object vocabulary is the head noun (last word) of every detection
  label and tag the run's experts produced; a caption word (lower-case, a trailing plural "s"
  removed) in that vocabulary but not among the words of *its own* image's labels and tags is
  hallucinated (an object the caption took from the alt-text or OCR counts too: the metric
  measures support by the visual experts only). ``chair_i`` = hallucinated mentions /
  object mentions, ``chair_s`` = captions with one or more / captions with any object mention;
* ``ocr``: OCR lines and characters per live sample, share of live samples with text;
* ``dedup``: per method, rows judged and the share kept; ``drops``: per stage, count and share of
  ingested samples; ``live_ratio`` = live / ingested;
* ``tokens``: ``export/stats.json``'s token summary (tokenizer, mean, p50, p95, max, total) when
  the run was exported.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

WORD = re.compile(r"[a-z]+")


def _stem(w: str) -> str:
    return w[:-1] if len(w) > 3 and w.endswith("s") and not w.endswith("ss") else w


def _words(text: str | None) -> list[str]:
    return [_stem(w) for w in WORD.findall((text or "").lower())]


def _pct(xs: list[float], q: float) -> float:
    if not xs:
        return 0.0
    xs = sorted(xs)
    k = (len(xs) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def _one(con, sql: str) -> Any:
    return con.execute(sql).fetchone()[0]


def object_hallucination(captions: dict[str, str], objects: dict[str, set[str]]) -> dict[str, float]:
    """CHAIR_i / CHAIR_s of ``captions`` (uid -> text) against ``objects`` (uid -> its labels and tags)."""
    # the head noun (last word) of every label: "black-and-tan coonhound" -> coonhound, "street sign"
    # -> sign; the other words ("and", colours, modifiers) name no object by themselves
    heads = (WORD.findall(o.lower()) for objs in objects.values() for o in objs)
    vocab = {_stem(ws[-1]) for ws in heads if ws and len(ws[-1]) > 2}
    mentions = halluc = with_obj = with_halluc = 0
    for uid, text in captions.items():
        seen = {_stem(w) for o in objects.get(uid, ()) for w in WORD.findall(o.lower())}
        named = {w for w in _words(text) if w in vocab}
        bad = named - seen
        mentions += len(named)
        halluc += len(bad)
        with_obj += bool(named)
        with_halluc += bool(bad)
    return {
        "object_mentions": mentions,
        "chair_i": halluc / mentions if mentions else 0.0,
        "chair_s": with_halluc / with_obj if with_obj else 0.0,
        "vocabulary": len(vocab),
    }


def quality_metrics(
    con, run_path: str | Path | None = None, stats: dict[str, Any] | None = None
) -> dict[str, Any]:
    """All metrics of the module docstring; tables a run lacks read as empty."""
    n_samples = _one(con, "SELECT count(*) FROM samples")
    n_live = _one(con, "SELECT count(*) FROM live")
    caps = con.execute(
        "SELECT uid, caption, n_words, ocr_coverage, label_coverage, hallucinated FROM captions "
        "WHERE uid IN (SELECT uid FROM live)"
    ).fetchall()
    words = [float(r[2] if r[2] is not None else len((r[1] or "").split())) for r in caps]
    ocr_cov = [r[3] for r in caps if r[3] is not None]
    lab_cov = [r[4] for r in caps if r[4] is not None]
    objects: dict[str, set[str]] = defaultdict(set)
    for uid, label in con.execute(
        "SELECT uid, label FROM detect UNION ALL SELECT uid, tag FROM tags"
    ).fetchall():
        objects[uid].add(label or "")
    ocr = con.execute(
        "SELECT count(*), coalesce(sum(length(text)), 0), count(DISTINCT uid) FROM ocr WHERE uid IN (SELECT uid FROM live)"
    ).fetchone()
    dedup = {
        m: {"judged": n, "kept_ratio": k / n if n else 0.0}
        for m, n, k in con.execute(
            "SELECT method, count(*), count(*) FILTER (WHERE kept) FROM dedup GROUP BY 1 ORDER BY 1"
        ).fetchall()
    }
    drops = {
        s: {"count": n, "ratio": n / n_samples if n_samples else 0.0}
        for s, n in con.execute(
            "SELECT stage, count(DISTINCT uid) FROM drops GROUP BY 1 ORDER BY 1"
        ).fetchall()
    }
    tokens: dict[str, Any] = {}
    if stats is None and run_path is not None and (Path(run_path) / "export" / "stats.json").is_file():
        stats = json.loads((Path(run_path) / "export" / "stats.json").read_text())
    if stats:
        tok = stats.get("tokens") or {}
        tokens = {"tokenizer": stats.get("tokenizer"), "records": stats.get("records"),
                  **{k: tok.get(k) for k in ("mean", "p50", "p95", "max", "total")}}  # fmt: skip
    return {
        "samples": n_samples,
        "live": n_live,
        "live_ratio": n_live / n_samples if n_samples else 0.0,
        "captions": {
            "count": len(caps),
            "words_mean": sum(words) / len(words) if words else 0.0,
            "words_p10": _pct(words, 0.1),
            "words_p50": _pct(words, 0.5),
            "words_p90": _pct(words, 0.9),
            "words_max": max(words) if words else 0,
        },
        "evidence": {
            "ocr_coverage_mean": sum(ocr_cov) / len(ocr_cov) if ocr_cov else None,
            "label_coverage_mean": sum(lab_cov) / len(lab_cov) if lab_cov else None,
            "flagged_hallucination_ratio": sum(bool(r[5]) for r in caps) / len(caps) if caps else 0.0,
        },
        "hallucination": object_hallucination({r[0]: r[1] for r in caps}, objects),
        "ocr": {
            "lines_per_sample": ocr[0] / n_live if n_live else 0.0,
            "chars_per_sample": ocr[1] / n_live if n_live else 0.0,
            "samples_with_text_ratio": ocr[2] / n_live if n_live else 0.0,
        },
        "dedup": dedup,
        "drops": drops,
        "tokens": tokens,
    }


def flatten(metrics: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """``[("captions.words_mean", 42.1), ...]`` for tables and the report."""
    out: list[tuple[str, Any]] = []
    for k, v in metrics.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out += flatten(v, key + ".")
        else:
            out.append((key, v))
    return out
