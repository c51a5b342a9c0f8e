"""HTML of the report: one ``string.Template`` page (templates/page.html) and small section builders.

Every value that comes from data (alt-texts, captions, OCR text, labels, file names, recipe
fields) goes through ``esc`` — a caption may well contain ``<script>``. jinja2 is not a core
dependency (only torch pulls it), so the page is built with the standard library.
"""

from __future__ import annotations

import html
import json
import time
from collections.abc import Iterable
from importlib import resources
from string import Template
from typing import Any

from loupe.pipeline.report.data import ReportData


def esc(value: Any) -> str:
    return "" if value is None else html.escape(str(value), quote=True)


def _asset(name: str) -> str:
    return resources.files("loupe.pipeline.report").joinpath("templates", name).read_text(encoding="utf-8")


def _num(v: Any, fmt: str = "{}") -> str:
    return "" if v is None or v == "" else esc(fmt.format(v))


def _table(headers: Iterable[str], rows: Iterable[str], attrs: str = "") -> str:
    head = "".join(
        f'<th class="{"num" if h.startswith("#") else ""}">{esc(h.lstrip("#"))}</th>' for h in headers
    )
    return f"<table {attrs}><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


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

    def cell(self, uid: str, title: str = "") -> str:
        """A sample's thumbnail as a cell of a sprite sheet (see images.SpriteSheets)."""
        if uid not in self.cells:
            return f'<span class="noimg" title="{esc(title)}">no image</span>'
        k, x, y = self.cells[uid]
        return (
            f'<i class="sp s{k}" role="img" aria-label="{esc(title)}" title="{esc(title)}" '
            f'style="background-position:-{x}px -{y}px"></i>'
        )

    def sprite_assets(self) -> str:
        """Per-sheet CSS classes, and each sheet as a hidden <img>: the load event waits for it
        and the page's image check (report.js) covers it."""
        css = "".join(f".s{k}{{background-image:url('{esc(p)}')}}" for k, p in enumerate(self.sprites))
        imgs = "".join(f'<img src="{esc(p)}" alt="">' for p in self.sprites)
        return f'<style>{css}</style><div class="sprite-preload" hidden>{imgs}</div>'

    def thumb(self, uid: str | None, title: str = "") -> str:
        if uid and uid in self.thumbs:
            return f'<img class="thumb" src="{esc(self.thumbs[uid])}" alt="{esc(title or uid[:12])}" title="{esc(title)}">'
        return f'<span class="noimg" title="{esc(title)}">no image</span>'


def summary_section(d: ReportData) -> str:
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
    for sid, s in stages.items():
        for k, v in s.items():
            if k.endswith("model") and v:
                keys.append((f"{sid} {k.replace('_', ' ')}", v))
    kv = "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in keys if v is not None)
    order = m.get("stage_order") or list(stages)
    rows = []
    for sid in order + [s for s in stages if s not in order]:
        s = stages.get(sid, {})
        rows.append(
            f'<tr data-stage="{esc(sid)}"><td>{esc(sid)}</td><td>{esc(s.get("status", "not run"))}</td>'
            f'<td class="num">{_num(s.get("rows_in"))}</td><td class="num">{_num(s.get("rows_out"))}</td>'
            f'<td class="num">{_num(s.get("drops"))}</td><td class="num">{_num(s.get("skipped_done"))}</td>'
            f'<td class="num">{_num(s.get("seconds"), "{:.2f}")}</td>'
            f'<td class="num">{_num(s.get("items_per_s"))}</td></tr>'
        )
    table = _table(
        ["stage", "status", "#rows in", "#rows out", "#drops", "#skipped (done)", "#seconds", "#items/s"],
        rows,
        'id="stage-table"',
    )
    return f'<section id="summary"><h2>Run summary</h2><dl class="kv">{kv}</dl>{table}</section>'


def funnel_section(d: ReportData, plot: str | None) -> str:
    rows = [
        f'<tr data-stage="{esc(f.stage)}" data-survivors="{f.survivors}"><td>{esc(f.stage)}</td>'
        f'<td class="num">{f.survivors}</td><td class="num">{f.dropped}</td></tr>'
        for f in d.funnel
    ]
    img = f'<img src="{esc(plot)}" alt="funnel plot">' if plot else ""
    table = _table(["stage", "#samples surviving", "#dropped here"], rows, 'id="funnel-table"')
    return (
        '<section id="funnel"><h2>Funnel</h2><p class="muted">Samples still in the dataset after each '
        'stage; "input" counts every file or url seen, including those that failed to decode.</p>'
        f'<div class="figs"><div>{img}</div><div>{table}</div></div></section>'
    )


def drops_section(d: ReportData, im: Images) -> str:
    rows = []
    for r in d.drop_reasons:
        ex = "".join(
            f"<figure>{im.thumb(e['uid'] if e['has_image'] else None, e.get('detail') or '')}"
            f"<figcaption>{esc(e.get('detail'))}</figcaption></figure>"
            for e in r["examples"] or []
        )
        rows.append(
            f'<tr data-reason="{esc(r["reason"])}"><td>{esc(r["stage"])}</td><td><code>{esc(r["reason"])}</code></td>'
            f'<td class="num">{r["n"]}</td><td><div class="figs">{ex}</div></td></tr>'
        )
    body = (
        _table(["stage", "reason", "#count", "examples"], rows, 'id="drops-table"')
        if rows
        else "<p>No drops.</p>"
    )
    return f'<section id="drops"><h2>Drop reasons</h2>{body}</section>'


def duplicates_section(d: ReportData, im: Images) -> str:
    parts = []
    for g in d.dup_groups:
        members = "".join(
            f"<figure>{im.thumb(m['uid'], 'duplicate')}<figcaption>sim "
            f"{_num(m.get('similarity'), '{:.3f}')}</figcaption></figure>"
            for m in g["members"] or []
        )
        more = (
            f'<span class="muted">+{g["n"] - len(g["members"] or [])} more</span>'
            if g["n"] > len(g["members"] or [])
            else ""
        )
        parts.append(
            f'<div class="group" data-method="{esc(g["method"])}" data-size="{g["n"] + 1}">'
            f'<figure class="kept">{im.thumb(g["representative"], "kept")}<figcaption>kept · {esc(g["method"])} '
            f"cluster {esc(g['cluster'])}</figcaption></figure>{members}{more}</div>"
        )
    body = "".join(parts) or "<p>No duplicate groups (no dedup stage, or no duplicates found).</p>"
    if d.clusters:
        counts = ", ".join(f"{esc(k)}: {v} clusters" for k, v in d.n_clusters.items())
        rows = [
            f'<tr><td>{esc(c["method"])}</td><td class="num">{esc(c["cluster"])}</td>'
            f'<td class="num">{esc(c["size"])}</td><td>{im.thumb(c["representative"], "representative")}</td></tr>'
            for c in d.clusters
        ]
        body += f"<h3>Largest clusters</h3><p>{counts}</p>" + _table(
            ["method", "#cluster", "#size", "representative"], rows, 'id="cluster-table"'
        )
    return f'<section id="duplicates"><h2>Duplicate clusters</h2><p class="muted">Green outline: the kept representative; then the members removed as its duplicates.</p>{body}</section>'


def experts_section(d: ReportData, im: Images) -> str:
    cards = []
    for uid, ov in d.overlays.items():
        src = im.overlays.get(uid)
        img = f'<img src="{esc(src)}" alt="overlay {esc(uid[:12])}">' if src else im.thumb(uid)
        ocr = "".join(
            f'<li class="ocr-line">{esc(r["text"])} <span class="muted">{_num(r.get("score"), "{:.2f}")}</span></li>'
            for r in ov["ocr"]
        )
        det = "".join(
            f'<li class="det-line">{esc(r["label"])} <span class="muted">{_num(r.get("score"), "{:.2f}")}</span></li>'
            for r in ov["detect"]
        )
        cards.append(
            f'<div class="card" data-uid="{esc(uid)}">{img}'
            + (f"<div>OCR</div><ul>{ocr}</ul>" if ocr else "")
            + (f"<div>detections</div><ul>{det}</ul>" if det else "")
            + "</div>"
        )
    body = (
        f'<div class="figs">{"".join(cards)}</div>'
        if cards
        else "<p>No OCR or detection results in this run.</p>"
    )
    return (
        '<section id="experts"><h2>Expert overlays</h2><p class="muted">'
        '<span class="ocr-line">green</span>: OCR lines; <span class="det-line">orange</span>: detections.</p>'
        f"{body}</section>"
    )


def _evidence(ev: dict[str, Any]) -> str:
    out = []
    if ev.get("alt_text"):
        out.append(f"<div>alt-text: {esc(ev['alt_text'])}</div>")
    for key, label, fmt in (
        ("ocr", "OCR", lambda r: f"{r.get('text')} {r.get('box')}"),
        ("detect", "detections", lambda r: f"{r.get('label')} {r.get('box')}"),
        ("tags", "tags", lambda r: f"{r.get('tag')} {r.get('score', '')}".strip()),
    ):
        items = ev.get(key) or []
        if isinstance(items, list) and items:
            lis = "".join(f"<li>{esc(fmt(r) if isinstance(r, dict) else r)}</li>" for r in items)
            out.append(f"<div>{label}</div><ul>{lis}</ul>")
    rest = {k: v for k, v in ev.items() if k not in ("alt_text", "ocr", "detect", "tags")}
    if rest:
        out.append(f'<div class="mono">{esc(json.dumps(rest, ensure_ascii=False)[:600])}</div>')
    return "".join(out) or '<span class="muted">no evidence</span>'


def captions_section(d: ReportData, im: Images) -> str:
    rows = []
    for c in d.captions:
        src = im.overlays.get(c["uid"])
        img = f'<img class="thumb" src="{esc(src)}" alt="overlay">' if src else im.thumb(c["uid"])
        flags = []
        if c.get("hallucinated"):
            flags.append(f'<div class="warn">not in evidence: {esc(", ".join(c["hallucinated"]))}</div>')
        for k in ("ocr_coverage", "label_coverage"):
            if c.get(k) is not None:
                flags.append(f'<div class="muted">{k.replace("_", " ")} {c[k]:.2f}</div>')
        rows.append(
            f'<tr data-uid="{esc(c["uid"])}"><td>{img}</td><td class="caption">{esc(c["caption"])}'
            f'<div class="muted">{esc(c.get("backend"))} · {esc(c.get("model"))} · {_num(c.get("n_words"))} words</div>'
            f'{"".join(flags)}</td><td class="evidence">{_evidence(c["evidence"])}</td></tr>'
        )
    body = (
        _table(["image", "caption", "evidence"], rows, 'id="caption-table"')
        if rows
        else "<p>No captions in this run.</p>"
    )
    return f'<section id="captions"><h2>Captions and their evidence</h2>{body}</section>'


def lengths_section(d: ReportData, plots: dict[str, str | None]) -> str:
    figs = []
    for key, what in (("tokens", "token lengths (export records)"), ("words", "caption lengths (words)")):
        src = plots.get(key)
        figs.append(
            f'<img src="{esc(src)}" alt="{esc(what)}">' if src else f"<p>No {esc(what)} in this run.</p>"
        )
    tok = d.token_stats.get("tokens") or {}
    stats = ""
    if tok:
        kv = [("tokenizer", d.token_stats.get("tokenizer")), ("records", d.token_stats.get("records"))]
        kv += [(k, tok.get(k)) for k in ("total", "mean", "p50", "p95", "max")]
        stats = (
            '<dl class="kv">'
            + "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in kv if v is not None)
            + "</dl>"
        )
    return f'<section id="lengths"><h2>Lengths</h2>{stats}<div class="figs">{"".join(figs)}</div></section>'


def quality_section(d: ReportData) -> str:
    """Dataset-quality metrics (``loupe eval --run``; definitions in ``eval/quality.py``)."""
    q = d.extra.get("quality")
    if not q:
        return ""
    from loupe.eval.quality import flatten

    rows = [
        f'<tr><td>{esc(k)}</td><td class="num">{esc(f"{v:.3f}" if isinstance(v, float) else v)}</td></tr>'
        for k, v in flatten(q)
    ]
    return (
        '<section id="quality"><h2>Dataset quality</h2><p>The numbers <code>loupe eval --run</code> prints: '
        "caption length, evidence coverage, object-word hallucination against detections and tags "
        "(CHAIR), OCR density, dedup and drop ratios, token statistics.</p>"
        + _table(["metric", "value"], rows)
        + "</section>"
    )


def samples_section(d: ReportData, im: Images) -> str:
    rows = []
    for s in d.samples:
        status = "dropped" if s["dropped"] else "live"
        text = s["caption"] or s["alt_text"] or ""
        rows.append(
            f'<tr data-status="{status}" class="{status}" data-uid="{esc(s["uid"])}"><td>{im.cell(s["uid"], s["source_id"] or "")}</td>'
            f"<td><code>{esc(s['uid'][:12])}</code></td><td>{esc(s['source'])}</td><td>{esc(s['source_id'])}</td>"
            f'<td class="num">{_num(s["width"])}×{_num(s["height"])}</td><td>{esc(s["dropped"] or "live")}</td>'
            f"<td>{esc(text[:300])}</td><td>{esc((s['ocr'] or '')[:200])}</td></tr>"
        )
    shown = (
        f"first {len(d.samples)} of {d.n_samples}" if d.n_samples > len(d.samples) else f"all {d.n_samples}"
    )
    controls = (
        '<div id="sample-filter"><input id="sample-search" type="search" placeholder="filter: file, uid, caption, OCR text…">'
        '<select id="sample-status"><option value="all">all</option><option value="live">live</option>'
        '<option value="dropped">dropped</option></select><span id="sample-count" class="muted"></span></div>'
    )
    table = _table(
        ["image", "uid", "source", "source id", "#size", "status", "caption / alt-text", "OCR"],
        rows,
        'id="sample-table"',
    )
    return f'<section id="samples"><h2>Samples ({shown})</h2>{im.sprite_assets()}{controls}{table}</section>'


def render_page(d: ReportData, im: Images, plots: dict[str, str | None]) -> str:
    m = d.manifest
    body = "\n".join(
        [
            summary_section(d),
            funnel_section(d, plots.get("funnel")),
            drops_section(d, im),
            duplicates_section(d, im),
            experts_section(d, im),
            captions_section(d, im),
            lengths_section(d, plots),
            quality_section(d),
            samples_section(d, im),
        ]
    )
    return Template(_asset("page.html")).substitute(
        title=esc(f"Loupe report · {m.get('recipe', '?')} · {m.get('lineage', '?')}"),
        css=_asset("report.css"),
        js=_asset("report.js"),
        body=body,
        version=esc(m.get("loupe_version", "")),
        generated=esc(time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())),
    )
