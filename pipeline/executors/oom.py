"""Out-of-memory resilience shared by both executors: a batch that does not fit is halved, recursively.

A model stage sized for typical images can still run out of memory on one batch (a few huge images,
long OCR pages, a GPU shared by ``num_gpus: 0.25`` actors). Instead of failing the run, the batch is
split in two halves, each half is run (and split again if it still does not fit), and the outputs are
concatenated: the result is the same rows a large enough machine would have produced. A single row
that still does not fit becomes a ``drops`` row (reason ``out_of_memory``) — failures are data.

Only per-row stages may be split; a global stage (dedup, select, export) sees all samples at once by
definition, so the executors call it directly and let an OOM fail the stage.
"""

from __future__ import annotations

import sys
from numbers import Number
from typing import Any, Protocol

import pyarrow as pa

from loupe.pipeline.stage import StageOutput
from loupe.schemas.tables import DROPS, drops_table

#: metrics key counting how many times a batch was halved
OOM_SPLITS = "oom_splits"

# torch.cuda.OutOfMemoryError says "CUDA out of memory"; older torch and CPU allocators raise a
# RuntimeError "... out of memory ..."; onnxruntime (rapidocr) raises RuntimeException
# "... Failed to allocate memory ...".
_MARKERS = ("out of memory", "failed to allocate memory")


class BatchStage(Protocol):
    def __call__(self, batch: pa.Table) -> StageOutput: ...


def is_oom(e: BaseException) -> bool:
    """True for errors that mean "this batch did not fit in (GPU or host) memory"."""
    if isinstance(e, MemoryError):
        return True
    torch = sys.modules.get("torch")  # never import torch here: the local executor may not need it
    oom_type = getattr(getattr(torch, "cuda", None), "OutOfMemoryError", None)
    if isinstance(oom_type, type) and isinstance(e, oom_type):
        return True
    return isinstance(e, RuntimeError) and any(m in str(e).lower() for m in _MARKERS)


def _release_cached_memory() -> None:
    torch = sys.modules.get("torch")
    cuda = getattr(torch, "cuda", None)
    try:
        if cuda is not None and cuda.is_available():
            cuda.empty_cache()
    except Exception:  # a broken CUDA context must not hide the OOM handling
        pass


def _uids(batch: pa.Table) -> list[str]:
    return batch["uid"].to_pylist()


def _concat(tables: list[pa.Table | None]) -> pa.Table | None:
    present = [t for t in tables if t is not None]
    if not present:
        return None
    return pa.concat_tables(present, promote_options="default")


def merge_metrics(into: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """Fold one batch's metrics into a stage's: numbers are summed, anything else keeps its first value.

    Both executors use it across batches, and :func:`merge_outputs` across the halves of a split batch,
    so a count a stage reports per batch ends up as the stage's total however the rows were batched.
    """
    for k, v in new.items():
        old = into.get(k)
        if k in into and isinstance(v, Number) and isinstance(old, Number) and not isinstance(v, bool):
            into[k] = old + v
        else:
            into.setdefault(k, v)
    return into


def merge_outputs(parts: list[tuple[StageOutput, pa.Table]]) -> StageOutput:
    """Concatenate the outputs of sub-batches (``(output, its input batch)`` pairs, in order).

    ``covered`` stays None (= "the whole input batch") unless some part narrowed it; then each part
    contributes its own covered list, or its input uids where it left ``covered`` unset.
    Numeric metrics are summed; other metrics keep the first value seen.
    """
    outs = [o for o, _ in parts]
    covered: list[str] | None = None
    if any(o.covered is not None for o in outs):
        covered = []
        for o, b in parts:
            covered.extend(o.covered if o.covered is not None else _uids(b))
    metrics: dict[str, Any] = {}
    for o in outs:
        merge_metrics(metrics, o.metrics)
    return StageOutput(
        rows=_concat([o.rows for o in outs]),
        drops=_concat([o.drops for o in outs]),
        covered=covered,
        metrics=metrics,
    )


def _oom_drop(stage: Any, batch: pa.Table, error: str) -> StageOutput:
    uid = _uids(batch)[0]
    detail = f"does not fit in memory even alone: {error}"[:300]
    name = getattr(stage, "name", None) or type(stage).__name__
    row = {"uid": uid, "stage": name, "reason": "out_of_memory", "detail": detail, "duplicate_of": None}
    schema = getattr(stage, "schema", None)
    rows = schema.empty_table() if isinstance(schema, pa.Schema) else None
    return StageOutput(rows=rows, drops=drops_table([row]), metrics={"oom_dropped": 1})


def call_with_oom_split(stage: BatchStage, batch: pa.Table) -> StageOutput:
    """``stage(batch)``, halving the batch recursively on out-of-memory errors (see module docstring).

    The returned metrics carry ``oom_splits`` (how many times a batch was halved) when any split happened.
    """
    error = ""
    try:
        return stage(batch)
    except Exception as e:  # MemoryError and RuntimeError are Exceptions
        if not is_oom(e):
            raise
        # Keep only the message and retry outside the except block: the traceback pins the frames
        # (and tensors) that filled the memory (PyTorch FAQ, "My out of memory exception handler
        # can't allocate memory").
        error = f"{type(e).__name__}: {e}"
    _release_cached_memory()
    n = batch.num_rows
    if n <= 1:
        if n == 0:
            return StageOutput(rows=None, drops=DROPS.empty_table(), metrics={})
        return _oom_drop(stage, batch, error)
    half = n // 2
    left, right = batch.slice(0, half), batch.slice(half)
    out = merge_outputs(
        [(call_with_oom_split(stage, left), left), (call_with_oom_split(stage, right), right)]
    )
    out.metrics[OOM_SPLITS] = out.metrics.get(OOM_SPLITS, 0) + 1
    return out


#: metrics key counting batches split to stay under ``limits.max_batch_pixels``
PIXEL_SPLITS = "pixel_splits"


def pixel_chunks(batch: pa.Table, max_pixels: int) -> list[pa.Table]:
    """Consecutive slices of ``batch`` whose decoded pixels (sum of width x height) stay under
    ``max_pixels``; one row alone may be larger (the per-image budget bounds it). Without
    ``width``/``height`` columns the batch is returned whole."""
    if "width" not in batch.column_names or "height" not in batch.column_names or batch.num_rows <= 1:
        return [batch]
    px = [(w or 0) * (h or 0) for w, h in zip(batch["width"].to_pylist(), batch["height"].to_pylist())]
    if sum(px) <= max_pixels:
        return [batch]
    chunks, start, acc = [], 0, 0
    for i, p in enumerate(px):
        if i > start and acc + p > max_pixels:
            chunks.append(batch.slice(start, i - start))
            start, acc = i, 0
        acc += p
    chunks.append(batch.slice(start))
    return chunks


def call_bounded(
    stage: BatchStage, batch: pa.Table, max_pixels: int | None, keep: tuple[str, ...] = ()
) -> StageOutput:
    """:func:`call_with_oom_split` on slices of at most ``max_pixels`` decoded pixels each, so a batch
    of huge images never decodes at once (``batch_size`` bounds rows, this bounds memory).

    ``keep``: the columns the stage asked for; ``width``/``height`` added only for the split are
    removed before the stage sees the batch."""
    chunks = pixel_chunks(batch, max_pixels) if max_pixels else [batch]
    if keep:
        chunks = [
            c.select([n for n in c.column_names if n in keep or n not in ("width", "height")]) for c in chunks
        ]
    if len(chunks) == 1:
        return call_with_oom_split(stage, chunks[0])
    out = merge_outputs([(call_with_oom_split(stage, c), c) for c in chunks])
    out.metrics[PIXEL_SPLITS] = out.metrics.get(PIXEL_SPLITS, 0) + 1
    return out
