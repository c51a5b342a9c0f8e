"""Accuracy vs training steps per strategy: mean over seeds, a band from the lowest to the highest seed."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def plot_curves(summary: dict[str, Any], path: Path, title: str = "") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=110)
    for strategy, s in summary.items():
        steps = [p["step"] for p in s["curve"]]
        mean = [100 * p["mean"] for p in s["curve"]]
        lo = [100 * p["min"] for p in s["curve"]]
        hi = [100 * p["max"] for p in s["curve"]]
        (line,) = ax.plot(steps, mean, marker="o", ms=3, label=f"{strategy} (n={s['seeds']})")
        ax.fill_between(steps, lo, hi, color=line.get_color(), alpha=0.2, linewidth=0)
    ax.set_xlabel("training step")
    ax.set_ylabel("held-out VQA accuracy (%)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, title="mean; band = min..max over seeds", title_fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
