"""Our scores beside the seeds' published ones.

Published numbers: the DenseFusion-1M README's "Benchmark Performance" table (baai-bcmi/DenseFusion;
rows LLaVA-7B = LLaVA-1.5-7B, DenseFusion-7B, and the S2 high-resolution pair), the same figures the
issue lists. SQA-I, VQAv2, GQA, TextVQA, MMB, SEED-I are accuracies in %, POPE the mean F1 (%),
MME the perception score.
"""

from __future__ import annotations

from collections.abc import Mapping

COLUMNS = {
    "sqa": "SQA-I", "vqav2": "VQAv2", "gqa": "GQA", "textvqa": "TextVQA",
    "mme": "MME", "mmbench": "MMB", "seed": "SEED-I", "pope": "POPE",
}  # fmt: skip
PUBLISHED: dict[str, dict[str, float]] = {
    "DenseFusion-7B": {"sqa": 69.3, "vqav2": 80.8, "gqa": 64.0, "textvqa": 62.0, "mme": 1574, "mmbench": 69.2, "seed": 70.1, "pope": 86.5},
    "LLaVA-1.5-7B": {"sqa": 66.8, "vqav2": 78.5, "gqa": 62.0, "textvqa": 58.2, "mme": 1510, "mmbench": 64.3, "seed": 66.2, "pope": 85.9},
    "DenseFusion-S2-7B": {"sqa": 72.1, "vqav2": 81.6, "gqa": 65.3, "textvqa": 67.4, "mme": 1551, "mmbench": 70.7, "seed": 71.1, "pope": 87.2},
    "LLaVA-S2-7B": {"sqa": 68.2, "vqav2": 79.7, "gqa": 63.3, "textvqa": 60.8, "mme": 1520, "mmbench": 66.4, "seed": 67.2, "pope": 86.7},
}  # fmt: skip


def results_rows(ours: Mapping[str, float | None], label: str = "ours") -> tuple[list[str], list[list[str]]]:
    """Header and rows: one row per model (ours first), one column per benchmark we ran."""
    tasks = [t for t in COLUMNS if t in ours] + [t for t in ours if t not in COLUMNS]
    header = ["model", *[COLUMNS.get(t, t) for t in tasks]]

    def fmt(v: float | None, task: str) -> str:
        if v is None:
            return "-"
        return f"{v:.0f}" if task == "mme" else f"{v:.1f}"

    rows = [[label, *[fmt(ours.get(t), t) for t in tasks]]]
    for name, scores in PUBLISHED.items():
        rows.append([name, *[fmt(scores.get(t), t) for t in tasks]])
    return header, rows


def results_markdown(ours: Mapping[str, float | None], label: str = "ours") -> str:
    header, rows = results_rows(ours, label)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n"
