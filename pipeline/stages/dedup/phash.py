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

With the default 64-bit hash, a resize + JPEG re-encode moves a photo 0-4 bits and a 2-3 % crop
about 2-12 bits (tests/dedup measure it on scikit-image photos); distinct photos sit 20+ apart,
so the default ``max_distance: 6`` catches re-encodes and most light crops. Different words on the
same sign layout sit 0-8 bits apart: only the confirmation keeps them apart.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
from PIL import Image

from loupe.pipeline.images import DecodeError, decode
from loupe.pipeline.stage import Stage, StageOutput
from loupe.pipeline.stages.dedup.confirm import block_difference, contrast, is_palette, keep_key, signature
from loupe.pipeline.stages.dedup.lsh import lsh_neighbours
from loupe.pipeline.vectors import kept_before
from loupe.schemas.tables import DEDUP, drops_table

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


@dataclass
class _Info:
    """What one image contributes: its hash, whether it carries information, its palette flag."""

    bits: np.ndarray
    contrast: float
    palette: bool


class PhashDedup(Stage):
    name = "phash_dedup"
    table = "dedup"
    reads = ("uid", "source", "source_id", "width", "height")  # bytes are streamed in chunks
    is_global = True

    def _images(
        self, uids: list[str], fn: Callable[[bytes], object]
    ) -> tuple[dict[str, object], dict[str, str]]:
        """``fn(bytes)`` for each uid's image, decoded in chunks on a few threads; errors by uid."""
        got: dict[str, object] = {}
        errors: dict[str, str] = {}
        ds = self.ctx.run.dataset("samples")
        if ds is None or not uids:
            return got, errors
        flt = pads.field("uid").isin(pa.array(uids, pa.string()))

        def one(item: tuple[str, bytes]) -> tuple[str, object]:
            uid, data = item
            try:
                return uid, fn(data)
            except (DecodeError, OSError, ValueError) as e:
                return uid, f"{type(e).__name__}: {e}"

        with ThreadPoolExecutor(max_workers=4) as pool:
            for rb in ds.to_batches(columns=["uid", "image"], filter=flt, batch_size=READ_CHUNK):
                items = list(zip(rb.column(0).to_pylist(), rb.column(1).to_pylist()))
                for uid, h in pool.map(one, items):
                    if isinstance(h, str):
                        errors[uid] = h
                    else:
                        got[uid] = h
        return got, errors

    def _info(self, data: bytes) -> _Info:
        img = decode(data)
        return _Info(phash_bits(img, self.config.hash_size), contrast(img), is_palette(data))

    def __call__(self, batch: pa.Table) -> StageOutput:
        cfg = self.config
        key = lambda r: (r["source"] or "", r["source_id"] or "", r["uid"])  # noqa: E731
        rows_in = sorted(batch.to_pylist(), key=key)
        # a resumed run with new samples: the images this stage kept before come first and stay kept
        earlier = kept_before(self.ctx, self.table, [r["uid"] for r in rows_in])
        if earlier:
            t = self.ctx.run.read_table("samples", list(self.reads), filter_uids=earlier)
            rows_in = [dict(r, earlier=True) for r in sorted(t.to_pylist(), key=key)] + rows_in
        infos, errors = self._images([r["uid"] for r in rows_in], self._info)
        old = set(earlier)
        drops = [self.drop(u, "decode_error", e) for u, e in errors.items() if u not in old]
        rows = [r for r in rows_in if r["uid"] in infos]
        # priority: earlier-kept first, then the keep policy (largest true-colour copy by default)
        for order, r in enumerate(rows):
            info = infos[r["uid"]]
            r["_key"] = (
                not r.get("earlier"),
                *keep_key(cfg.keep, order, r["width"] or 0, r["height"] or 0, info.palette),
            )
        rows.sort(key=lambda r: r["_key"])
        bits = cfg.hash_size**2
        codes = pack(np.stack([infos[r["uid"]].bits for r in rows])) if rows else np.zeros((0, 1), np.uint8)
        excluded = np.array([infos[r["uid"]].contrast < cfg.min_contrast for r in rows], bool)
        sweep = sorted({cfg.max_distance, *cfg.max_distances})
        nbrs = lsh_neighbours(codes, max(sweep)) if rows else ([], [])
        confirm, checked = self._confirmer(rows, nbrs, excluded)
        dup, dist = claim(nbrs, cfg.max_distance, confirm, excluded)
        kept_at = {
            d: int((claim(nbrs, d, confirm, excluded)[0] < 0).sum()) for d in sweep if d != cfg.max_distance
        }
        kept_at[cfg.max_distance] = int((dup < 0).sum())
        root = np.arange(len(rows))
        root[dup >= 0] = dup[dup >= 0]  # a kept row is its own group; duplicates join their keeper
        grouped = set(root[dup >= 0].tolist())
        out = []
        for j, r in enumerate(rows):
            if r.get("earlier"):
                continue
            is_dup = dup[j] >= 0
            keeper = rows[dup[j]] if is_dup else None
            out.append(
                {
                    "uid": r["uid"],
                    "method": "phash",
                    "cluster": int(root[j]) if root[j] in grouped else None,
                    "duplicate_of": keeper["uid"] if keeper else None,
                    "similarity": 1 - dist[j] / bits if is_dup else None,
                    "kept": not is_dup,
                }
            )
            if keeper:
                drops.append(
                    self.drop(
                        r["uid"],
                        "near_duplicate",
                        f"{r['source_id']} is {dist[j]} bits from {keeper['source_id']} "
                        f"(max_distance {cfg.max_distance} of {bits}; confirmed, block difference "
                        f"{checked[(int(dup[j]), j)]:.2f} <= {cfg.confirm_threshold}; keep {cfg.keep})"
                        if cfg.confirm
                        else f"{r['source_id']} is {dist[j]} bits from {keeper['source_id']} "
                        f"(max_distance {cfg.max_distance} of {bits}; keep {cfg.keep})",
                        keeper["uid"],
                    )
                )
        return StageOutput(
            rows=pa.Table.from_pylist(out, schema=DEDUP),
            drops=drops_table(drops),
            metrics={
                "duplicate_groups": len(grouped),
                "near_duplicates": int((dup >= 0).sum()),
                "low_information": int(excluded.sum()),
                "pairs_rejected_by_confirmation": sum(v > cfg.confirm_threshold for v in checked.values()),
                # like SemDeDup's kept_eps_*: the kept count at every max_distance of the sweep
                **{f"kept_max_distance_{d}": kept_at[d] for d in sweep},
            },
        )

    def _confirmer(
        self, rows: list[dict], nbrs: tuple[list[np.ndarray], list[np.ndarray]], excluded: np.ndarray
    ) -> tuple[Callable[[int, int], bool] | None, dict[tuple[int, int], float]]:
        """The second check (``confirm``): block difference of the pair's thumbnails, cached per pair.
        Thumbnails are computed only for images that have a candidate at all."""
        checked: dict[tuple[int, int], float] = {}
        if not self.config.confirm:
            return None, checked
        candidates = sorted({i for i, near in enumerate(nbrs[0]) if len(near) > 1 and not excluded[i]})
        sigs, _ = self._images([rows[i]["uid"] for i in candidates], lambda data: signature(decode(data)))
        by_row = {i: sigs.get(rows[i]["uid"]) for i in candidates}

        def confirm(i: int, j: int) -> bool:
            if (i, j) not in checked:
                a, b = by_row.get(i), by_row.get(j)
                checked[(i, j)] = np.inf if a is None or b is None else block_difference(a, b)
            return checked[(i, j)] <= self.config.confirm_threshold

        return confirm, checked


def phash_of_bytes(data: bytes, hash_size: int = 8) -> np.ndarray:
    """Convenience for tests and notebooks: pHash bits of encoded image bytes."""
    return phash_bits(Image.open(io.BytesIO(data)).convert("RGB"), hash_size)
