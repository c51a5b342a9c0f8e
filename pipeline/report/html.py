"""HTML of the report: jinja2 templates (templates/report.html.j2 and the blocks it includes,
templates/train.html.j2 for a training output) with autoescape on.

Every value that comes from data (alt-texts, captions, OCR text, labels, file names, recipe fields)
is escaped by jinja2's autoescape — a caption may well contain ``<script>``; only the bundled CSS and
JS go in unescaped. This module builds the template's context from :class:`ReportData`.
"""

from __future__ import annotations

import json
import time
from functools import lru_cache
from importlib import resources
from typing import Any

from loupe.pipeline.loop.report import pipeline_context
from loupe.pipeline.report.data import ReportData
from loupe.pipeline.report.extras import REPETITIVE, cluster_colour


def _asset(name: str) -> str:
    return resources.files("loupe.pipeline.report").joinpath("templates", name).read_text(encoding="utf-8")


@lru_cache(maxsize=1)
def _environment():
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FunctionLoader(lambda name: _asset(name)),
        autoescape=True,
        trim_blocks=False,
    )
    return env


class Images:
    """Relative paths of the thumbnails and overlays that were written, by uid."""

    def __init__(
        self,
        thumbs: dict[str, str],
        overlays: dict[str, str],
        cells: dict[str, tuple[int, int, int]] | None = None,
        sprites: list[str] | None = None,
    ):
        self.thumbs, self.overlays = thumbs, overlays
        self.cells, self.sprites = cells or {}, sprites or []


def _evidence_rest(ev: dict[str, Any]) -> str:
    rest = {k: v for k, v in ev.items() if k not in ("alt_text", "ocr", "detect", "tags")}
    return json.dumps(rest, ensure_ascii=False)[:600] if rest else ""


#: numeric range filters of the samples table: (data attribute, label, step)
RANGES = [("short-edge", "short edge", "1"), ("words", "caption words", "1"),
          ("ocr-coverage", "OCR coverage", "0.05"), ("repetition", "repetition", "0.05")]  # fmt: skip


def render_page(
    d: ReportData,
    im: Images,
    plots: dict[str, str | None],
    compare: list[dict] | None = None,
    compare_path: str | None = None,
) -> str:
    m = d.manifest
    keys = [
        ("recipe", m.get("recipe")),
        ("recipe file", m.get("recipe_path")),
        ("lineage hash", m.get("lineage")),
        ("status", m.get("status")),
        ("executor", m.get("executor")),
        ("loupe", m.get("loupe_version")),
        ("python", m.get("python")),
        ("created", m.get("created")),
        ("updated", m.get("updated")),
        ("samples", d.n_samples),
    ]
    stages = m.get("stages") or {}
    for sid, st in stages.items():
        for k, v in st.items():
            if k.endswith("model") and v:
                keys.append((f"{sid} {k.replace('_', ' ')}", v))
    order = m.get("stage_order") or list(stages)
    warnings = [
        f"{sid}: captions by {st['smoke_test_model']}, a smoke-test model: they check the pipeline, they are "
        "not training data"
        for sid, st in stages.items()
        if st.get("smoke_test_model")
    ]
    tok = d.token_stats.get("tokens") or {}
    token_kv = []
    if tok:
        token_kv = [("tokenizer", d.token_stats.get("tokenizer")), ("records", d.token_stats.get("records"))]
        token_kv += [(k, tok.get(k)) for k in ("total", "mean", "p50", "p95", "max")]
        token_kv = [(k, v) for k, v in token_kv if v is not None]
    quality_rows = []
    if d.extra.get("quality"):
        from loupe.eval.quality import flatten

        quality_rows = list(flatten(d.extra["quality"]))
    shown = (
        f"first {len(d.samples)} of {d.n_samples}" if d.n_samples > len(d.samples) else f"all {d.n_samples}"
    )
    return (
        _environment()
        .get_template("report.html.j2")
        .render(
            title=f"Loupe report · {m.get('recipe', '?')} · {m.get('lineage', '?')}",
            css=_asset("report.css"),
            js=_asset("report.js"),
            d=d,
            im=im,
            plots=plots,
            summary_kv=[(k, v) for k, v in keys if v is not None],
            stage_rows=[(sid, stages.get(sid, {})) for sid in order + [s for s in stages if s not in order]],
            warnings=warnings,
            gallery=d.extra.get("cluster_gallery") or [],
            points=d.extra.get("map") or [],
            colour=cluster_colour,
            repetitive=REPETITIVE,
            evidence_rest=_evidence_rest,
            compare=compare,
            compare_path=compare_path,
            token_kv=token_kv,
            quality_rows=quality_rows,
            pipeline=pipeline_context(m, plots.get("pipeline") or {}),
            shown=shown,
            ranges=RANGES,
            version=m.get("loupe_version", ""),
            generated=time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        )
    )
