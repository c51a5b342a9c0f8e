"""The report of a ``loupe train`` output folder: summary, loss curve, skipped samples, config.

``loupe report runs/train/<name>`` writes ``<name>/report/index.html`` with the same page shell and
styles as a run report; the loss plot (``loss.png``, drawn by the trainer) is embedded as a data URI
so the page stays one self-contained file.
"""

from __future__ import annotations

import base64
import json
import os
import re
import time
from pathlib import Path
from string import Template

import yaml

from loupe.pipeline.errors import LoupeError
from loupe.pipeline.report.html import _asset, _table, esc

MARKER = "loupe_train.yaml"


def is_train_output(path: str | Path) -> bool:
    return (Path(path) / MARKER).exists()


def _rows(pairs) -> list[str]:
    return [f"<tr><td>{esc(k)}</td><td class='num'>{esc(v)}</td></tr>" for k, v in pairs]


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
    parts = [f"<section id='summary'><h2>summary</h2>{_table(['field', '#value'], _rows(facts))}</section>"]
    png = p / "loss.png"
    if png.exists():
        uri = "data:image/png;base64," + base64.b64encode(png.read_bytes()).decode()
        parts.append(
            f"<section id='loss'><h2>loss</h2><img src='{uri}' alt='training loss against step'></section>"
        )
    skipped = summary.get("skipped") or {}
    rows = _rows(sorted(skipped.items(), key=lambda kv: -kv[1])) or ["<tr><td colspan=2>none</td></tr>"]
    parts.append(
        f"<section id='skipped'><h2>skipped samples</h2>{_table(['reason', '#count'], rows)}</section>"
    )
    parts.append(
        f"<section id='config'><h2>config</h2><pre>{esc(yaml.safe_dump(cfg, sort_keys=False))}</pre></section>"
    )
    nav = (
        "<nav><a href='#summary'>summary</a> <a href='#loss'>loss</a> <a href='#skipped'>skipped</a> "
        "<a href='#config'>config</a></nav>"
    )
    page = re.sub(r"<nav>.*?</nav>", nav, _asset("page.html"), flags=re.S)
    html = Template(page).substitute(
        title=esc(f"Loupe training · {name}"),
        css=_asset("report.css"),
        js="",
        body="\n".join(parts),
        version="",
        generated=esc(time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())),
    )
    out = Path(output) if output else p / "report"
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / ".tmp-index.html"
    tmp.write_text(html, encoding="utf-8")
    os.replace(tmp, out / "index.html")
    return out / "index.html"
