"""Near duplicates by perceptual hash (pHash: DCT of a 4·hash_size grey thumbnail, ``imagehash``).

Images are visited in priority order — the ``keep`` policy: by default the largest true-colour copy
first, with ``keep: first`` the (source, source_id, uid) order as in exact dedup; an image is dropped
(``near_duplicate``) when its hash is within ``max_distance`` Hamming bits of an earlier *kept*
image and the pair passes the second check (``confirm``, see ``loupe.pipeline.stages.dedup.confirm``), and
``duplicate_of`` names the nearest such one. Low-information images (flat colour) are never merged.
On a resumed run with new samples, the images this stage kept before come first (and stay kept), as
in exact dedup. Neighbours come from band LSH (``loupe.pipeline.stages.dedup.lsh``: max_distance + 1
bands, so every pair within the distance shares one band exactly; only rows sharing a band are
compared), never from all pairs; the search runs once at the largest distance of
the ``max_distances`` sweep, whose kept counts are reported like SemDeDup's ``epsilons``.

Two stages: ``phash`` (per row: decodes each image once and writes its hash to the ``phash`` table;
a recipe's ``phash_dedup`` gets one inserted before it) and ``phash_dedup`` (global: reads only that
table). Under ``--executor ray`` the hashing is a map over actor pools and the search a shuffle by
band value, then :func:`decide` per group of connected components
(:mod:`loupe.pipeline.executors.ray_dedup`); both give the kept set :func:`decide` gives on all rows.

With the default 64-bit hash, a resize + JPEG re-encode moves a photo 0-4 bits and a 2-3 % crop
about 2-12 bits (tests/dedup measure it on scikit-image photos); distinct photos sit 20+ apart,
so the default ``max_distance: 6`` catches re-encodes and most light crops. Different words on the
same sign layout sit 0-8 bits apart: only the confirmation keeps them apart.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
from PIL import Image

from loupe.pipeline.errors import RecipeError
from loupe.pipeline.images import DecodeError, decode
from loupe.pipeline.stage import Stage, StageOutput
from loupe.pipeline.stages.dedup.confirm import block_difference, contrast, is_palette, keep_key, signature
from loupe.pipeline.stages.dedup.exact import group_id
from loupe.pipeline.stages.dedup.lsh import lsh_neighbours
from loupe.pipeline.vectors import kept_before
from loupe.schemas.tables import DEDUP, PHASH, drops_table

READ_CHUNK = 512  # images decoded at a time, so a million-image run never holds all bytes at once
QUERY_CHUNK = 4096  # range-search queries per call (bounds the result buffers)


def phash_bits(img: Image.Image, hash_size: int = 8) -> np.ndarray:
    """The pHash of an image as a flat bool array of hash_size² bits."""
    import imagehash

    return np.asarray(imagehash.phash(img, hash_size=hash_size).hash, bool).ravel()


def pack(bits: np.ndarray) -> np.ndarray:
    """(n, b) bools -> (n, ceil(b/8)) uint8; zero padding leaves Hamming distances unchanged."""
    return np.packbits(bits, axis=1)


def neighbours(codes: np.ndarray, radius: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per row: the indices and Hamming distances of every row within ``radius`` bits (itself included).

    The exhaustive reference (every pair, popcount in faiss); the stage uses the band-LSH search
    :func:`loupe.pipeline.stages.dedup.lsh.lsh_neighbours`, which returns the same lists (tests/dedup/test_lsh.py)."""
    import faiss

    index = faiss.IndexBinaryFlat(codes.shape[1] * 8)
    index.add(np.ascontiguousarray(codes))
    idx_out: list[np.ndarray] = []
    dist_out: list[np.ndarray] = []
    for q0 in range(0, len(codes), QUERY_CHUNK):
        lims, d, idx = index.range_search(np.ascontiguousarray(codes[q0 : q0 + QUERY_CHUNK]), radius + 1)
        for i in range(len(lims) - 1):
            idx_out.append(idx[lims[i] : lims[i + 1]])
            dist_out.append(d[lims[i] : lims[i + 1]])
    return idx_out, dist_out


def claim(
    nbrs: tuple[list[np.ndarray], list[np.ndarray]],
    max_distance: int,
    confirm: Callable[[int, int], bool] | None = None,
    excluded: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Rows in priority order claim later rows within ``max_distance`` bits; only kept rows claim.

    ``confirm(i, j)`` (optional) must also accept a pair; ``excluded`` rows (low information) are
    neither claimed nor claim others.
    """
    n = len(nbrs[0])
    dup = np.full(n, -1, np.int64)
    dist = np.full(n, -1, np.int64)
    for i in range(n):  # sequential on purpose: only kept rows claim later ones
        if dup[i] >= 0 or (excluded is not None and excluded[i]):
            continue
        near, d = nbrs[0][i], nbrs[1][i]
        later = (near > i) & (d <= max_distance)
        for j, dj in zip(near[later].tolist(), d[later].tolist()):
            if excluded is not None and excluded[j]:
                continue
            if (dup[j] < 0 or dj < dist[j]) and (confirm is None or confirm(i, j)):
                dup[j], dist[j] = i, int(dj)
    return dup, dist


def near_duplicates(
    codes: np.ndarray,
    max_distance: int,
    confirm: Callable[[int, int], bool] | None = None,
    excluded: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """For packed hashes in priority order: (duplicate_of index or -1, Hamming distance to it).

    Row j is a duplicate when some earlier *kept* row is within ``max_distance`` bits (and, with
    ``confirm``, the pair passes that second check).
    """
    n = len(codes)
    if n == 0:
        return np.full(0, -1, np.int64), np.full(0, -1, np.int64)
    return claim(lsh_neighbours(codes, max_distance), max_distance, confirm, excluded)


class PhashStage(Stage):
    """Per-row: the pHash of every image, written to the ``phash`` table with what the search needs
    beside it (contrast, palette flag, and the keep policy's inputs). Under Ray this runs as a map over
    actor pools, decoding each image once where its bytes are read; undecodable images are dropped here."""

    name = "phash"
    table = "phash"
    reads = ("uid", "image", "source", "source_id", "width", "height")

    def __call__(self, batch: pa.Table) -> StageOutput:
        size = self.config.hash_size
        rows, drops = [], []
        for r in batch.to_pylist():
            try:
                img = decode(r["image"])
                bits = phash_bits(img, size)
                rows.append(
                    {
                        "uid": r["uid"],
                        "hash": np.packbits(bits).tobytes(),
                        "bits": size * size,
                        "contrast": contrast(img),
                        "palette": is_palette(r["image"]),
                        **{k: r[k] for k in ("source", "source_id", "width", "height")},
                    }
                )
            except (DecodeError, OSError, ValueError) as e:
                drops.append(self.drop(r["uid"], "decode_error", f"{type(e).__name__}: {e}"))
        return StageOutput(rows=pa.Table.from_pylist(rows, schema=PHASH), drops=drops_table(drops))


def decide(
    rows: pa.Table, cfg: Any, signatures: Callable[[list[str]], dict[str, np.ndarray]], stage: Stage
) -> tuple[list[dict], list[dict], dict[str, Any]]:
    """The near-duplicate rule on ``phash`` rows (plus a bool ``earlier``: kept by an earlier run of the
    stage): dedup rows and drop rows of the rows not ``earlier``, and the metrics.

    Any set of rows closed under the candidate pairs (a whole connected component of the pairs within
    the largest swept distance, or the whole run) gives the same decisions for its rows, because only
    rows within that distance ever claim each other: the Ray path applies it per group of components.
    ``signatures(uids)`` gives the confirmation thumbnails of the images that have a candidate."""
    bits = cfg.hash_size**2
    recs = rows.to_pylist()
    # priority: earlier-kept first, then the keep policy (largest true-colour copy by default)
    for r in recs:
        order = (r["source"] or "", r["source_id"] or "", r["uid"])
        r["_key"] = (
            not r["earlier"],
            *keep_key(cfg.keep, order, r["width"] or 0, r["height"] or 0, r["palette"]),
        )
    recs.sort(key=lambda r: r["_key"])
    n = len(recs)
    codes = (
        np.frombuffer(b"".join(r["hash"] for r in recs), np.uint8).reshape(n, -1)
        if n
        else np.zeros((0, 1), np.uint8)
    )
    excluded = np.array([r["contrast"] < cfg.min_contrast for r in recs], bool)
    sweep = sorted({cfg.max_distance, *cfg.max_distances})
    nbrs = lsh_neighbours(codes, max(sweep)) if n else ([], [])
    checked: dict[tuple[int, int], float] = {}
    confirm = None
    if cfg.confirm:
        candidates = sorted({i for i, near in enumerate(nbrs[0]) if len(near) > 1 and not excluded[i]})
        sigs = signatures([recs[i]["uid"] for i in candidates]) if candidates else {}
        by_row = {i: sigs.get(recs[i]["uid"]) for i in candidates}

        def confirm(i: int, j: int) -> bool:
            if (i, j) not in checked:
                a, b = by_row.get(i), by_row.get(j)
                checked[(i, j)] = np.inf if a is None or b is None else block_difference(a, b)
            return checked[(i, j)] <= cfg.confirm_threshold

    dup, dist = claim(nbrs, cfg.max_distance, confirm, excluded)
    kept_at = {
        d: int((claim(nbrs, d, confirm, excluded)[0] < 0).sum()) for d in sweep if d != cfg.max_distance
    }
    kept_at[cfg.max_distance] = int((dup < 0).sum())
    grouped = set(dup[dup >= 0].tolist())
    out, drops = [], []
    for j, r in enumerate(recs):
        if r["earlier"]:
            continue
        is_dup = dup[j] >= 0
        keeper = recs[dup[j]] if is_dup else None
        root = keeper["uid"] if keeper else r["uid"]
        out.append(
            {
                "uid": r["uid"],
                "method": "phash",
                "cluster": group_id(root) if is_dup or j in grouped else None,
                "duplicate_of": keeper["uid"] if keeper else None,
                "similarity": 1 - dist[j] / bits if is_dup else None,
                "kept": not is_dup,
            }
        )
        if keeper:
            why = (
                f"confirmed, block difference {checked[(int(dup[j]), j)]:.2f} <= {cfg.confirm_threshold}; "
                if cfg.confirm
                else ""
            )
            drops.append(
                stage.drop(
                    r["uid"],
                    "near_duplicate",
                    f"{r['source_id']} is {dist[j]} bits from {keeper['source_id']} "
                    f"(max_distance {cfg.max_distance} of {bits}; {why}keep {cfg.keep})",
                    keeper["uid"],
                )
            )
    metrics = {
        "duplicate_groups": len(grouped),
        "near_duplicates": int((dup >= 0).sum()),
        "low_information": int(excluded.sum()),
        "pairs_rejected_by_confirmation": sum(v > cfg.confirm_threshold for v in checked.values()),
        # like SemDeDup's kept_eps_*: the kept count at every max_distance of the sweep
        **{f"kept_max_distance_{d}": kept_at[d] for d in sweep},
    }
    return out, drops, metrics


def phash_rows(run: Any, uids: list[str], hash_size: int) -> pa.Table:
    """The ``phash`` rows (hash_size² bits) of ``uids``, one per uid."""
    t = run.read_table("phash", list(PHASH.names), filter_uids=uids)
    t = t.filter(pc.equal(t["bits"], hash_size * hash_size))
    _, first = np.unique(np.asarray(t["uid"].to_pylist(), dtype=object).astype(str), return_index=True)
    return t.take(pa.array(np.sort(first))) if t.num_rows else t


class PhashDedup(Stage):
    """The search: reads only the ``phash`` table (hashes + keep-policy inputs); image bytes are read
    again only for the few images with a candidate, for the confirmation thumbnails."""

    name = "phash_dedup"
    table = "dedup"
    reads = ("uid",)
    is_global = True

    def signatures(self, uids: list[str]) -> dict[str, np.ndarray]:
        """Confirmation thumbnails of ``uids``, decoded in chunks on a few threads (errors: none)."""
        got: dict[str, np.ndarray] = {}
        ds = self.ctx.run.dataset("samples")
        if ds is None or not uids:
            return got
        flt = pads.field("uid").isin(pa.array(uids, pa.string()))

        def one(item: tuple[str, bytes]) -> tuple[str, np.ndarray | None]:
            try:
                return item[0], signature(decode(item[1]))
            except (DecodeError, OSError, ValueError):
                return item[0], None

        with ThreadPoolExecutor(max_workers=4) as pool:
            for rb in ds.to_batches(columns=["uid", "image"], filter=flt, batch_size=READ_CHUNK):
                items = list(zip(rb.column(0).to_pylist(), rb.column(1).to_pylist()))
                got.update((u, s) for u, s in pool.map(one, items) if s is not None)
        return got

    def __call__(self, batch: pa.Table) -> StageOutput:
        uids = batch["uid"].to_pylist()
        # a resumed run with new samples: the images this stage kept before come first and stay kept
        earlier = kept_before(self.ctx, self.table, uids)
        rows = phash_rows(self.ctx.run, earlier + uids, self.config.hash_size)
        missing = set(uids) - set(rows["uid"].to_pylist())
        if missing:
            raise RecipeError(
                f"{self.ctx.stage_name}: no phash of hash_size {self.config.hash_size} for {len(missing)} "
                f"live samples (e.g. {sorted(missing)[0]}); add `- stage: phash` before it"
            )
        old = set(earlier)
        rows = rows.append_column(
            "earlier", pa.array([u in old for u in rows["uid"].to_pylist()], pa.bool_())
        )
        out, drops, metrics = decide(rows, self.config, self.signatures, self)
        return StageOutput(
            rows=pa.Table.from_pylist(out, schema=DEDUP), drops=drops_table(drops), metrics=metrics
        )


def phash_of_bytes(data: bytes, hash_size: int = 8) -> np.ndarray:
    """Convenience for tests and notebooks: pHash bits of encoded image bytes."""
    return phash_bits(Image.open(io.BytesIO(data)).convert("RGB"), hash_size)
