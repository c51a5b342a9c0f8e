"""SemDeDup on Ray, as the release and NeMo Curator run it at scale: no process holds all vectors.

Input: a Ray ``Dataset`` with columns ``idx`` (int64, the vector's position in the input order) and
``vector`` (``dim`` floats), plus any other columns (``uid``, ``prior`` = kept by an earlier run),
which travel with the vector. Three steps:

1. **k-means on a sample, in one task** (:func:`train_centroids`). faiss trains on at most
   ``max_points_per_centroid`` (256) points per centroid (the release's ``clustering/clustering.py``
   keeps faiss's default sampling); faiss draws them as the first ``k * 256`` of
   ``rand_perm(n, seed)`` (faiss ``Clustering.cpp``, ``subsample_training_set``). We draw the same
   indices on the driver, pull only those rows out of the shards with a filter map, and train in one
   task on them *in that order*, so faiss sees exactly what it sees in
   :func:`~.semdedup.spherical_kmeans`: same centroids.
2. **Assignment, spilled by cluster** (:func:`spill_by_cluster`): a ``map_batches`` over the shards
   (NeMo Curator's ``KMeans`` predict step) gives each row its nearest centroid (or, for selection,
   the cluster an earlier stage recorded) and writes the batch, **sorted by cluster**, to one
   uncompressed Arrow IPC file under a scratch dir. It returns only per-cluster counts.
3. **The within-cluster rule** (:func:`semdedup_group`, ARCHITECTURE.md's definition: ``M[j]`` over
   all earlier members) as a parallel map over **groups of consecutive cluster ids**, packed so a
   group holds at most ``max(largest cluster, GROUP_ROWS)`` rows (:func:`group_rows`). A group task
   reads exactly its clusters of every spill file and nothing else (:func:`read_group`): in a local
   run dir it memory-maps the file (one record batch) and binary-searches its cluster range in the
   sorted ``cluster`` column (zero-copy views); on an object store the file holds one record batch
   per cluster, named in its footer (``loupe.clusters``), and the task fetches the footer and then
   only its clusters' batches (ranged GETs). Each task runs in a
   fresh worker process (``max_calls=1`` and a runtime env of its own): its memory goes back to the OS
   when it ends, and its peak RSS (``VmHWM``, reported with its result) is its own.

Why not ``groupby("cluster").map_groups`` (the first version of this module): measured with
``benchmarks/bench_semdedup_ray.py`` the largest worker's private memory grew with N (1.2 GB at
62.5k vectors, 4.3 GB at 250k) and the process holding it was Ray Data's hash-shuffle aggregator
actor, which keeps its whole partition (N / ``num_partitions`` rows, every cluster hashed to it)
until it finalises. More partitions only divide that by a constant. The spill files instead make
the bound structural: a group task holds at most ``max(largest cluster, GROUP_ROWS)`` rows, whatever N.
They also give the issue's "spill a cluster too large for memory to blocks" for free: a cluster past
``spill_bytes`` is copied, in order, to a ``.npy`` memory map and compared block by block
(:func:`~.semdedup._max_earlier` only slices ``block_size`` rows at a time), so its task holds
O(``block_size``²) plus the page cache. The spill files are written through the run dir's
:class:`~loupe.pipeline.storage.Storage` (a local folder: temp name + rename; an object store: one
upload per file, published whole), so they live wherever the run dir lives, every node reaches them
without a shared POSIX mount, and a rerun after a kill can reuse them. Only the ``.npy`` map of an
oversize cluster is a node-local file (:func:`node_scratch`): it lives as long as its task.

Results equal :func:`~.semdedup.spherical_kmeans` + :func:`~.semdedup.semdedup_clusters` on the
same vectors in ``idx`` order, bit for bit: raw vectors travel, and each task normalises rows and
orders members (by ``idx`` first) exactly as the local pass does. ``keep="random"`` needs a ``uid``
column: each cluster is shuffled by its own generator, seeded from ``seed`` and its sorted member uids
(:func:`~.semdedup.random_order`), in the group task as in the local pass.
"""

from __future__ import annotations

import json
import os
import tempfile
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa

from loupe.pipeline.stages.dedup.semdedup import (
    Keep,
    Variant,
    _as_unit,
    _cluster_order,
    _epsilons,
    _greedy,
    _max_earlier,
    centroid_similarity,
    faiss_gpus,
)
from loupe.pipeline.storage import Storage, open_storage

#: footer metadata key of a spill file: the cluster id of each of its record batches (ascending)
CLUSTERS_KEY = b"loupe.clusters"

#: faiss's ``IndexFlatIP.search`` uses BLAS from this many queries on (``distance_compute_blas_threshold``)
#: and a per-row kernel below it; a batch is padded to it so every row is scored by the same kernel.
_BLAS_MIN = 20
#: rows per spill file (the assignment map's batch): embeddings shards are small (one per embed batch)
SPILL_ROWS = 20_000
#: a cluster whose vectors pass this many bytes is compared from a memory-mapped file, block by block
SPILL_BYTES = 1 << 30
#: a group task gets at least this many rows (more when the largest cluster is bigger): each task
#: runs in a fresh worker process (``max_calls=1``), whose start this amortises
GROUP_ROWS = 16_384


def reset_peak_rss() -> None:
    """Start this process's peak-RSS count afresh (Linux ``clear_refs`` 5 resets ``VmHWM``)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def _status_mb(key: str) -> float | None:
    """A ``/proc/self/status`` figure in MB (None off Linux)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(f"{key}:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None


def shm_rss_mb() -> float:
    """This process's resident shared-memory pages (MB, ``RssShmem``): in a Ray worker, the object
    store's pages it has touched, which stay mapped (and in its RSS) after the objects are gone."""
    return _status_mb("RssShmem") or 0.0


def peak_rss_mb() -> float:
    """This process's peak resident set (MB) since :func:`reset_peak_rss` (``VmHWM``; ``ru_maxrss``
    off Linux): at the start of a group task, so a task's figure is its own."""
    hwm = _status_mb("VmHWM")
    if hwm is not None:
        return hwm
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def sample_indices(n: int, k: int, seed: int, max_points_per_centroid: int | None) -> np.ndarray:
    """The input positions faiss k-means trains on, in faiss's order (all of them when n <= k * max)."""
    import faiss

    k = max(1, min(k, n))
    cap = max_points_per_centroid or max(256, -(-n // k))
    if n <= k * cap:
        return np.arange(n, dtype=np.int64)
    perm = np.zeros(n, np.int32)
    faiss.rand_perm(faiss.swig_ptr(perm), n, seed)  # faiss Clustering.cpp subsample_training_set
    return perm[: k * cap].astype(np.int64)


def _matrix(col: Any) -> np.ndarray:
    """A ``vector`` column (numpy 2-D or object rows, or an Arrow fixed/variable list) as float32 (b, d)."""
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    if isinstance(col, (pa.FixedSizeListArray, pa.ListArray, pa.LargeListArray)):
        if len(col) == 0:
            return np.zeros((0, 0), np.float32)
        flat = col.flatten().to_numpy(zero_copy_only=False)
        return np.ascontiguousarray(flat.reshape(len(col), -1), dtype=np.float32)
    arr = np.asarray(col)
    if arr.dtype == object:
        arr = np.stack([np.asarray(v, np.float32) for v in arr]) if len(arr) else np.zeros((0, 0), np.float32)
    return np.ascontiguousarray(arr, dtype=np.float32)


# ------------------------------------------------------------------------------ 1. k-means on a sample
def _train(blocks: list[Any], sample: np.ndarray, k: int, iters: int, seed: int, use_gpu: str) -> np.ndarray:
    """Train spherical k-means on the sample rows (Arrow block refs), in ``sample`` order."""
    import faiss
    import ray

    tables = [t for t in ray.get(blocks) if t.num_rows]
    t = pa.concat_tables(tables).combine_chunks()
    idx = t["idx"].to_numpy()
    pos = {int(i): p for p, i in enumerate(sample.tolist())}
    order = np.argsort([pos[int(i)] for i in idx], kind="stable")
    x = _as_unit(_matrix(t["vector"])[order])
    n, d = x.shape
    k = max(1, min(k, n))
    km = faiss.Kmeans(
        d, k, niter=iters, seed=seed, spherical=True, gpu=faiss_gpus(use_gpu), verbose=False,
        max_points_per_centroid=max(1, -(-n // k)), min_points_per_centroid=1,
    )  # fmt: skip
    km.train(x)  # n <= k * max_points_per_centroid here: faiss trains on every row given, as ordered
    return _as_unit(km.centroids)


def _keep_sample(batch: pa.Table, sample: np.ndarray) -> pa.Table:
    return batch.select(["idx", "vector"]).filter(pa.array(np.isin(batch["idx"].to_numpy(), sample)))


def train_centroids(
    ds: Any,
    n: int,
    n_clusters: int,
    kmeans_iters: int = 100,
    seed: int = 1234,
    use_gpu: Literal["auto", "yes", "no"] = "auto",
    max_points_per_centroid: int | None = 256,
    num_cpus: float = 1,
    num_gpus: float = 0,
) -> np.ndarray:
    """Spherical k-means centroids of the ``n`` vectors of ``ds``: only the training sample moves."""
    import ray

    if n == 0:
        raise ValueError("semdedup_ray: no vectors")
    sample = sample_indices(n, n_clusters, seed, max_points_per_centroid)
    picked = ds.map_batches(_keep_sample, fn_kwargs={"sample": sample}, batch_format="pyarrow").materialize()
    # a fresh worker that exits afterwards (as the group tasks): the sample's memory is not left in a
    # worker that Ray Data would reuse for its map tasks
    train = ray.remote(max_calls=1)(_train).options(
        num_cpus=num_cpus, num_gpus=num_gpus, runtime_env={"env_vars": {"LOUPE_GROUP_TASK": "_train"}}
    )
    return ray.get(train.remote(picked.to_arrow_refs(), sample, n_clusters, kmeans_iters, seed, use_gpu))


# ------------------------------------------------------------------------------ 2. assignment, spilled
def assign(x: np.ndarray, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nearest centroid (inner product of unit rows) and the cosine to it, row by row."""
    import faiss

    b = len(x)
    if b == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.float32)
    q = np.vstack([x, np.repeat(x[:1], _BLAS_MIN - b, axis=0)]) if b < _BLAS_MIN else x
    index = faiss.IndexFlatIP(centroids.shape[1])
    index.add(centroids)
    _, lab = index.search(q, 1)
    labels = lab[:b, 0].astype(np.int64)
    return labels, centroid_similarity(x, centroids, labels)


def node_scratch() -> Path:
    """A node-local folder for a task's private working files (the ``.npy`` map of a cluster past
    ``spill_bytes``): ``$LOUPE_SCRATCH_DIR`` (e.g. a fast local NVMe) or the temp dir. Nothing in it
    outlives its task or is read by another node; everything a rerun reuses is in the run dir."""
    return Path(os.environ.get("LOUPE_SCRATCH_DIR") or tempfile.gettempdir()) / "loupe-scratch"


def write_ipc(
    table: pa.Table, st: Storage, rel: str, by_cluster: bool = False, metadata: dict | None = None
) -> None:
    """One uncompressed Arrow IPC file ``rel`` written through the storage (a local folder: temp
    name + rename; an object store: streamed as one upload that is published only when complete).

    ``by_cluster``: ``table`` is sorted by ``cluster``; each cluster becomes one record batch and the
    footer lists their cluster ids (:data:`CLUSTERS_KEY`), so a reader fetches only its clusters.
    (Not in a local folder: there a memory map and a binary search on the cluster column cost less
    than parsing a footer of one block per cluster, which matters when a file holds ~1 row per
    cluster, as with 50 000 clusters and 20 000-row files.)"""
    table = table.combine_chunks()
    batches = table.to_batches()
    meta = dict(metadata or {})
    if by_cluster and table.num_rows:
        rb = batches[0]
        cl = table["cluster"].to_numpy()
        bounds = np.r_[0, np.flatnonzero(np.diff(cl)) + 1, len(cl)]
        batches = [rb.slice(int(a), int(b - a)) for a, b in zip(bounds[:-1], bounds[1:])]
        meta[CLUSTERS_KEY] = json.dumps(cl[bounds[:-1]].tolist())
    with st.open_output(rel) as out, pa.ipc.new_file(out, table.schema, metadata=meta or None) as w:
        for b in batches:
            w.write_batch(b)


def _open_ipc(st: Storage, rel: str) -> Any:
    """A random-access handle: a memory map in a local folder, a ranged-GET file on an object store."""
    return pa.memory_map(st.key(rel), "r") if st.local else st.fs.open_input_file(st.key(rel))


def read_ipc(st: Storage, rel: str) -> pa.Table:
    with _open_ipc(st, rel) as src:
        return pa.ipc.open_file(src).read_all()


def ipc_schema(st: Storage, rel: str) -> pa.Schema:
    """The schema of an IPC file (from its footer: on an object store two small ranged GETs)."""
    with _open_ipc(st, rel) as src:
        return pa.ipc.open_file(src).schema


def _spill_block(batch: pa.Table, where: Storage, prefix: str, centroids: Any) -> pa.Table:
    """Label one batch, sort it by (cluster, idx) and write it as one spill file ``<prefix>/<uuid>.arrow``
    through the storage (:func:`write_ipc`; on an object store one record batch per cluster);
    return its counts.

    With ``centroids``, each row goes to its nearest centroid (and gets ``similarity``); without, the
    batch already carries its ``cluster`` (selection: the cluster SemDeDup recorded).
    """
    import ray

    if centroids is not None:
        cent = ray.get(centroids) if isinstance(centroids, ray.ObjectRef) else centroids
        labels, sim = assign(_as_unit(_matrix(batch["vector"])), cent)
        batch = batch.append_column("similarity", pa.array(sim, pa.float32()))
        batch = batch.append_column("cluster", pa.array(labels, pa.int64()))
    labels = batch["cluster"].to_numpy()
    order = np.lexsort((batch["idx"].to_numpy(), labels))
    batch = batch.take(pa.array(order))
    c, counts = np.unique(labels, return_counts=True)
    best: dict[str, list] = {"best_sim": [], "best_idx": [], "best_uid": []}
    if centroids is not None and "uid" in batch.column_names and batch.num_rows:
        # each cluster's member nearest the centroid here (highest cosine, ties by lowest idx)
        lab, sim, idx = batch["cluster"].to_numpy(), batch["similarity"].to_numpy(), batch["idx"].to_numpy()
        o = np.lexsort((idx, -sim, lab))
        first = o[np.r_[True, lab[o][1:] != lab[o][:-1]]]
        best = {"best_sim": sim[first].tolist(), "best_idx": idx[first].tolist(),
                "best_uid": batch["uid"].take(pa.array(first)).to_pylist()}  # fmt: skip
    rel = f"{prefix}/{uuid.uuid4().hex}.arrow"
    if batch.num_rows:
        write_ipc(batch, where, rel, by_cluster=not where.local)
    peak, shm = peak_rss_mb(), shm_rss_mb()
    reset_peak_rss()  # Ray Data reuses the worker: its next batch counts from here
    return pa.table(
        {
            "file": [rel if batch.num_rows else ""],
            "clusters": pa.array([c.tolist()], pa.list_(pa.int64())),
            "counts": pa.array([counts.tolist()], pa.list_(pa.int64())),
            "peak_rss_mb": [peak],
            "shm_mb": [shm],
            "best_sim": pa.array([best["best_sim"]], pa.list_(pa.float32())),
            "best_idx": pa.array([best["best_idx"]], pa.list_(pa.int64())),
            "best_uid": pa.array([best["best_uid"]], pa.list_(pa.string())),
        }
    )


def spill_by_cluster(
    ds: Any,
    where: Storage | str | Path,
    prefix: str,
    n_clusters: int,
    centroids: np.ndarray | None = None,
    rows_per_file: int | None = None,
    num_cpus: float = 1,
    stats: dict | None = None,
    nearest: dict[int, tuple[float, int, str]] | None = None,
) -> tuple[list[str], np.ndarray]:
    """Write ``ds`` to spill files ``<prefix>/*.arrow`` of the storage ``where`` (a run dir's
    scratch folder, local or on an object store), each sorted by cluster; returns (their paths
    relative to ``where``, cluster sizes). The workers write the files themselves.

    ``centroids``: assign each row to the nearest; ``None``: ``ds`` has a ``cluster`` column already.
    The driver only streams back one small row per file and sums the (k,) cluster sizes.
    ``stats``: filled with the largest peak RSS of one assignment batch (``VmHWM`` from the end of
    the worker's previous batch, the fused read included) and its worker's object-store pages
    (``RssShmem``: part of that RSS, but shared and left by earlier tasks of the reused worker).
    ``nearest`` (with ``centroids`` and a ``uid`` column): filled with each cluster's member nearest
    its centroid, ``cluster -> (-cosine, idx, uid)`` (the smallest over the files: highest cosine, ties
    by lowest idx, as :func:`~.semdedup.representatives`), O(k) on the driver.
    """
    import ray

    cref = ray.put(centroids) if centroids is not None else None
    out = ds.map_batches(
        _spill_block,
        fn_kwargs={"where": open_storage(where, "scratch"), "prefix": prefix, "centroids": cref},
        batch_size=rows_per_file or SPILL_ROWS,
        batch_format="pyarrow",
        num_cpus=num_cpus,
    )
    files: list[str] = []
    sizes = np.zeros(n_clusters, np.int64)
    peaks: list[tuple[float, float]] = []
    for part in out.iter_batches(batch_size=None, batch_format="pyarrow"):
        for f, c, m in zip(
            part["file"].to_pylist(), part["clusters"].to_pylist(), part["counts"].to_pylist()
        ):
            if f:
                files.append(f)
            np.add.at(sizes, np.asarray(c, np.int64), np.asarray(m, np.int64))
        peaks += zip(part["peak_rss_mb"].to_pylist(), part["shm_mb"].to_pylist())
        if nearest is not None:
            for c, bs, bi, bu in zip(
                *(part[k].to_pylist() for k in ("clusters", "best_sim", "best_idx", "best_uid"))
            ):
                for key, cand in zip(c, zip((-x for x in bs), bi, bu)):
                    if key not in nearest or cand < nearest[key]:
                        nearest[key] = cand
    if stats is not None and peaks:
        stats["assign_tasks"] = len(peaks)
        stats["assign_peak_rss_mb"], stats["assign_shm_mb"] = max(peaks)
        stats["assign_peak_rss_mb_without_shm"] = max(p - m for p, m in peaks)
    return sorted(files), sizes


def cluster_groups(sizes: np.ndarray, max_rows: int) -> list[tuple[int, int]]:
    """Consecutive cluster-id ranges ``[c0, c1)`` of at most ``max_rows`` rows (a bigger cluster alone)."""
    groups: list[tuple[int, int]] = []
    start, rows = 0, 0
    for c, s in enumerate(sizes.tolist()):
        if rows and rows + s > max_rows:
            groups.append((start, c))
            start, rows = c, 0
        rows += s
    if rows:
        groups.append((start, len(sizes)))
    return [(a, b) for a, b in groups if sizes[a:b].sum()]


def group_rows(sizes: np.ndarray, block_size: int = 0, minimum: int | None = None) -> int:
    """Most rows of a group task: the largest cluster, and at least ``minimum`` (default
    :data:`GROUP_ROWS`) and ``block_size``."""
    return max(int(sizes.max()) if len(sizes) else 0, GROUP_ROWS if minimum is None else minimum, block_size)


def _owned(t: pa.Table) -> pa.Table:
    """``t`` copied into buffers of its own (``take`` always allocates): none refers to a memory map."""
    return t.take(pa.array(np.arange(t.num_rows, dtype=np.int64)))


def read_group(
    st: Storage, files: Sequence[str], c0: int, c1: int, own_bytes: int = SPILL_BYTES
) -> tuple[pa.Table, np.ndarray]:
    """The rows of clusters ``[c0, c1)`` from every spill file (paths relative to ``st``), and their
    order by (cluster, idx).

    A file with :data:`CLUSTERS_KEY` in its footer (an object store's): only the record batches of
    ``[c0, c1)`` are fetched (``get_batch``, one ranged GET each). A file of one record batch (a local
    folder's): memory-mapped, its cluster range found by binary search on the sorted ``cluster``
    column. Its rows are copied out and the file unmapped before the next is opened, up to
    ``own_bytes`` in all; past that (a group holding a cluster too big for memory) they stay
    zero-copy slices (Arrow keeps a map alive while a buffer of it is referenced: a row's vector is
    read from disk only when a task takes it). A map keeps every page the task faulted in resident,
    ~3.4 MB per spill file here (binary search, footer and the slice's edges), so views of all
    files made a task grow with their number, N / ``rows_per_file`` (docs/benchmarks.md).
    """
    owned = 0
    parts = []
    for f in files:
        with _open_ipc(st, f) as src:
            r = pa.ipc.open_file(src)
            meta = r.metadata or {}
            if CLUSTERS_KEY in meta:
                cl = np.asarray(json.loads(meta[CLUSTERS_KEY]), np.int64)
                a, b = np.searchsorted(cl, [c0, c1], side="left")
                parts.extend(pa.Table.from_batches([r.get_batch(i)]) for i in range(int(a), int(b)))
            else:  # one record batch: binary search its cluster column
                t = r.read_all()
                cl = t["cluster"].chunk(0).to_numpy() if t.num_rows else np.zeros(0, np.int64)
                a, b = np.searchsorted(cl, [c0, c1], side="left")
                if b > a:
                    part = t.slice(int(a), int(b - a))
                    if st.local and owned + part.nbytes <= own_bytes:
                        owned += part.nbytes
                        part = _owned(part)
                    parts.append(part)
                del t, cl  # with no view of it kept, the file is unmapped here
    if not parts:
        return pa.table({}), np.zeros(0, np.int64)
    t = pa.concat_tables(parts)
    return t, np.lexsort((t["idx"].to_numpy(), t["cluster"].to_numpy()))


# ------------------------------------------------------------------------------ 3. the rule per cluster
def _take_matrix(vec: Any, rows: np.ndarray) -> np.ndarray:
    """Rows ``rows`` (in that order) of a vector column as float32 ``(len(rows), d)``, taken chunk by
    chunk. Arrow's ``take`` on a chunked list column concatenates every chunk first: on a group
    task's view of the spill files (one chunk per file and cluster) that copied the whole group's
    vectors for every cluster, and a cluster past ``spill_bytes`` whole for every ``block_size`` rows."""
    if not isinstance(vec, pa.ChunkedArray) or vec.num_chunks <= 1:
        return _matrix(vec.take(pa.array(rows)))
    starts = np.cumsum([0] + [len(c) for c in vec.chunks])
    which = np.searchsorted(starts, rows, side="right") - 1
    out: np.ndarray | None = None
    for ci in np.unique(which).tolist():
        sel = np.flatnonzero(which == ci)
        m = _matrix(vec.chunk(ci).take(pa.array(rows[sel] - starts[ci])))
        if out is None:
            out = np.empty((len(rows), m.shape[1]), np.float32)
        out[sel] = m
    return out if out is not None else np.zeros((0, 0), np.float32)


def _spilled_unit(vec: Any, ordered: np.ndarray, path: Path, chunk: int) -> np.ndarray:
    """Unit rows ``ordered`` of the vector column ``vec`` in a ``.npy`` memory map, chunk by chunk
    (the column may be a view of the spill files: only ``chunk`` rows are in memory at a time)."""
    d = _take_matrix(vec, ordered[:1]).shape[1]
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(len(ordered), d))
    for a in range(0, len(ordered), chunk):
        out[a : a + chunk] = _as_unit(_take_matrix(vec, ordered[a : a + chunk]))
    out.flush()
    return np.load(path, mmap_mode="r")


def rule_one_cluster(
    t: pa.Table,
    eps: list[float],
    keep: Keep,
    variant: Variant,
    block_size: int,
    spill_dir: Path | None = None,
    spill_bytes: int = SPILL_BYTES,
    vectors: tuple[Any, np.ndarray] | None = None,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """SemDeDup inside one cluster whose rows ``t`` are sorted by ``idx``: the same steps as
    :func:`~.semdedup.semdedup_clusters` for one label. Returns, per row of ``t``: M[j], the row of
    the earlier member reaching it (-1 for none), and the (rows, eps) removed mask; plus the order.
    ``vectors``: ``(column, rows)`` when ``t`` has no ``vector`` column, its rows' vectors being
    ``column.take(rows)`` (a view of the spill files: a big cluster is never materialised whole).
    ``keep="random"``: shuffled by :func:`~.semdedup.random_order` of ``t``'s uids and ``seed``."""
    m = t.num_rows
    sim = t["similarity"].to_numpy().astype(np.float32, copy=False)
    prior = t["prior"].to_numpy(zero_copy_only=False).astype(bool) if "prior" in t.column_names else None
    if keep == "random" and "uid" not in t.column_names:
        raise ValueError("keep: random needs the rows' uid column (the shuffle is seeded by them)")
    uids = t["uid"].to_pylist() if keep == "random" else None
    ordered = _cluster_order(np.arange(m), sim, keep, np.random.default_rng(0), uids, seed)
    if prior is not None:
        ordered = ordered[np.argsort(~prior[ordered], kind="stable")]
    vec, rows = vectors if vectors is not None else (t["vector"], np.arange(m))
    big = spill_dir is not None and m * _take_matrix(vec, rows[:1]).shape[1] * 4 > spill_bytes
    if big:
        assert spill_dir is not None
        spill_dir.mkdir(parents=True, exist_ok=True)
        xc = _spilled_unit(vec, rows[ordered], spill_dir / f"{uuid.uuid4().hex}.npy", block_size)
    else:
        xc = _as_unit(_take_matrix(vec, rows) if vectors is not None else _matrix(vec))[ordered]
    best = np.full(m, -np.inf, np.float32)
    arg = np.full(m, -1, np.int64)
    removed = np.zeros((m, len(eps)), bool)
    protected = prior[ordered] if prior is not None else np.zeros(m, bool)
    try:
        if variant == "paper":
            b, a = _max_earlier(xc, block_size)
            best[ordered] = b
            arg[ordered] = np.where(a >= 0, ordered[np.maximum(a, 0)], -1)
            for i, e in enumerate(eps):
                removed[ordered, i] = b > 1 - e
        else:
            for i, e in enumerate(eps):  # the greedy kept set depends on eps: one pass per eps
                r, b, a = _greedy(xc, 1 - e, block_size, protected)
                removed[ordered, i] = r
                if i == 0:
                    best[ordered] = b
                    arg[ordered] = np.where(a >= 0, ordered[np.maximum(a, 0)], -1)
    finally:
        if big:
            fname = getattr(xc, "filename", None)
            del xc
            if fname:
                Path(fname).unlink(missing_ok=True)
    if prior is not None:
        removed &= ~prior[:, None]
    return best, arg, removed, ordered


def semdedup_group(
    t: pa.Table,
    eps: list[float],
    keep: Keep,
    variant: Variant,
    block_size: int,
    spill_dir: Path | None = None,
    spill_bytes: int = SPILL_BYTES,
    order: np.ndarray | None = None,
    seed: int = 0,
) -> pa.Table:
    """The rule over every cluster of a group. ``t`` sorted by (cluster, idx), or ``t`` and ``order``
    from :func:`read_group` (then each cluster's vectors are taken from ``t`` one cluster at a time,
    and a cluster past ``spill_bytes`` chunk by chunk). One row per input row, in (cluster, idx) order:
    ``idx``, ``cluster``, ``similarity``, ``max_similarity``, ``duplicate_of`` (an ``idx`` or -1),
    ``removed`` (one bool per sorted eps), ``representative`` (the member nearest the centroid,
    ties by lowest idx: :func:`~.semdedup.representatives`), and ``uid``/``prior`` when present."""
    src = None
    if order is not None:  # small columns in order now; vectors cluster by cluster from the view
        src = t["vector"]
        t = t.drop_columns(["vector"]).take(pa.array(order))
    cl = t["cluster"].to_numpy()
    idx = t["idx"].to_numpy()
    n = len(idx)
    best = np.full(n, -np.inf, np.float32)
    dup = np.full(n, -1, np.int64)
    removed = np.zeros((n, len(eps)), bool)
    rep = np.zeros(n, bool)
    bounds = np.r_[0, np.flatnonzero(np.diff(cl)) + 1, n] if n else np.zeros(1, np.int64)
    sim = t["similarity"].to_numpy()
    for a, b in zip(bounds[:-1].tolist(), bounds[1:].tolist()):
        sub = t.slice(a, b - a)
        view = (src, order[a:b]) if src is not None and order is not None else None
        bst, arg, rem, _ = rule_one_cluster(
            sub, eps, keep, variant, block_size, spill_dir, spill_bytes, view, seed
        )
        best[a:b], removed[a:b] = bst, rem
        dup[a:b] = np.where(arg >= 0, idx[a:b][np.maximum(arg, 0)], -1)
        rep[a + int(np.lexsort((idx[a:b], -sim[a:b]))[0])] = True
    cols = {
        "idx": idx,
        "cluster": cl,
        "similarity": sim,
        "max_similarity": best,
        "duplicate_of": dup,
        "removed": pa.FixedSizeListArray.from_arrays(pa.array(removed.ravel()), len(eps)),
        "representative": rep,
    }
    for extra in ("uid", "prior"):
        if extra in t.column_names:
            cols[extra] = t[extra]
    return pa.table(cols)


def _group_task(
    st: Storage, files: list[str], c0: int, c1: int, eps: list[float], keep: Keep, variant: Variant,
    block_size: int, spill_bytes: int, seed: int = 0,
) -> pa.Table:  # fmt: skip
    """One group's results; the schema metadata carries the task's rows and peak RSS (``loupe.task``)."""
    reset_peak_rss()
    t, order = read_group(st, files, c0, c1)
    r = semdedup_group(t, eps, keep, variant, block_size, node_scratch(), spill_bytes, order, seed)
    task = {"rows": t.num_rows, "peak_rss_mb": peak_rss_mb()}
    return r.replace_schema_metadata({b"loupe.task": json.dumps(task).encode()})


def map_groups(
    fn: Any,
    groups: list[tuple[int, int]],
    args: tuple,
    num_cpus: float = 1,
    window: int | None = None,
    retries: int = 3,
    fresh: bool = True,
) -> Iterator[tuple[tuple[int, int], Any]]:
    """Run ``fn(c0, c1, *args)`` as one Ray task per group, at most ``window`` in flight; yields
    ``(group, result)`` as they finish (so the driver holds only the finished ones it is handed).
    ``retries``: how often Ray reruns a task whose worker died; 0 for a task that commits (a retry
    after its commit landed would write the group twice; the stage fails and a rerun resumes it).
    ``fresh``: each task in a new worker process: ``max_calls=1`` (the worker exits after it, so a
    big cluster's memory goes back to the OS) and a runtime env of its own (so Ray never hands it an
    idle worker that held another stage's data)."""
    import ray

    env = {"runtime_env": {"env_vars": {"LOUPE_GROUP_TASK": fn.__name__}}} if fresh else {}
    remote = ray.remote(max_calls=1 if fresh else 0)(fn).options(
        num_cpus=num_cpus, max_retries=retries, **env
    )
    window = window or max(2, int(ray.cluster_resources().get("CPU", 1) * 2))
    pending: dict[Any, tuple[int, int]] = {}
    todo = list(groups)
    try:
        while todo or pending:
            while todo and len(pending) < window:
                g = todo.pop(0)
                pending[remote.remote(g[0], g[1], *args)] = g
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                yield pending.pop(ref), ray.get(ref)
    finally:  # the caller stopped (an error, a kill): no task of ours runs on behind its back
        for ref in pending:
            ray.cancel(ref, force=True)
        if pending:
            ray.wait(list(pending), num_returns=len(pending), timeout=30)


def semdedup_ray(
    ds: Any,
    n: int,
    n_clusters: int,
    epsilons: Sequence[float],
    scratch: str | Path | Storage,
    keep: Keep = "hard",
    variant: Variant = "paper",
    block_size: int = 4096,
    kmeans_iters: int = 100,
    seed: int = 1234,
    use_gpu: Literal["auto", "yes", "no"] = "auto",
    max_points_per_centroid: int | None = 256,
    num_cpus: float = 1,
    num_gpus: float = 0,
    spill_bytes: int = SPILL_BYTES,
    rows_per_file: int | None = None,
    min_group_rows: int | None = None,
    stats: dict | None = None,
) -> tuple[Iterator[pa.Table], np.ndarray, np.ndarray]:
    """SemDeDup of the ``n`` vectors of ``ds`` (``idx`` = 0..n-1), spilling under ``scratch`` (a
    folder, an object-store URI or a :class:`~loupe.pipeline.storage.Storage`).

    Returns (an iterator of per-group result tables, see :func:`semdedup_group`; the centroids; the
    cluster sizes). The kept sets equal :func:`~.semdedup.spherical_kmeans` +
    :func:`~.semdedup.semdedup_clusters` on the same vectors in ``idx`` order. ``stats``: filled
    with the assignment batches' peak memory (:func:`spill_by_cluster`).
    """
    if keep == "random" and (ds is None or "uid" not in ds.schema().names):
        raise ValueError(
            "keep: random needs a uid column in ds (each cluster's shuffle is seeded by its uids)"
        )
    eps = _epsilons(epsilons)
    cent = train_centroids(
        ds, n, n_clusters, kmeans_iters, seed, use_gpu, max_points_per_centroid, num_cpus, num_gpus
    )
    st = open_storage(scratch, "scratch")
    files, sizes = spill_by_cluster(
        ds, st, "assign", len(cent), centroids=cent, rows_per_file=rows_per_file, stats=stats
    )
    groups = cluster_groups(sizes, group_rows(sizes, block_size, min_group_rows))
    args = (eps, keep, variant, block_size, spill_bytes, seed)

    def results() -> Iterator[pa.Table]:
        for _, t in map_groups(_group_task_args, groups, (st, files, *args), num_cpus):
            yield t

    return results(), cent, sizes


def _group_task_args(c0: int, c1: int, st: Storage, files: list[str], *args: Any) -> pa.Table:
    return _group_task(st, files, c0, c1, *args)
