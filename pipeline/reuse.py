"""Per-stage reuse: a stage's identity, and adopting finished stages from an earlier run dir.

A stage's **identity** is a hash of its own config minus the execution knobs (``batch_size``,
``resources``, ``concurrency``, ``workers``, ``device``, timeouts and retries: they change how fast,
not what) and of the identity of its input. Every stage reads the samples still live after the stages
before it, so its input is the stage just before it (ingest's identity hashes the sources, the seed
and the code version). The run dir is named after the identity of the last stage (``lineage_hash``):
changing ``batch_size`` keeps the run dir, and resuming it recomputes nothing.

Editing or removing a later stage gives a new run dir whose earlier stages have the same identities
as in a run dir already there (DataTrove and Data-Juicer keep per-step results the same way). When
a run dir is opened, :func:`adopt_upstream` finds the sibling run dir (same recipe name and output)
sharing the longest chain of *complete* stages and hard-links their shards (table rows, drops,
``_state/<stage>/``) into the new run dir — no copy, no recompute — and copies their manifest entries
(timings included) marked ``reused_from``. Linked shards keep the lineage they were written under;
``_state/reused.json`` lists, per stage, the lineages the integrity check accepts for them.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loupe.pipeline.rundir import TMP_PREFIX, RunDir, atomic_write_text
from loupe.schemas.tables import TABLES

REUSED = "_state/reused.json"


@dataclass
class Donor:
    run: RunDir
    stages: list[str]  # the stages (a prefix of the order) it can give


def _complete(m: dict[str, Any], sid: str, ident: str) -> bool:
    s = m.get("stages", {}).get(sid, {})
    return s.get("status") == "complete" and m.get("stage_identities", {}).get(sid) == ident


def find_donor(run: RunDir, identities: dict[str, str]) -> Donor | None:
    """The sibling run dir sharing the longest prefix of complete stages (newest on ties).
    Local run dirs only: donors are hard-linked (an object-store run recomputes)."""
    if not run.is_local:
        return None
    root = run.path.parent
    if not root.is_dir():
        return None
    best: Donor | None = None
    for d in sorted(
        (p for p in root.iterdir() if p.is_dir() and p != run.path), key=lambda p: p.stat().st_mtime
    ):
        try:
            m = json.loads((d / "manifest.json").read_text())
        except (OSError, ValueError):
            continue
        prefix = []
        for sid, ident in identities.items():
            if not _complete(m, sid, ident):
                break
            prefix.append(sid)
        if prefix and (best is None or len(prefix) >= len(best.stages)):
            best = Donor(RunDir(d, m.get("lineage")), prefix)
    return best


def _stage_files(run: RunDir, sid: str) -> list[Path]:
    files: list[Path] = []
    for folder, _ in TABLES.values():
        d = run.path / folder
        if d.is_dir():
            files += [p for p in d.glob(f"{sid}-*.parquet") if not p.name.startswith(TMP_PREFIX)]
    state = run.path / "_state" / sid
    if state.is_dir():
        files += [
            p for p in state.rglob("*") if p.is_file() and "input" not in p.relative_to(state).parts[:1]
        ]
    return files


def _link(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists():
        return
    try:
        os.link(src, dst)
    except OSError:  # another file system, or links not allowed: copy
        shutil.copy2(src, dst)


def reused_lineages(run: RunDir) -> dict[str, list[str]]:
    try:
        return json.loads(run.read_text(REUSED))
    except (OSError, ValueError):
        return {}


def adopt_upstream(run: RunDir, identities: dict[str, str]) -> dict[str, str]:
    """Link the finished stages this run dir lacks from the best donor; returns ``{stage: donor path}``.

    A stage this run dir already completed under the same identity is left alone (a plain resume).
    """
    mine = run.manifest()
    missing = [sid for sid, ident in identities.items() if not _complete(mine, sid, ident)]
    if not missing:
        return {}
    donor = find_donor(run, identities)
    if donor is None:
        return {}
    dm = donor.run.manifest()
    dreused = reused_lineages(donor.run)
    accepted = reused_lineages(run)
    adopted: dict[str, str] = {}
    stages = mine.get("stages", {})
    for sid in donor.stages:
        if sid not in missing:
            continue
        for f in _stage_files(donor.run, sid):
            _link(f, run.path / f.relative_to(donor.run.path))
        accepted[sid] = sorted(
            {*accepted.get(sid, []), *dreused.get(sid, []), dm.get("lineage") or ""} - {""}
        )
        stages[sid] = {**dm["stages"][sid], "reused_from": str(donor.run.path)}
        adopted[sid] = str(donor.run.path)
    atomic_write_text(run.path / REUSED, json.dumps(accepted, indent=2, sort_keys=True))
    run.update_manifest(stages=stages)
    return adopted


def plan_actions(run: RunDir, identities: dict[str, str]) -> list[tuple[str, str, str]]:
    """What ``loupe run`` would do per stage, without touching anything: ``(stage, identity, action)``.

    Actions: ``done`` (complete here, kept as it is), ``reuse <run dir>`` (linked from a sibling),
    ``compute`` (run; resumes whatever uids are already done).
    """
    mine = run.manifest()
    donor = find_donor(run, identities)
    out = []
    chain_ok = True
    for sid, ident in identities.items():
        if chain_ok and _complete(mine, sid, ident):
            out.append((sid, ident, "done"))
        elif chain_ok and donor is not None and sid in donor.stages:
            out.append((sid, ident, f"reuse {donor.run.path}"))
        else:
            chain_ok = False
            out.append((sid, ident, "compute"))
    return out
