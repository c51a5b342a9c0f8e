"""Exact duplicates: identical image bytes (sha256)."""

from __future__ import annotations

import hashlib

import pyarrow as pa

from loupe.pipeline.stage import Stage, StageOutput
from loupe.pipeline.vectors import kept_before
from loupe.schemas.tables import DEDUP, drops_table


def group_id(uid: str) -> int:
    """A duplicate group's id, from its kept member's uid: the same under every executor and partition."""
    return int.from_bytes(hashlib.sha256(uid.encode()).digest()[:7], "big")


def exact_rule(rows: list[dict], stage: Stage) -> tuple[list[dict], list[dict], int]:
    """Dedup rows and drop rows for ``rows`` (uid, sha256, source, source_id, earlier), and the number of
    duplicate groups. In each sha256 group the keeper is a sample kept by an earlier run of the stage
    (``earlier``: it stays kept), else the first in (source, source_id, uid) order. Rows of different
    sha256 never interact, so any partition by sha256 (the Ray shuffle) gives the same rows."""
    rows = sorted(
        rows, key=lambda r: (not r.get("earlier"), r["source"] or "", r["source_id"] or "", r["uid"])
    )
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(r["sha256"], []).append(r)
    out, drops = [], []
    for members in groups.values():
        keep = members[0]
        cluster = group_id(keep["uid"]) if len(members) > 1 else None
        if not keep.get("earlier"):
            out.append(
                {
                    "uid": keep["uid"],
                    "method": "exact",
                    "cluster": cluster,
                    "duplicate_of": None,
                    "similarity": None,
                    "kept": True,
                }
            )
        for m in members[1:]:
            out.append(
                {
                    "uid": m["uid"],
                    "method": "exact",
                    "cluster": cluster,
                    "duplicate_of": keep["uid"],
                    "similarity": 1.0,
                    "kept": False,
                }
            )
            drops.append(
                stage.drop(
                    m["uid"],
                    "exact_duplicate",
                    f"{m['source_id']} has the same sha256 as {keep['source_id']}",
                    keep["uid"],
                )
            )
    return out, drops, sum(len(g) > 1 for g in groups.values())


class ExactDedup(Stage):
    """Keeps the first of each group of identical files, ordered by (source, source_id, uid), so the
    choice is the same under every executor and batch size. Under ``--executor ray`` the rule runs as
    a shuffle hash-partitioned on sha256 (:mod:`loupe.pipeline.executors.ray_dedup`)."""

    name = "exact_dedup"
    table = "dedup"
    reads = ("uid", "sha256", "source", "source_id")
    is_global = True

    def __call__(self, batch: pa.Table) -> StageOutput:
        uids = batch["uid"].to_pylist()
        # a resumed run with new samples (e.g. retried URLs): samples kept earlier stay kept
        earlier = kept_before(self.ctx, self.table, uids)
        rows = batch.to_pylist()
        if earlier:
            t = self.ctx.run.read_table("samples", list(self.reads), filter_uids=earlier)
            rows += [dict(r, earlier=True) for r in t.to_pylist()]
        out, drops, groups = exact_rule(rows, self)
        return StageOutput(
            rows=pa.Table.from_pylist(out, schema=DEDUP),
            drops=drops_table(drops),
            metrics={"duplicate_groups": groups},
        )
