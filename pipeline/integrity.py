"""Shard integrity: find garbled, truncated or foreign shards in a run dir and quarantine them.

Every shard :meth:`RunDir.commit` writes carries, in its parquet footer, the stage that wrote it
(``loupe.stage``, also the prefix of its file name), the run's lineage hash (``loupe.lineage``)
and the uids it accounts for (``loupe.covered``); its pages carry CRC32 checksums. Before a run
writes anything, :func:`verify_run` reads each shard it has not verified before, end to end with
checksum verification, and checks:

* the footer parses and the schema holds the table's columns (a truncated or foreign file fails);
* the stage in the footer matches the file name, the lineage matches the run's;
* every row's uid is one the shard's footer says it covers (a drops shard: its partner's stage).

A shard that fails is moved to ``_quarantine/<table dir>/`` with a ``.reason`` file, together with
the other half of its batch (a drops shard and its table shard share one shard id): the batch's
uids are then not done, so the run redoes them exactly once; a warning names each shard. Verified
shards are remembered by name, size and mtime in ``_state/verified.json`` (and every shard of a run
that completes), so a resume re-reads only the shards of an interrupted run; bytes read later are still checksum-verified (``RunDir.dataset``).

This mirrors what DataTrove and img2dataset do for their outputs (a shard is done only when its
completion record is intact) with parquet's own page checksums doing the byte-level check.
"""

from __future__ import annotations

import json
from pathlib import PurePath

import pyarrow as pa
import pyarrow.parquet as pq

from loupe.pipeline.rundir import COVERED_KEY, LINEAGE_KEY, PARTNER_KEY, STAGE_KEY, RunDir
from loupe.schemas.tables import TABLES

QUARANTINE = "_quarantine"
VERIFIED = "_state/verified.json"


def check_shard(run: RunDir, table: str | None, path: PurePath) -> str | None:
    """Why the shard at ``path`` (inside ``run.fs``) cannot be trusted, or None when it is intact."""
    try:
        pf = pq.ParquetFile(run.fs.open_input_file(str(path)), page_checksum_verification=True)
        meta = pf.schema_arrow.metadata or {}
    except (pa.ArrowException, OSError) as e:
        return f"unreadable parquet footer ({_first_line(e)})"
    stage = meta.get(STAGE_KEY, b"").decode(errors="replace")
    if not stage:
        return "no loupe.stage in the footer (not written by Loupe)"
    if not path.name.startswith(f"{stage}-"):
        return f"footer names stage {stage!r} but the file name does not"
    lineage = meta.get(LINEAGE_KEY, b"").decode(errors="replace")
    if run.lineage and lineage and lineage != run.lineage and lineage not in _adopted(run, stage):
        return f"written by another run (lineage {lineage}, this run is {run.lineage})"
    if table is not None:
        missing = [c for c in TABLES[table][1].names if c not in pf.schema_arrow.names]
        if missing:
            return f"columns {missing} of table {table!r} are missing"
    try:
        t = pf.read()  # every page, checksums verified
    except (pa.ArrowException, OSError) as e:
        return f"garbled data ({_first_line(e)})"
    if table == "drops":
        return None if PARTNER_KEY in meta else "no loupe.partner in the footer (not written by Loupe)"
    if COVERED_KEY not in meta:
        return "no loupe.covered in the footer (not written by Loupe)"
    try:
        covered = set(json.loads(meta[COVERED_KEY]))
    except ValueError:
        return "loupe.covered in the footer is not a JSON list"
    if "uid" in t.column_names:
        extra = set(t.column("uid").to_pylist()) - covered
        if extra:
            return f"{len(extra)} row uid(s) not in the footer's covered list, e.g. {sorted(extra)[0]}"
    return None


def _adopted(run: RunDir, stage: str) -> list[str]:
    """Lineages a stage's shards may carry because this run adopted them (``loupe.pipeline.reuse``)."""
    from loupe.pipeline.reuse import reused_lineages

    # clusters shards are named <stage>-<batch digest>: match the stage part of the footer's name
    got = reused_lineages(run)
    return next((v for k, v in got.items() if stage == k or stage.startswith(f"{k}-")), [])


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:200]


def _keys(run: RunDir) -> dict[str, str]:
    """``{relative path: "size:mtime_ns"}`` of every shard, one listing per folder (no stat per shard)."""
    out = {}
    for _, d in run.shard_dirs():
        for name, info in run.storage.stats(d).items():
            if name.endswith(".parquet"):
                out[f"{d}/{name}"] = f"{info.size}:{info.mtime_ns}"
    return out


def quarantine(run: RunDir, path: PurePath, reason: str) -> str:
    """Move ``path`` under ``_quarantine/`` (same relative folder) with a ``.reason`` file beside it."""
    rel = run.rel(path)
    dest = f"{QUARANTINE}/{rel}"
    run.storage.move(rel, dest)
    run.write_text(dest + ".reason", reason + "\n")
    return dest


def _all_shards(run: RunDir) -> list[tuple[str | None, PurePath]]:
    return [(t, p) for t, d in run.shard_dirs() for p in run.storage.files(d, ".parquet")]


def _read_verified(run: RunDir) -> dict[str, str]:
    try:
        return json.loads(run.read_text(VERIFIED))
    except (FileNotFoundError, ValueError):
        return {}


def mark_verified(run: RunDir) -> None:
    """Record every shard as verified (called when a run completes: its writer just wrote them).
    Shards of an interrupted run are not recorded, so the next run reads them end to end."""
    keys = _keys(run)
    verified = {rel: keys[rel] for rel in (run.rel(p) for _, p in _all_shards(run)) if rel in keys}
    run.write_text(VERIFIED, json.dumps(verified, sort_keys=True))


def verify_run(run: RunDir, warn=None) -> list[tuple[str, str]]:
    """Check every not-yet-verified shard; quarantine bad ones with their batch partner.

    Returns ``[(relative path, reason)]`` of the shards moved; ``warn(msg)`` is called for each.
    """
    verified = _read_verified(run)
    shards = _all_shards(run)
    if not shards and not verified:
        return []
    keys = _keys(run)
    bad: dict[PurePath, str] = {}
    for table, p in shards:
        rel = run.rel(p)
        if verified.get(rel) == keys.get(rel):
            continue
        why = check_shard(run, table, p)
        if why is None:
            verified[rel] = keys.get(rel, "")
        else:
            bad[p] = why
    # the other half of a bad batch goes too: same shard id in drops/ and in the table folder
    by_name: dict[str, list[PurePath]] = {}
    for _, p in shards:
        by_name.setdefault(p.name, []).append(p)
    for p, why in list(bad.items()):
        for q in by_name.get(p.name, []):
            bad.setdefault(q, f"partner of quarantined {run.rel(p)} ({why})")
    moved = []
    for p, why in bad.items():
        rel = run.rel(p)
        quarantine(run, p, why)
        verified.pop(rel, None)
        moved.append((rel, why))
        if warn:
            warn(f"shard {rel} quarantined: {why}; its uids are redone (kept in {QUARANTINE}/{rel})")
    live = {run.rel(p) for _, p in shards if p not in bad}
    run.write_text(VERIFIED, json.dumps({k: v for k, v in verified.items() if k in live}, sort_keys=True))
    return moved


def forget_verified(run: RunDir, path: PurePath) -> None:
    """Make the next :func:`verify_run` read ``path`` (a path inside ``run.fs``) again (after a read error met it)."""
    verified = _read_verified(run)
    if verified.pop(run.rel(path), None) is not None:
        run.write_text(VERIFIED, json.dumps(verified, sort_keys=True))
