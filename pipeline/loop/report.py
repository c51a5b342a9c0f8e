"""The report's "Training and evaluation" section: what ``loupe pipeline`` recorded in the manifest."""

from __future__ import annotations

import html
import shutil
from pathlib import Path
from typing import Any


def _e(v: Any) -> str:
    return "" if v is None else html.escape(str(v), quote=True)


def copy_pipeline_plots(manifest: dict[str, Any], plots_dir: Path) -> dict[str, str]:
    """Copy each loop's accuracy plot into the report's plots/; returns loop hash -> relative path."""
    out: dict[str, str] = {}
    for h, entry in (manifest.get("pipeline") or {}).items():
        src = Path(entry.get("plot") or "")
        if entry.get("plot") and src.is_file():
            plots_dir.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, plots_dir / f"pipeline-{h}.png")
            out[h] = f"plots/pipeline-{h}.png"
    return out


def pipeline_section(manifest: dict[str, Any], plots: dict[str, str]) -> str:
    pipe = manifest.get("pipeline") or {}
    if not pipe:
        return ""
    parts = []
    for h, e in pipe.items():
        split = e.get("split") or {}
        head = (
            f"<p>loop <code>{_e(h)}</code> · status <b>{_e(e.get('status'))}</b> · "
            f"{_e(split.get('train'))} training records, {_e(split.get('heldout'))} held-out images · "
            f"OCR answer equals the ground truth on {_e(split.get('train_answers_equal_truth'))} of the "
            f"training records · held-out copies also in training: {_e(split.get('leaked_copies'))}</p>"
        )
        img = (
            f'<img src="{_e(plots[h])}" alt="accuracy vs steps" style="max-width:640px">'
            if h in plots
            else ""
        )
        rows = []
        for s, v in (e.get("summary") or {}).items():
            rows.append(
                f"<tr><td>{_e(s)}</td><td class='num'>{_e(v['seeds'])}</td>"
                f"<td class='num'>{100 * v['final_mean']:.1f}</td><td class='num'>{100 * v['final_std']:.1f}</td>"
                f"<td class='num'>{100 * v['final_min']:.1f}–{100 * v['final_max']:.1f}</td>"
                f"<td class='num'>{_e(v['seconds'])}</td><td class='num'>{_e(v['cpu_seconds'])}</td></tr>"
            )
        runs = []
        for name, r in (e.get("runs") or {}).items():
            runs.append(
                f"<tr><td>{_e(name)}</td><td>{_e(r.get('status'))}</td>"
                f"<td class='num'>{_e(r.get('accuracy'))}</td><td class='num'>{_e(r.get('steps'))}</td>"
                f"<td>{_e(r.get('checkpoint'))}</td><td>{_e(r.get('resumed_from') or '')}</td></tr>"
            )
        table = (
            "<table><thead><tr><th>strategy</th><th class='num'>seeds</th><th class='num'>final acc %</th>"
            "<th class='num'>± std</th><th class='num'>min–max</th><th class='num'>wall s</th>"
            f"<th class='num'>CPU s</th></tr></thead><tbody>{''.join(rows)}</tbody></table>"
        )
        runs_table = (
            "<details><summary>runs and checkpoints</summary><table><thead><tr><th>run</th><th>status</th>"
            "<th class='num'>accuracy</th><th class='num'>steps</th><th>checkpoint</th><th>resumed at</th>"
            f"</tr></thead><tbody>{''.join(runs)}</tbody></table></details>"
        )
        parts.append(head + f'<div class="figs"><div>{img}</div><div>{table}</div></div>' + runs_table)
    return (
        '<section id="pipeline"><h2>Training and evaluation</h2><p class="muted">Written by '
        "<code>loupe pipeline</code>: models trained on this run's export, scored on held-out images.</p>"
        f"{''.join(parts)}</section>"
    )
