"""The report of a ``loupe train`` output folder: summary, loss curve, skipped samples, config.

``loupe report runs/train/<name>`` writes ``<name>/report/index.html`` with the same page shell and
styles as a run report (``templates/train.html.j2``, jinja2 with autoescape); the loss plot (``loss.png``, drawn by the trainer) is embedded as a data URI
so the page stays one self-contained file.
"""

from __future__ import annotations

import base64
import json
import os
import time
from pathlib import Path

import yaml

from loupe.pipeline.errors import LoupeError
from loupe.pipeline.report.html import _asset, _environment

MARKER = "loupe_train.yaml"


def is_train_output(path: str | Path) -> bool:
    return (Path(path) / MARKER).exists()


def build_train_report(path: str | Path, output: str | Path | None = None) -> Path:
    p = Path(path)
    if not is_train_output(p):
        raise LoupeError(f"{str(path)!r} is not a training output (no {MARKER})")
    meta = yaml.safe_load((p / MARKER).read_text()) or {}
    summary = (
        json.loads((p / "train_summary.json").read_text()) if (p / "train_summary.json").exists() else {}
    )
    log = (
        [json.loads(x) for x in (p / "loss.jsonl").read_text().splitlines() if x.strip()]
        if (p / "loss.jsonl").exists()
        else []
    )
    cfg = meta.get("config", {})
    name = cfg.get("name", p.name)
    facts = [
        ("strategy", cfg.get("model", {}).get("strategy")),
        ("template", meta.get("template")),
        ("data", meta.get("data")),
        ("learning rate", meta.get("lr")),
        ("steps", summary.get("global_step", log[-1]["step"] if log else None)),
        ("final loss", summary.get("last_loss", log[-1]["loss"] if log else None)),
        ("samples", summary.get("samples")),
        ("tokens seen", summary.get("tokens_seen")),
        ("tokens/s", summary.get("tokens_per_s")),
        ("processes", summary.get("world_size")),
    ]
    png = p / "loss.png"
    html = (
        _environment()
        .get_template("train.html.j2")
        .render(
            title=f"Loupe training · {name}",
            css=_asset("report.css"),
            facts=facts,
            loss_uri="data:image/png;base64," + base64.b64encode(png.read_bytes()).decode()
            if png.exists()
            else None,
            skipped=sorted((summary.get("skipped") or {}).items(), key=lambda kv: -kv[1]),
            config_yaml=yaml.safe_dump(cfg, sort_keys=False),
            generated=time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        )
    )
    out = Path(output) if output else p / "report"
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / ".tmp-index.html"
    tmp.write_text(html, encoding="utf-8")
    os.replace(tmp, out / "index.html")
    return out / "index.html"
