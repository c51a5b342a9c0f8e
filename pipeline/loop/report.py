"""The report's "Training and evaluation" section: the template context of what ``loupe pipeline``
recorded in the manifest (the HTML is ``pipeline/report/templates/pipeline.html.j2``, autoescaped)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any


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


def pipeline_context(manifest: dict[str, Any], plots: dict[str, str]) -> list[dict[str, Any]]:
    """One entry per loop hash: status, split counts, timing, plot path, per-strategy summary (with
    its accuracy-vs-steps points by step) and the runs with their checkpoints."""
    loops = []
    for h, e in (manifest.get("pipeline") or {}).items():
        summary = {
            s: {**v, "by_step": {p["step"]: p for p in v.get("curve", [])}}
            for s, v in (e.get("summary") or {}).items()
        }
        steps = sorted({p["step"] for v in summary.values() for p in v.get("curve", [])})
        loops.append(
            {
                "hash": h,
                "status": e.get("status"),
                "split": e.get("split") or {},
                "timing": e.get("timing") or {},
                "plot": plots.get(h),
                "summary": summary,
                "steps": steps,
                "runs": e.get("runs") or {},
            }
        )
    return loops
