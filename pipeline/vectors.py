"""Read the ``embeddings`` table as numpy, and write a stage's ``clusters`` rows exactly once.

Shared by the global stages that work on vectors (SemDeDup, DenseFusion selection) and the
CLIP-score filter. Vectors are read straight from the parquet shards (not as ``evidence``): a
million 512-d rows as Python lists would cost minutes, as one Arrow buffer they cost a copy.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from loupe.pipeline.errors import RecipeError
from loupe.pipeline.rundir import RunDir
from loupe.pipeline.stage import StageContext
from loupe.schemas.tables import CLUSTERS


@dataclass
class Vectors:
    uids: list[str]  # rows of ``matrix``, in the order of the requested uids
    matrix: np.ndarray  # (n, dim) float32
    model: str | None
    missing: list[str]  # requested uids without a vector of this kind


def load_vectors(run: RunDir, uids: list[str], kind: str = "image", model: str | None = None) -> Vectors:
    """One vector per uid of ``kind`` ("image" | "text"). With several embedding models in the run and
    no ``model`` given, the model covering most of ``uids`` is used (ties: alphabetical)."""
    t = run.read_table("embeddings", ["uid", "model", "kind", "vector"], filter_uids=uids)
    t = t.filter(pc.equal(t["kind"], kind))
    if model is None and t.num_rows:
        counts = Counter(t["model"].to_pylist())
        model = min(counts, key=lambda m: (-counts[m], m))
    if model is not None:
        t = t.filter(pc.equal(t["model"], model))
    pos = {u: i for i, u in enumerate(t["uid"].to_pylist())}  # last wins; the table has one per uid
    have = [u for u in uids if u in pos]
    missing = [u for u in uids if u not in pos]
    if not have:
        return Vectors([], np.zeros((0, 0), np.float32), model, missing)
    col = t["vector"].combine_chunks()
    lengths = pc.list_value_length(col).to_numpy(zero_copy_only=False)
    if len(set(lengths.tolist())) != 1:
        raise RecipeError(
            f"embeddings of model {model!r} have mixed dimensions {sorted(set(lengths.tolist()))}"
        )
    flat = col.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    matrix = flat.reshape(len(col), int(lengths[0]))
    return Vectors(have, matrix[[pos[u] for u in have]], model, missing)


def batch_digest(uids: list[str]) -> str:
    """Stable id of a global stage's input: a rerun of the same (killed) batch gets the same id."""
    return hashlib.sha256("\n".join(sorted(uids)).encode()).hexdigest()[:12]


def kept_before(ctx: StageContext, table: str, batch_uids: list[str]) -> list[str]:
    """Live samples this stage already processed in an earlier run of the same run dir.

    A resumed run that brings new samples (new files, retried URLs) hands a global stage only the
    new ones; the stage compares them with these, which stay kept (their decision is committed).
    """
    done = ctx.run.done_uids(ctx.stage_name, table) - set(batch_uids)
    return sorted(ctx.run.live_uids() & done) if done else []


def vectors_with_earlier(
    ctx: StageContext, table: str, batch_uids: list[str], stage: str
) -> tuple[Vectors, np.ndarray, list[str]]:
    """Image vectors of the samples this stage kept in earlier runs, then of the batch; the mask of
    the earlier rows; and the earlier uids. A batch with no image vector at all is a recipe error
    (no ``embed`` stage before this one)."""
    earlier = kept_before(ctx, table, batch_uids)
    vec = load_vectors(ctx.run, earlier + batch_uids, "image")
    old = set(earlier)
    prior = np.array([u in old for u in vec.uids], bool)
    if prior.all():
        raise RecipeError(
            f"{ctx.stage_name}: no image embeddings for the {len(batch_uids)} live samples; "
            f"add an `embed` stage before `{stage}`"
        )
    return vec, prior, earlier


def write_clusters(
    ctx: StageContext,
    method: str,
    labels: np.ndarray,
    representative: np.ndarray,
    uids: list[str],
    batch_uids: list[str],
) -> int:
    """Write the ``clusters`` rows (cluster, size, representative uid) of one global batch and return
    the offset added to ``labels`` so that cluster ids of successive (incremental) runs never collide.

    Called before the stage returns, so before the executor commits the batch: a run killed in
    between redoes the batch, and the shard, named after the batch's uids, is replaced, not doubled.
    """
    prefix = f"{ctx.stage_name}-{batch_digest(batch_uids)}"
    offset = 0
    for f in ctx.run.shard_files("clusters", ctx.stage_name):
        if not f.name.startswith(f"{prefix}-"):
            col = pq.read_table(str(f), columns=["cluster"], filesystem=ctx.run.fs)["cluster"]
            offset = max(offset, (pc.max(col).as_py() or -1) + 1 if len(col) else 0)
    k = len(representative)
    sizes = np.bincount(labels, minlength=k) if len(labels) else np.zeros(k, np.int64)
    rows = [
        {
            "method": method,
            "cluster": offset + c,
            "size": int(sizes[c]),
            "representative": uids[int(representative[c])],
        }
        for c in range(k)
        if sizes[c] > 0
    ]
    ctx.run.write_table("clusters", pa.Table.from_pylist(rows, schema=CLUSTERS), stage=prefix)
    return offset
