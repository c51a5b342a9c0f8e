"""Exact duplicates: identical image bytes (sha256)."""

from __future__ import annotations

import pyarrow as pa

from loupe.pipeline.stage import Stage, StageOutput
from loupe.pipeline.vectors import kept_before
from loupe.schemas.tables import DEDUP, drops_table


class ExactDedup(Stage):
    """Keeps the first of each group of identical files, ordered by (source, source_id, uid), so the
    choice is the same under every executor and batch size."""

    name = "exact_dedup"
    table = "dedup"
    reads = ("uid", "sha256", "source", "source_id")
    is_global = True

    def __call__(self, batch: pa.Table) -> StageOutput:
        rows = sorted(batch.to_pylist(), key=lambda r: (r["source"] or "", r["source_id"] or "", r["uid"]))
        groups: dict[str, list[dict]] = {}
        # a resumed run with new samples (e.g. retried URLs): samples kept earlier come first in their group
        for r in self._kept_before([r["uid"] for r in rows]):
            groups.setdefault(r["sha256"], []).append(r)
        for r in rows:
            groups.setdefault(r["sha256"], []).append(r)
        out, drops = [], []
        for gid, members in enumerate(groups.values()):
            keep = members[0]
            cluster = gid if len(members) > 1 else None
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
                    self.drop(
                        m["uid"],
                        "exact_duplicate",
                        f"{m['source_id']} has the same sha256 as {keep['source_id']}",
                        keep["uid"],
                    )
                )
        return StageOutput(
            rows=pa.Table.from_pylist(out, schema=DEDUP),
            drops=drops_table(drops),
            metrics={"duplicate_groups": sum(len(g) > 1 for g in groups.values())},
        )

    def _kept_before(self, batch_uids: list[str]) -> list[dict]:
        """Samples kept by this stage in an earlier run of the same run dir."""
        earlier = kept_before(self.ctx, self.table, batch_uids)
        if not earlier:
            return []
        t = self.ctx.run.read_table("samples", ["uid", "sha256", "source_id"], filter_uids=earlier)
        return [dict(r, earlier=True) for r in t.to_pylist()]
