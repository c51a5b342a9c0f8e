"""The loss log (``loss.jsonl``, one line per logged step) and its plot (``loss.png``).

The Trainer's own tqdm bar is the progress bar; this callback adds a durable, machine-readable
record. On resume, lines after the checkpoint's step (written by the interrupted run) are dropped
first, so the log reads as one uninterrupted run.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from transformers import TrainerCallback


class LossLogCallback(TrainerCallback):
    def __init__(self, path: Path):
        self.path = Path(path)
        self.last_loss: float | None = None
        self.tokens_at_start = 0
        self.tokens_in_run = 0
        self._t = time.perf_counter()
        self._tokens = 0

    def on_train_begin(self, args, state, control, **kw):
        self.tokens_at_start = self._tokens = int(state.num_input_tokens_seen or 0)
        self._t = time.perf_counter()
        if state.is_world_process_zero and self.path.exists():
            keep = [
                line
                for line in self.path.read_text().splitlines()
                if line.strip() and json.loads(line)["step"] <= state.global_step
            ]
            self.path.write_text("".join(line + "\n" for line in keep))

    def on_log(self, args, state, control, logs: dict[str, Any] | None = None, **kw):
        logs = logs or {}
        if "loss" not in logs:
            return
        now, tokens = time.perf_counter(), int(state.num_input_tokens_seen or 0)
        rec = {
            "step": state.global_step,
            "epoch": round(state.epoch or 0.0, 4),
            "loss": logs["loss"],
            "lr": logs.get("learning_rate"),
            "grad_norm": logs.get("grad_norm"),
            "tokens": tokens,
            "tokens_per_s": round((tokens - self._tokens) / max(now - self._t, 1e-9), 1),
        }
        self._t, self._tokens = now, tokens
        self.last_loss = float(logs["loss"])
        if state.is_world_process_zero:
            with self.path.open("a") as f:
                f.write(json.dumps(rec) + "\n")

    def on_train_end(self, args, state, control, **kw):
        self.tokens_in_run = int(state.num_input_tokens_seen or 0) - self.tokens_at_start


def read_loss_log(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def plot_losses(log: Path, png: Path, title: str = "") -> Path | None:
    """Loss (and learning rate) against step, as a PNG (matplotlib, no display)."""
    if not Path(log).exists():
        return None
    rows = read_loss_log(log)
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.2), dpi=100)
    ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], color="#2563eb", lw=1.5, label="loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(f"training loss {title}".strip())
    ax.grid(alpha=0.3)
    lrs = [r.get("lr") for r in rows]
    if all(v is not None for v in lrs):
        ax2 = ax.twinx()
        ax2.plot([r["step"] for r in rows], lrs, color="#9ca3af", lw=1, ls="--", label="lr")
        ax2.set_ylabel("learning rate")
    fig.tight_layout()
    fig.savefig(png)
    plt.close(fig)
    return png
