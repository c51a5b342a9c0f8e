"""The report's plots, drawn with matplotlib's Agg canvas and saved as PNG files.

``matplotlib.figure.Figure`` is used directly (no pyplot): no global state, no GUI backend,
safe in a worker thread.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

BLUE = "#3367d6"
RED = "#d64541"


def funnel_plot(stages: Sequence[str], survivors: Sequence[int], path: Path) -> Path:
    """Horizontal bars: samples surviving each stage, in run order from the top."""
    fig = Figure(figsize=(6, 0.4 * len(stages) + 1.0), dpi=110)
    ax = fig.add_subplot()
    y = list(range(len(stages)))[::-1]
    ax.barh(y, survivors, color=BLUE)
    top = max(survivors) if survivors else 1
    for yi, n in zip(y, survivors):
        ax.text(n + top * 0.01, yi, str(n), va="center", fontsize=9)
    ax.set_yticks(y, list(stages))
    ax.set_xlim(0, top * 1.12 + 1)
    ax.set_xlabel("samples surviving")
    ax.set_title("funnel")
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    fig.tight_layout()
    fig.savefig(path)
    return path


def histogram(values: Sequence[float], path: Path, title: str, xlabel: str, bins: int = 30) -> Path:
    """A histogram with the mean and 95th percentile marked."""
    fig = Figure(figsize=(4.8, 3.0), dpi=110)
    ax = fig.add_subplot()
    ax.hist(values, bins=min(bins, max(1, len(set(values)))), color=BLUE, edgecolor="white")
    mean = float(np.mean(values))
    p95 = float(np.percentile(values, 95))  # the same definition as export/stats.json
    ax.axvline(mean, color=RED, linestyle="--", linewidth=1, label=f"mean {mean:.1f}")
    ax.axvline(p95, color="#444", linestyle=":", linewidth=1, label=f"p95 {int(p95)}")
    ax.legend(fontsize=8, frameon=False)
    ax.set_title(f"{title} (n={len(values)})")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("count")
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    fig.tight_layout()
    fig.savefig(path)
    return path
