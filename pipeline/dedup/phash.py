"""Near duplicates by perceptual hash (pHash: DCT of a 4·hash_size grey thumbnail, ``imagehash``).

Images are visited in (source, source_id, uid) order, as in exact dedup; an image is dropped
(``near_duplicate``) when its hash is within ``max_distance`` Hamming bits of an earlier *kept*
image, and ``duplicate_of`` names the nearest such one. On a resumed run with new samples, the
images this stage kept before come first (and stay kept), as in exact dedup. Neighbours come from a faiss binary index
range search (popcount in C++, queried in chunks), never a Python loop over all pairs.

With the default 64-bit hash, a resize + JPEG re-encode moves a photo 0-4 bits and a 2-3 % crop
about 2-12 bits (tests/dedup measure it on scikit-image photos); distinct photos sit 20+ apart,
so the default ``max_distance: 6`` catches re-encodes and most light crops.
"""

from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
from PIL import Image

from loupe.pipeline.images import DecodeError, decode
from loupe.pipeline.stage import Stage, StageOutput
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


def near_duplicates(codes: np.ndarray, max_distance: int) -> tuple[np.ndarray, np.ndarray]:
    """For packed hashes in priority order: (duplicate_of index or -1, Hamming distance to it).

    Row j is a duplicate when some earlier *kept* row is within ``max_distance`` bits.
    """
    import faiss

    n = len(codes)
    dup = np.full(n, -1, np.int64)
    dist = np.full(n, -1, np.int64)
    if n == 0:
        return dup, dist
    index = faiss.IndexBinaryFlat(codes.shape[1] * 8)
    index.add(np.ascontiguousarray(codes))
    neighbours: list[np.ndarray] = []
    distances: list[np.ndarray] = []
    for q0 in range(0, n, QUERY_CHUNK):
        lims, d, idx = index.range_search(
            np.ascontiguousarray(codes[q0 : q0 + QUERY_CHUNK]), max_distance + 1
        )
        for i in range(len(lims) - 1):
            neighbours.append(idx[lims[i] : lims[i + 1]])
            distances.append(d[lims[i] : lims[i + 1]])
    for i in range(n):  # sequential on purpose: only kept rows claim later ones
        if dup[i] >= 0:
            continue
        later = neighbours[i] > i
        for j, dj in zip(neighbours[i][later].tolist(), distances[i][later].tolist()):
            if dup[j] < 0 or dj < dist[j]:
                dup[j], dist[j] = i, int(dj)
    return dup, dist


class PhashDedup(Stage):
    name = "phash_dedup"
    table = "dedup"
    reads = ("uid", "source", "source_id")  # image bytes are streamed in chunks, not held at once
    is_global = True

    def _hashes(self, uids: list[str]) -> tuple[dict[str, np.ndarray], dict[str, str]]:
        hashes: dict[str, np.ndarray] = {}
        errors: dict[str, str] = {}
        ds = self.ctx.run.dataset("samples")
        if ds is None:
            return hashes, errors
        flt = pads.field("uid").isin(pa.array(uids, pa.string()))

        def one(item: tuple[str, bytes]) -> tuple[str, np.ndarray | str]:
            uid, data = item
            try:
                return uid, phash_bits(decode(data), self.config.hash_size)
            except (DecodeError, OSError, ValueError) as e:
                return uid, f"{type(e).__name__}: {e}"

        with ThreadPoolExecutor(max_workers=4) as pool:
            for rb in ds.to_batches(columns=["uid", "image"], filter=flt, batch_size=READ_CHUNK):
                items = list(zip(rb.column(0).to_pylist(), rb.column(1).to_pylist()))
                for uid, h in pool.map(one, items):
                    if isinstance(h, str):
                        errors[uid] = h
                    else:
                        hashes[uid] = h
        return hashes, errors

    def __call__(self, batch: pa.Table) -> StageOutput:
        key = lambda r: (r["source"] or "", r["source_id"] or "", r["uid"])  # noqa: E731
        rows_in = sorted(batch.to_pylist(), key=key)
        # a resumed run with new samples: the images this stage kept before come first and stay kept
        earlier = kept_before(self.ctx, self.table, [r["uid"] for r in rows_in])
        if earlier:
            t = self.ctx.run.read_table("samples", ["uid", "source", "source_id"], filter_uids=earlier)
            rows_in = [dict(r, earlier=True) for r in sorted(t.to_pylist(), key=key)] + rows_in
        hashes, errors = self._hashes([r["uid"] for r in rows_in])
        old = set(earlier)
        drops = [self.drop(u, "decode_error", e) for u, e in errors.items() if u not in old]
        rows = [r for r in rows_in if r["uid"] in hashes]
        bits = self.config.hash_size**2
        codes = pack(np.stack([hashes[r["uid"]] for r in rows])) if rows else np.zeros((0, 1), np.uint8)
        dup, dist = near_duplicates(codes, self.config.max_distance)
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
                        f"(max_distance {self.config.max_distance} of {bits})",
                        keeper["uid"],
                    )
                )
        return StageOutput(
            rows=pa.Table.from_pylist(out, schema=DEDUP),
            drops=drops_table(drops),
            metrics={"duplicate_groups": len(grouped), "near_duplicates": int((dup >= 0).sum())},
        )


def phash_of_bytes(data: bytes, hash_size: int = 8) -> np.ndarray:
    """Convenience for tests and notebooks: pHash bits of encoded image bytes."""
    return phash_bits(Image.open(io.BytesIO(data)).convert("RGB"), hash_size)
