"""``loupe report``: a static, self-contained HTML report of a run.

``build_report(run)`` writes ``<run>/report/``::

    index.html      the page (inline CSS and JS; opens from disk, fetches nothing)
    thumbs/*.jpg    96 px thumbnails of the galleries (drops, duplicates, captions)
    sprites/*.jpg   the samples table's thumbnails, 256 to a sheet
    overlays/*.jpg  360 px images with OCR and detection boxes drawn on
    plots/*.png     funnel, token-length and caption-length plots (matplotlib, Agg)

Tables are read with duckdb (``loupe.pipeline.query.connect``); a table the run lacks reads as
empty and its section says so. See docs/report.md.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from loupe.pipeline.errors import LoupeError
from loupe.pipeline.loop.report import copy_pipeline_plots
from loupe.pipeline.query import connect
from loupe.pipeline.report.data import ReportData, read_image_bytes, read_report_data, report_path
from loupe.pipeline.report.extras import compare_captions
from loupe.pipeline.report.html import Images, render_page
from loupe.pipeline.report.images import SpriteSheets, make_thumb, thumb_name, write_overlay
from loupe.pipeline.report.plots import funnel_plot, histogram
from loupe.pipeline.rundir import TMP_PREFIX, RunDir

__all__ = ["build_report"]


#: marks a folder `loupe report` created: only such a folder (or the run's own report/) is rebuilt
MARKER = ".loupe-report"


def _check_output(run: RunDir, out: Path) -> None:
    """Refuse an output that is a file, or a non-empty folder Loupe did not write (a rebuild deletes
    its thumbs/, overlays/ and sprites/ subfolders, so they must be ours)."""
    if out.exists() and not out.is_dir():
        raise LoupeError(f"--output: {out} is a file; name a folder for the report")
    if out.is_dir() and any(out.iterdir()) and not (out / MARKER).exists():
        if not run.is_local or out.resolve() != (run.path / "report").resolve():
            raise LoupeError(
                f"--output: {out} is a non-empty folder that `loupe report` did not create; name a new "
                "or empty folder (Loupe never replaces files it did not write)"
            )


def _gallery_uids(d: ReportData) -> set[str]:
    """uids shown as separate thumbnail files (everything except the samples table)."""
    uids: set[str] = set()
    for r in d.drop_reasons:
        uids.update(e["uid"] for e in r["examples"] or [] if e["has_image"])
    for g in d.dup_groups:
        uids.add(g["representative"])
        uids.update(m["uid"] for m in g["members"] or [])
    uids.update(c["representative"] for c in d.clusters if c["representative"])
    uids.update(c["uid"] for c in d.captions)
    uids.update(d.overlays)
    for g in d.extra.get("cluster_gallery") or []:
        uids.update(m["uid"] for m in g["members"])
    uids.update(r["uid"] for r in d.extra.get("compare") or [])
    return uids


def _write_images(con, d: ReportData, out: Path) -> Images:
    dirs = {k: out / k for k in ("thumbs", "overlays", "sprites")}
    for p in dirs.values():
        shutil.rmtree(p, ignore_errors=True)  # a rebuilt report must not keep stale files
        p.mkdir(parents=True)
    gallery = _gallery_uids(d)
    table = {s["uid"] for s in d.samples}
    sheets = SpriteSheets(dirs["sprites"])
    thumbs: dict[str, str] = {}
    overlays: dict[str, str] = {}
    cells: dict[str, tuple[int, int, int]] = {}
    for uid, data in read_image_bytes(con, sorted(gallery | table)):
        thumb = make_thumb(data) if data is not None else None
        if thumb is None:
            continue
        name = thumb_name(uid)
        if uid in gallery:
            thumb.save(dirs["thumbs"] / name, format="JPEG", quality=72)
            thumbs[uid] = f"thumbs/{name}"
        if uid in table:
            cells[uid] = sheets.add(thumb)
        ov = d.overlays.get(uid)
        if ov and write_overlay(data, dirs["overlays"] / name, ov["ocr"], ov["detect"]):
            overlays[uid] = f"overlays/{name}"
    sprites = [f"sprites/{n}" for n in sheets.close()]
    return Images(thumbs, overlays, cells, sprites)


def _write_plots(d: ReportData, out: Path) -> dict:
    plots_dir = out / "plots"
    plots_dir.mkdir(parents=True, exist_ok=True)
    plots: dict = {"funnel": None, "tokens": None, "words": None}
    plots["pipeline"] = copy_pipeline_plots(d.manifest, plots_dir)
    if d.funnel:
        funnel_plot([f.stage for f in d.funnel], [f.survivors for f in d.funnel], plots_dir / "funnel.png")
        plots["funnel"] = "plots/funnel.png"
    if d.token_lengths:
        histogram(d.token_lengths, plots_dir / "tokens.png", "tokens per record", "tokens")
        plots["tokens"] = "plots/tokens.png"
    if d.caption_words:
        histogram(d.caption_words, plots_dir / "caption_words.png", "words per caption", "words")
        plots["words"] = "plots/caption_words.png"
    return plots


def build_report(
    run: RunDir | str | Path,
    output: str | Path | None = None,
    max_samples: int = 5000,
    compare: RunDir | str | Path | None = None,
) -> Path | str:
    """Write the HTML report of ``run`` to ``output`` (default ``<run>/report``); return index.html.

    ``max_samples`` caps the rows of the searchable samples table (and so the thumbnails written);
    ``compare`` (another run dir) adds a side-by-side of both runs' captions of the same samples.
    A run on an object store gets its ``report/`` there (built in a temp folder, then uploaded:
    the page links its images relatively, so the folder must be whole); ``output`` writes it locally.
    """
    run = run if isinstance(run, RunDir) else RunDir(run)
    if not run.has_manifest():
        raise LoupeError(f"{run.location!r} is not a run directory (no manifest.json)")
    if output is None and not run.is_local:
        with tempfile.TemporaryDirectory(prefix="loupe-report-") as tmp:
            build_report(run, Path(tmp) / "report", max_samples=max_samples, compare=compare)
            return _upload_report(run, Path(tmp) / "report")
    out = report_path(run, output)
    _check_output(run, out)
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text(
        "written by loupe report; its thumbs/, overlays/, sprites/ are replaced on rebuild\n"
    )
    other = None
    if compare is not None:
        other = compare if isinstance(compare, RunDir) else RunDir(compare)
        if not other.has_manifest():
            raise LoupeError(f"--compare: {other.location!r} is not a run directory (no manifest.json)")
    con = connect(run)
    try:
        d = read_report_data(con, run, max_samples=max_samples)
        if other is not None:
            ocon = connect(other)
            try:
                d.extra["compare"] = compare_captions(con, ocon)
            finally:
                ocon.close()
        images = _write_images(con, d, out)
    finally:
        con.close()
    plots = _write_plots(d, out)
    index = out / "index.html"
    tmp = out / f"{TMP_PREFIX}index.html"
    page = render_page(
        d, images, plots, compare=d.extra.get("compare"), compare_path=other.location if other else None
    )
    tmp.write_text(page, encoding="utf-8")
    os.replace(tmp, index)  # a reader never sees half a page
    return index


def _upload_report(run: RunDir, folder: Path) -> str:
    """Replace the run's ``report/`` with ``folder``; index.html goes last, so a reader that finds it
    finds its thumbnails and plots too. Returns the page's URI."""
    run.delete_dir("report")
    files = sorted((p for p in folder.rglob("*") if p.is_file()), key=lambda p: p.name == "index.html")
    for p in files:
        run.write_bytes(f"report/{p.relative_to(folder).as_posix()}", p.read_bytes())
    return f"{run.location}/report/index.html"
