"""SemDeDup on Ray (k-means on a sample, assignment spilled by cluster, one task per group of
clusters) gives the local pass's kept sets exactly, and the release's all-pairs reference's; so does
the per-cluster rule alone, in memory or spilled to a memory map, with earlier-kept members and the
greedy variant."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from ray_helpers import private_ray

from loupe.pipeline.stages.dedup.semdedup import semdedup_clusters, semdedup_naive, spherical_kmeans
from loupe.pipeline.stages.dedup.semdedup_ray import (
    _spill_block,
    cluster_groups,
    read_group,
    sample_indices,
    semdedup_group,
    semdedup_ray,
)
from loupe.pipeline.storage import open_storage

EPS = [0.02, 0.1, 0.2]
K = 8
_POOLS: list = []  # Arrow memory pools used as the default by a test, kept alive


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def planted() -> np.ndarray:
    """2300 vectors in 64-d around 8 topics + 300 planted near-duplicates; rows scaled at random
    (the rule normalises). n > 8 * 256, so k-means trains on a sample."""
    rng = np.random.default_rng(3)
    topics = unit(rng.standard_normal((K, 64)))
    base = unit(topics[rng.integers(0, K, 2000)] + 1.2 * unit(rng.standard_normal((2000, 64))))
    src = rng.integers(0, 2000, 300)
    noise = rng.standard_normal((300, 64)) * rng.uniform(0.05, 0.3, (300, 1)) / 8
    x = np.vstack([base, base[src] + noise]) * rng.uniform(0.5, 3, (2300, 1))
    return x.astype(np.float32)


@pytest.fixture(scope="module")
def ray_results(planted, tmp_path_factory):
    x = planted
    n = len(x)
    vec = pa.FixedSizeListArray.from_arrays(pa.array(x.ravel(), pa.float32()), x.shape[1])
    table = pa.table({"idx": pa.array(np.arange(n), pa.int64()), "vector": vec})
    shards = [table.slice(a, 577) for a in range(0, n, 577)]  # uneven shards; the last is small
    out = {}
    with private_ray(__name__) as ray:
        for keep in ("hard", "easy"):
            ds = ray.data.from_arrow(shards)
            res, cent, sizes = semdedup_ray(
                ds,
                n,
                K,
                EPS,
                tmp_path_factory.mktemp(keep),
                keep=keep,
                block_size=64,
                kmeans_iters=10,
                seed=5,
                use_gpu="no",
                spill_bytes=200 * 64 * 4 if keep == "easy" else 1 << 30,  # "easy": big clusters memory-mapped
                rows_per_file=400,
                min_group_rows=700,  # ~3 groups of clusters: several tasks
            )
            out[keep] = (pa.concat_tables(list(res)), cent, sizes)
    return out


def _by_idx(t: pa.Table, n: int) -> dict[str, np.ndarray]:
    idx = t["idx"].to_numpy()
    assert np.array_equal(np.sort(idx), np.arange(n))  # every vector once: nothing lost, nothing twice
    o = np.argsort(idx)
    removed = np.array(t["removed"].to_pylist(), bool)[o]
    assert t["representative"].to_numpy(zero_copy_only=False).sum() == len(np.unique(t["cluster"]))
    return {
        "cluster": t["cluster"].to_numpy()[o],
        "similarity": t["similarity"].to_numpy()[o],
        "max_similarity": t["max_similarity"].to_numpy()[o],
        "duplicate_of": t["duplicate_of"].to_numpy()[o],
        **{e: removed[:, i] for i, e in enumerate(EPS)},
    }


def test_sample_is_faiss_own(planted):
    """Training faiss on our sample, in our order, gives the centroids faiss gets sampling itself."""
    import faiss

    x = unit(planted)
    km = faiss.Kmeans(64, K, niter=5, seed=5, spherical=True, max_points_per_centroid=256)
    km.train(x)
    s = sample_indices(len(x), K, 5, 256)
    assert len(s) == K * 256 and len(np.unique(s)) == len(s)
    km2 = faiss.Kmeans(64, K, niter=5, seed=5, spherical=True, max_points_per_centroid=256)
    km2.train(x[s])
    assert np.array_equal(km.centroids, km2.centroids)


@pytest.mark.ray
@pytest.mark.slow  # ~50 s on the loaded 2-core box: two Ray Data runs with a shuffle each
@pytest.mark.parametrize("keep", ["hard", "easy"])
def test_ray_equals_local_and_all_pairs(planted, ray_results, keep):
    x = planted
    table, cent, sizes = ray_results[keep]
    got = _by_idx(table, len(x))
    assert np.array_equal(sizes, np.bincount(got["cluster"], minlength=K))
    km = spherical_kmeans(x, K, 10, 5, "no", 256)
    assert np.array_equal(cent, km.centroids)
    assert np.array_equal(got["cluster"], km.labels)
    assert np.array_equal(got["similarity"], km.similarity)
    local = semdedup_clusters(x, km.labels, km.similarity, EPS, keep, block_size=64)
    naive = semdedup_naive(x, EPS, km.labels, km.similarity, keep=keep)
    for e in EPS:
        assert np.array_equal(got[e], local.removed[e]), e
        assert np.array_equal(got[e], naive[e]), e
    assert np.array_equal(got["duplicate_of"], local.duplicate_of)
    assert np.array_equal(got["max_similarity"], local.max_similarity)
    assert 0 < (~got[0.2]).sum() < len(x) - 100  # the planted copies go; the rule did something


def test_random_order_refused(tmp_path):
    with pytest.raises(ValueError, match="keep: random"):
        semdedup_ray(None, 10, 2, EPS, tmp_path, keep="random")


@pytest.mark.parametrize("view", [False, True])
@pytest.mark.parametrize("variant", ["paper", "greedy"])
@pytest.mark.parametrize("spill_bytes", [1 << 30, 0])  # 0: every cluster compared from a memory map
def test_group_rule_equals_local_pass(planted, tmp_path, variant, spill_bytes, view):
    """semdedup_group on clusters as the group tasks read them (sorted by cluster, then idx; or, with
    ``view``, unsorted rows plus their order, as read_group returns them), with a third of the rows
    kept by an earlier run, equals semdedup_clusters on the whole input."""
    x = planted
    km = spherical_kmeans(x, K, 5, 5, "no", 256)
    prior = np.random.default_rng(1).random(len(x)) < 0.3
    local = semdedup_clusters(x, km.labels, km.similarity, EPS, "hard", variant, 48, kept_before=prior)
    order = np.lexsort((np.arange(len(x)), km.labels))
    vec = pa.FixedSizeListArray.from_arrays(pa.array(x[order].ravel(), pa.float32()), x.shape[1])
    t = pa.table(
        {
            "idx": pa.array(order, pa.int64()),
            "vector": vec,
            "similarity": km.similarity[order],
            "cluster": km.labels[order],
            "prior": prior[order],
        }
    )
    order = None
    if view:
        perm = np.random.default_rng(2).permutation(len(x))
        t, order = t.take(pa.array(perm)), np.argsort(perm)
    r = semdedup_group(t, EPS, "hard", variant, 48, tmp_path / "big", spill_bytes, order)
    got = _by_idx(r, len(x))
    for e in EPS:
        assert np.array_equal(got[e], local.removed[e]), e
    assert np.array_equal(got["max_similarity"], local.max_similarity)
    assert np.array_equal(got["duplicate_of"], local.duplicate_of)
    assert not any((tmp_path / "big").glob("*.npy"))  # memory maps are removed after use


def test_cluster_groups_hold_at_most_the_largest_cluster():
    sizes = np.array([5, 0, 3, 9, 1, 1, 0, 2, 0])
    groups = cluster_groups(sizes, 9)
    assert groups == [(0, 3), (3, 4), (4, 9)]
    assert all(sizes[a:b].sum() <= 9 for a, b in groups)
    assert sorted(c for a, b in groups for c in range(a, b) if sizes[c]) == list(np.flatnonzero(sizes))


def test_spill_files_read_back_only_a_group_s_clusters_locally_and_on_an_object_store(tmp_path):
    """The same spill rows through a local folder (one record batch, binary search on a memory map)
    and an object store (one record batch per cluster, named in the footer; fsspec's memory://):
    every cluster range reads back exactly its rows, in the same order."""
    pytest.importorskip("fsspec")
    import uuid

    from loupe.pipeline.stages.dedup.semdedup_ray import CLUSTERS_KEY, _spill_block, read_group
    from loupe.pipeline.storage import open_storage

    rng = np.random.default_rng(4)
    x = rng.standard_normal((300, 8)).astype(np.float32)
    cl = rng.choice([0, 2, 3, 7, 8], 300)  # clusters 1, 4-6 empty
    vec = pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), 8)
    batch = pa.table(
        {"idx": np.arange(300), "uid": [f"u{i}" for i in range(300)], "vector": vec, "cluster": cl}
    )
    stores = {
        "local": open_storage(tmp_path / "run"),
        "object": open_storage(f"memory://loupe-{uuid.uuid4().hex[:8]}"),
    }
    files: dict[str, list[str]] = {}
    for name, st in stores.items():
        files[name] = [
            _spill_block(batch.slice(a, 100), st, "assign", None)["file"][0].as_py()
            for a in range(0, 300, 100)
        ]
    meta = pa.ipc.open_file(
        stores["object"].fs.open_input_file(stores["object"].key(files["object"][0]))
    ).metadata
    assert CLUSTERS_KEY in meta and len(stores["object"].read_bytes(files["object"][0])) > 0
    assert not pa.ipc.open_file(str(stores["local"].key(files["local"][0]))).metadata  # one batch, no index
    for c0, c1 in [(0, 1), (1, 3), (2, 8), (3, 9), (4, 7), (9, 12)]:
        want = np.sort(np.flatnonzero((cl >= c0) & (cl < c1)))
        got = {}
        for name, st in stores.items():
            t, order = read_group(st, files[name], c0, c1)
            got[name] = (
                t.take(pa.array(order)).select(["idx", "uid", "vector", "cluster"]) if len(want) else t
            )
            if len(want):
                assert np.array_equal(np.sort(t["idx"].to_numpy()), want), (name, c0, c1)
            else:
                assert t.num_rows == 0
        assert got["local"].equals(got["object"]), (c0, c1)


@pytest.mark.parametrize("list_type", [pa.list_, pa.large_list])
def test_group_task_copies_a_cluster_not_the_group(planted, tmp_path, list_type):
    """read_group returns exactly the rows of its clusters, and the rule over them (what a group task
    runs) gives the in-memory result while Arrow never holds more than a few clusters' vectors:
    Arrow's take on a chunked list column concatenates every chunk first, so each cluster used to
    copy the whole group's vectors (and a cluster too big for memory was copied whole)."""
    st = open_storage(tmp_path, "scratch")
    x = planted[:1200]
    labels = np.arange(len(x)) % 20
    files = []
    for a in range(0, len(x), 300):  # 4 spill files, each sorted by cluster, as the assignment writes
        vec = pa.array(list(x[a : a + 300]), list_type(pa.float32()))  # as the embeddings table holds it
        batch = pa.table(
            {
                "idx": pa.array(np.arange(a, a + 300), pa.int64()),
                "vector": vec,
                "similarity": pa.array(np.linspace(0, 1, 300), pa.float32()),
                "cluster": pa.array(labels[a : a + 300], pa.int64()),
            }
        )
        files.append(_spill_block(batch, st, "assign", None)["file"][0].as_py())
    t, order = read_group(st, files, 1, 20)
    sorted_t = t.take(pa.array(order))
    want = np.lexsort((np.arange(len(x)), labels))
    want = want[labels[want] >= 1]
    assert np.array_equal(sorted_t["idx"].to_numpy(), want)
    assert np.array_equal(np.asarray(sorted_t["vector"].combine_chunks().flatten()).reshape(-1, 64), x[want])
    before = pa.default_memory_pool()
    pool = pa.proxy_memory_pool(before)
    _POOLS.append(pool)  # buffers it allocated free through it: it must outlive them
    pa.set_memory_pool(pool)
    try:
        got = semdedup_group(t, EPS, "hard", "paper", 16, tmp_path / "big", 1 << 30, order)
    finally:
        pa.set_memory_pool(before)
    assert 0 < pool.max_memory() < t.num_rows * 64 * 4 / 4  # the group is 19 clusters
    assert got.equals(semdedup_group(sorted_t.combine_chunks(), EPS, "hard", "paper", 16))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/maps")
def test_read_group_keeps_no_spill_file_mapped_unless_the_group_is_too_big(planted, tmp_path):
    """A local group read copies its rows and unmaps each spill file (each map kept the pages the
    task faulted in resident: a task grew with the number of files, i.e. with N); past
    ``own_bytes`` (a cluster too big for memory) the rows stay views of the maps."""
    st = open_storage(tmp_path, "scratch")
    x = planted[:900]
    files = []
    for a in range(0, len(x), 300):
        batch = pa.table(
            {
                "idx": pa.array(np.arange(a, a + 300), pa.int64()),
                "vector": pa.array(list(x[a : a + 300]), pa.list_(pa.float32())),
                "similarity": pa.array(np.zeros(300), pa.float32()),
                "cluster": pa.array(np.arange(300) % 3, pa.int64()),
            }
        )
        files.append(str(tmp_path / _spill_block(batch, st, "assign", None)["file"][0].as_py()))

    def mapped() -> int:
        maps = Path("/proc/self/maps").read_text()
        return sum(f in maps for f in files)

    t, _ = read_group(st, [Path(f).relative_to(tmp_path).as_posix() for f in files], 1, 3)
    assert t.num_rows == 600 and mapped() == 0
    views, _ = read_group(st, [Path(f).relative_to(tmp_path).as_posix() for f in files], 1, 3, own_bytes=0)
    assert views.equals(t) and mapped() == 3
