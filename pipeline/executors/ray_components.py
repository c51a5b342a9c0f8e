"""Connected components of a large edge list on Ray tasks, no task holding the whole graph.

The Alternating algorithm of Kiveris, Lattanzi, Mirrokni, Rastogi & Vassilvitskii, "Connected
Components in MapReduce and Beyond" (SoCC 2014, §3, Algorithms 1-3): the edges are kept as directed
rows ``(u, v)`` (both directions) hash-partitioned by ``u`` over ``P`` tasks, and two operations
alternate, each one round of ``P`` tasks whose outputs are re-partitioned for the next:

* **large-star**: every node ``u`` links each strictly larger neighbour to ``m(u)``, the smallest of
  ``u`` and its neighbours;
* **small-star**: every node ``u`` links itself and each smaller neighbour to the smallest of them.

Both keep the components and shrink each one towards a star around its smallest node; the paper
proves O(log² n) rounds and measures ~log n. A large-star round first checks its input: when every
node is either a centre (all neighbours larger) or a leaf with one smaller neighbour, the graph is a
union of stars and each node's label is its component's smallest node. Labels are therefore
deterministic (the smallest uid of the component), whatever the partitioning or the number of rounds.

Arrow's group-by and join run single-threaded (``use_threads=False``): in a Ray worker reused from
another stage, acero's threaded path failed with "thread index 10 is out of range [0, 10)" (seen
under the pHash dedup test); the partitions are small enough for one thread.

Memory: a task holds the edges of its partition (``~2·E / P`` rows); the driver holds ``P × P`` refs
and one bool per task per round. Used by the pHash dedup on Ray (:mod:`loupe.pipeline.executors.ray_dedup`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

#: more rounds than this means something is wrong (the paper's bound is O(log² n))
MAX_ROUNDS = 200
_EDGES = pa.schema([("u", pa.string()), ("v", pa.string())])
_FNV_PRIME = np.uint64(0x100000001B3)
_FNV_OFFSET = np.uint64(0xCBF29CE484222325)


def stable_hash(values: pa.Array) -> np.ndarray:
    """FNV-1a of each string's UTF-8 bytes, as uint64: the same in every process (unlike ``hash``)."""
    if not len(values):
        return np.zeros(0, np.uint64)
    raw = np.asarray(values.to_numpy(zero_copy_only=False), dtype=object).astype(str).astype("S")
    width = raw.dtype.itemsize
    cols = raw.view(np.uint8).reshape(len(raw), width)
    h = np.full(len(raw), _FNV_OFFSET, np.uint64)
    with np.errstate(over="ignore"):
        for c in range(width):
            col = cols[:, c]
            h = np.where(col != 0, (h ^ col.astype(np.uint64)) * _FNV_PRIME, h)  # padding never hashed
    return h


def _scatter(edges: pa.Table, parts: int) -> list[pa.Table]:
    """Undirected edges ``(u, v)`` -> both directions, split by ``hash(u) mod parts``."""
    both = pa.concat_tables([edges, edges.rename_columns(["v", "u"]).select(["u", "v"])]).cast(_EDGES)
    part = stable_hash(both["u"].combine_chunks()) % np.uint64(parts) if both.num_rows else np.zeros(0)
    order = np.argsort(part, kind="stable")
    both = both.take(pa.array(order))
    cuts = np.searchsorted(part[order], np.arange(parts + 1))
    return [both.slice(int(a), int(b - a)) for a, b in zip(cuts[:-1], cuts[1:])]


def _gather(blocks: list[pa.Table]) -> tuple[pa.Table, pa.Table]:
    """This partition's distinct directed edges, and per node ``u``: its degree and smallest neighbour."""
    tables = [b for b in blocks if b.num_rows]
    if not tables:
        empty = pa.table({"u": pa.array([], pa.string()), "v": pa.array([], pa.string())})
        return empty, pa.table({"u": empty["u"], "deg": pa.array([], pa.int64()), "m": empty["v"]})
    edges = pa.concat_tables(tables).group_by(["u", "v"], use_threads=False).aggregate([])
    node = edges.group_by("u", use_threads=False).aggregate([("v", "count"), ("v", "min")])
    return edges, node.rename_columns({"v_count": "deg", "v_min": "m"})


def _with_min(edges: pa.Table, node: pa.Table) -> pa.Table:
    """``edges`` with ``m`` = the smallest of ``u`` and its neighbours."""
    t = edges.join(node.select(["u", "m"]), "u", use_threads=False)
    return t.set_column(t.schema.get_field_index("m"), "m", pc.min_element_wise(t["u"], t["m"]))


def _settled(node: pa.Table) -> bool:
    """Every node a star centre (all neighbours larger) or a leaf (one neighbour, smaller)."""
    centre = pc.greater(node["m"], node["u"])
    leaf = pc.and_(pc.equal(node["deg"], 1), pc.less(node["m"], node["u"]))
    return bool(pc.all(pc.or_(centre, leaf)).as_py() if node.num_rows else True)


def _large_star(parts: int, *blocks: pa.Table) -> list[Any]:
    edges, node = _gather(list(blocks))
    settled = _settled(node)
    t = _with_min(edges, node)
    t = t.filter(pc.greater(t["v"], t["u"]))
    return [*_scatter(pa.table({"u": t["v"], "v": t["m"]}), parts), settled]


def _small_star(parts: int, *blocks: pa.Table) -> list[Any]:
    edges, _ = _gather(list(blocks))
    smaller = edges.filter(pc.less(edges["v"], edges["u"]))
    node = smaller.group_by("u", use_threads=False).aggregate([("v", "min")]).rename_columns({"v_min": "m"})
    t = smaller.join(node, "u", use_threads=False)  # m < u here: u has a smaller neighbour
    link_u = pa.table({"u": node["u"], "v": node["m"]})
    t = t.filter(pc.not_equal(t["v"], t["m"]))
    return [*_scatter(pa.concat_tables([link_u, pa.table({"u": t["v"], "v": t["m"]})]), parts), False]


def _labels(buckets: int, *blocks: pa.Table) -> tuple[pa.Table, int]:
    """On a union of stars: each node with its component's smallest node and that node's bucket."""
    _, node = _gather(list(blocks))
    label = pc.min_element_wise(node["u"], node["m"])
    bucket = stable_hash(label.combine_chunks() if isinstance(label, pa.ChunkedArray) else label)
    bucket = pa.array((bucket % np.uint64(buckets)).astype(np.int64))
    return pa.table({"uid": node["u"], "label": label, "bucket": bucket}), node.num_rows


def _split(parts: int, block: pa.Table) -> list[Any]:
    return [*_scatter(block.rename_columns(["u", "v"]), parts), None]


def components(
    pair_refs: list[Any], parts: int, buckets: int, num_cpus: float = 1
) -> tuple[list[Any], list[Any], int]:
    """Component labels of the undirected edges in ``pair_refs`` (Arrow tables of two string
    columns), over ``parts`` partitions: refs of ``(uid, label, bucket)`` tables (every node once,
    ``label`` its component's smallest uid, ``bucket`` = hash(label) mod ``buckets``), refs of their
    row counts, and the number of rounds run."""
    import ray

    def fan(fn: Any, inputs: list[list[Any]], *args: Any) -> list[list[Any]]:
        task = ray.remote(fn).options(num_returns=parts + 1, num_cpus=num_cpus)
        return [task.remote(*args, *refs) for refs in inputs]

    def transpose(outs: list[list[Any]]) -> list[list[Any]]:
        return [[o[p] for o in outs] for p in range(parts)]

    split = ray.remote(_split).options(num_returns=parts + 1, num_cpus=num_cpus)
    inputs = transpose([split.remote(parts, r) for r in pair_refs])
    rounds = 0
    while True:
        rounds += 1
        if rounds > MAX_ROUNDS:
            raise RuntimeError(f"connected components did not converge in {MAX_ROUNDS} rounds")
        large = fan(_large_star, inputs, parts)
        if all(ray.get([o[parts] for o in large])):
            break
        small = fan(_small_star, transpose(large), parts)
        inputs = transpose(small)
    label = ray.remote(_labels).options(num_returns=2, num_cpus=num_cpus)
    out = [label.remote(buckets, *refs) for refs in inputs]
    return [o[0] for o in out], [o[1] for o in out], rounds
