"""Report parts beyond the tables: the embedding map, a gallery per cluster, a side-by-side of two runs.

* **embedding map** — the image embeddings projected to 2-D with PCA (numpy SVD of the centred
  vectors: the two directions of largest variance), one point per sample, coloured by its k-means
  cluster (the ``dedup`` row SemDeDup writes), filled when live and hollow when dropped.
* **cluster gallery** — the largest clusters with up to ``per_cluster`` member thumbnails each,
  live members first (not only the representative the clusters table names).
* **compare** — ``loupe report RUN --compare OTHER``: captions of the uids both runs captioned, side by
  side (e.g. two caption models or prompt templates over the same samples).
"""

from __future__ import annotations

from typing import Any

import duckdb
import numpy as np

MAP_POINTS = 3000
REPETITIVE = 0.3  # the caption stage's default max_repetition


def embedding_map(con: duckdb.DuckDBPyConnection, limit: int = MAP_POINTS) -> list[dict[str, Any]]:
    """``[{uid, x, y, cluster, live}]`` with x, y scaled to [0, 1]; empty without image embeddings."""
    rows = con.execute(
        """
        WITH e AS (SELECT uid, any_value(vector) AS vector FROM embeddings WHERE kind = 'image' GROUP BY uid),
             k AS (SELECT uid, any_value(cluster) AS cluster FROM dedup
                   WHERE cluster IS NOT NULL AND method <> 'exact' AND method <> 'phash' GROUP BY uid)
        SELECT e.uid, e.vector, k.cluster, e.uid IN (SELECT uid FROM live) AS live
        FROM e LEFT JOIN k USING (uid) ORDER BY e.uid LIMIT ?
        """,
        [limit],
    ).fetchall()
    if len(rows) < 2:
        return []
    x = np.asarray([r[1] for r in rows], np.float64)
    x -= x.mean(axis=0)
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    xy = x @ vt[:2].T
    if xy.shape[1] < 2:
        xy = np.hstack([xy, np.zeros((len(xy), 1))])
    lo, hi = xy.min(axis=0), xy.max(axis=0)
    xy = (xy - lo) / np.where(hi > lo, hi - lo, 1.0)
    return [
        {
            "uid": r[0],
            "x": round(float(p[0]), 4),
            "y": round(float(p[1]), 4),
            "cluster": r[2],
            "live": bool(r[3]),
        }
        for r, p in zip(rows, xy)
    ]


def cluster_colour(cluster: int | None) -> str:
    """A stable colour per cluster id (golden-angle hues); grey without a cluster."""
    if cluster is None:
        return "#888888"
    hue = (int(cluster) * 137.508) % 360
    return f"hsl({hue:.0f},65%,45%)"


def cluster_gallery(
    con: duckdb.DuckDBPyConnection, clusters: int = 12, per_cluster: int = 8
) -> list[dict[str, Any]]:
    """``[{method, cluster, size, members: [{uid, live}]}]``, largest clusters first."""
    top = con.execute(
        """
        SELECT method, cluster, count(*) AS size FROM dedup
        WHERE cluster IS NOT NULL AND method <> 'exact' AND method <> 'phash'
        GROUP BY 1, 2 HAVING count(*) > 1 ORDER BY size DESC, method, cluster LIMIT ?
        """,
        [clusters],
    ).fetchall()
    out = []
    for method, cluster, size in top:
        members = con.execute(
            """
            SELECT uid, uid IN (SELECT uid FROM live) AS live FROM dedup
            WHERE method = ? AND cluster = ? ORDER BY live DESC, uid LIMIT ?
            """,
            [method, cluster, per_cluster],
        ).fetchall()
        out.append(
            {
                "method": method,
                "cluster": cluster,
                "size": size,
                "members": [{"uid": u, "live": bool(v)} for u, v in members],
            }
        )
    return out


def compare_captions(
    con: duckdb.DuckDBPyConnection, other: duckdb.DuckDBPyConnection, limit: int = 200
) -> list[dict]:
    """``[{uid, source_id, ours, theirs, ours_model, theirs_model}]`` for uids both runs captioned."""
    theirs = {
        u: (c, m)
        for u, c, m in other.execute(
            "SELECT uid, any_value(caption), any_value(model) FROM captions GROUP BY uid"
        ).fetchall()
    }
    if not theirs:
        return []
    rows = con.execute(
        """
        SELECT c.uid, any_value(s.source_id), any_value(c.caption), any_value(c.model)
        FROM captions c JOIN samples s USING (uid) GROUP BY c.uid ORDER BY 2, 1
        """
    ).fetchall()
    out = []
    for uid, sid, cap, model in rows:
        if uid in theirs:
            out.append(
                {
                    "uid": uid,
                    "source_id": sid,
                    "ours": cap,
                    "ours_model": model,
                    "theirs": theirs[uid][0],
                    "theirs_model": theirs[uid][1],
                }
            )
            if len(out) >= limit:
                break
    return out
