"""Everything the report shows, read from a run dir with duckdb (``loupe.pipeline.query.connect``).

Each reader returns plain Python data (dicts, lists) so the HTML layer never touches duckdb.
A table that a run does not have (no OCR stage, no SemDeDup yet, no export) reads as empty:
``connect`` registers an empty view for every known table, and files outside the table
registry (``export/records.parquet``) are checked for existence first.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb

from loupe.pipeline.report.extras import cluster_gallery, embedding_map
from loupe.pipeline.rundir import RunDir


def _rows(con: duckdb.DuckDBPyConnection, sql: str, params: list | None = None) -> list[dict[str, Any]]:
    cur = con.execute(sql, params or [])
    names = [d[0] for d in cur.description]
    return [dict(zip(names, r)) for r in cur.fetchall()]


def _has_column(con: duckdb.DuckDBPyConnection, view: str, column: str) -> bool:
    cols = {r[0] for r in con.execute(f"DESCRIBE {view}").fetchall()}
    return column in cols


@dataclass
class FunnelStep:
    """Samples still in the dataset after ``stage`` (``stage == "input"``: files/urls seen)."""

    stage: str
    survivors: int
    dropped: int


@dataclass
class ReportData:
    manifest: dict[str, Any]
    funnel: list[FunnelStep]
    drop_reasons: list[dict[str, Any]]  # stage, reason, n, examples: [{uid, detail, has_image}]
    dup_groups: list[dict[str, Any]]  # method, cluster, representative, members: [{uid, similarity}]
    clusters: list[dict[str, Any]]  # method, cluster, size, representative (k-means tables)
    n_clusters: dict[str, int]  # method -> number of clusters
    overlays: dict[str, dict[str, list]]  # uid -> {"ocr": [...], "detect": [...]}
    captions: list[dict[str, Any]]
    token_lengths: list[int]
    caption_words: list[int]
    token_stats: dict[str, Any]
    samples: list[dict[str, Any]]  # the searchable table
    n_samples: int
    extra: dict[str, Any] = field(default_factory=dict)


def read_funnel(con: duckdb.DuckDBPyConnection, manifest: dict[str, Any]) -> list[FunnelStep]:
    """Survivors after each stage in run order: ``samples`` minus every drop up to that stage.

    Ingest failures never reach ``samples``; they are counted as the "input" step above ingest.
    Drops of a stage missing from ``stage_order`` (an older run) count at the end, so the last
    step always equals the ``live`` view.
    """
    order = [s for s in manifest.get("stage_order") or ["ingest"] if s != "ingest"]
    n_samples = con.execute("SELECT count(*) FROM samples").fetchone()[0]
    failed = con.execute(
        "SELECT count(DISTINCT uid) FROM drops WHERE stage = 'ingest' AND uid NOT IN (SELECT uid FROM samples)"
    ).fetchone()[0]
    steps = [FunnelStep("input", n_samples + failed, 0), FunnelStep("ingest", n_samples, failed)]
    others = [
        r[0]
        for r in con.execute("SELECT DISTINCT stage FROM drops WHERE stage <> 'ingest' ORDER BY 1").fetchall()
        if r[0] not in order
    ]
    seen: list[str] = []
    prev = n_samples
    for stage in order + others:
        seen.append(stage)
        left = con.execute(
            "SELECT count(*) FROM samples WHERE uid NOT IN (SELECT uid FROM drops WHERE list_contains(?, stage))",
            [seen],
        ).fetchone()[0]
        steps.append(FunnelStep(stage, left, prev - left))
        prev = left
    return steps


def read_drop_reasons(con: duckdb.DuckDBPyConnection, examples: int = 4) -> list[dict[str, Any]]:
    rows = _rows(
        con,
        """
        SELECT d.stage, d.reason, count(*) AS n,
               list({'uid': d.uid, 'detail': d.detail, 'has_image': s.uid IS NOT NULL}
                    ORDER BY d.uid)[1:?] AS examples
        FROM drops d LEFT JOIN (SELECT DISTINCT uid FROM samples) s USING (uid)
        GROUP BY 1, 2 ORDER BY n DESC, 1, 2
        """,
        [examples],
    )
    return rows


def read_dup_groups(
    con: duckdb.DuckDBPyConnection, limit: int = 24, members: int = 6
) -> list[dict[str, Any]]:
    """Duplicate groups from ``dedup`` rows that name a ``duplicate_of``, largest first."""
    for col in ("duplicate_of", "method", "cluster", "similarity"):
        if not _has_column(con, "dedup", col):
            return []
    return _rows(
        con,
        """
        SELECT method, duplicate_of AS representative, any_value(cluster) AS cluster, count(*) AS n,
               list({'uid': uid, 'similarity': similarity} ORDER BY similarity DESC NULLS LAST, uid)[1:?]
                   AS members
        FROM dedup WHERE duplicate_of IS NOT NULL
        GROUP BY 1, 2 ORDER BY n DESC, 1, 2 LIMIT ?
        """,
        [members, limit],
    )


def read_clusters(con: duckdb.DuckDBPyConnection, limit: int = 24) -> tuple[list[dict], dict[str, int]]:
    counts = {
        r["method"]: r["n"] for r in _rows(con, "SELECT method, count(*) AS n FROM clusters GROUP BY 1")
    }
    top = _rows(
        con,
        "SELECT method, cluster, size, representative FROM clusters ORDER BY size DESC, method, cluster LIMIT ?",
        [limit],
    )
    return top, counts


def read_overlays(con: duckdb.DuckDBPyConnection, limit: int = 48) -> dict[str, dict[str, list]]:
    """OCR lines and detection boxes of the first ``limit`` live samples that have any."""
    uids = [
        r[0]
        for r in con.execute(
            """
            SELECT uid FROM (SELECT uid FROM ocr UNION SELECT uid FROM detect)
            WHERE uid IN (SELECT uid FROM live) ORDER BY uid LIMIT ?
            """,
            [limit],
        ).fetchall()
    ]
    out: dict[str, dict[str, list]] = {u: {"ocr": [], "detect": []} for u in uids}
    if not uids:
        return out
    for r in _rows(
        con, "SELECT uid, text, box, score FROM ocr WHERE list_contains(?, uid) ORDER BY uid, line", [uids]
    ):
        out[r["uid"]]["ocr"].append(r)
    for r in _rows(
        con,
        "SELECT uid, label, box, score FROM detect WHERE list_contains(?, uid) ORDER BY uid, score DESC",
        [uids],
    ):
        out[r["uid"]]["detect"].append(r)
    return out


def read_captions(con: duckdb.DuckDBPyConnection, limit: int = 40) -> list[dict[str, Any]]:
    rows = _rows(
        con,
        """
        SELECT uid, backend, model, caption, n_words, ocr_coverage, label_coverage, hallucinated, evidence,
               repetition
        FROM captions WHERE uid IN (SELECT uid FROM live) ORDER BY uid LIMIT ?
        """,
        [limit],
    )
    for r in rows:
        try:
            ev = json.loads(r["evidence"]) if r["evidence"] else {}
        except json.JSONDecodeError:
            ev = {"raw": r["evidence"]}
        r["evidence"] = ev if isinstance(ev, dict) else {"raw": ev}
    return rows


def read_samples(con: duckdb.DuckDBPyConnection, limit: int) -> list[dict[str, Any]]:
    """One row per sample (live or dropped, with the first drop's stage and reason)."""
    return _rows(
        con,
        """
        WITH d AS (SELECT uid, arg_min(stage || ': ' || reason, stage) AS dropped FROM drops
                   WHERE stage <> 'ingest' GROUP BY uid),
             c AS (SELECT uid, any_value(caption) AS caption, any_value(n_words) AS n_words,
                          any_value(ocr_coverage) AS ocr_coverage, max(repetition) AS repetition
                   FROM captions GROUP BY uid),
             o AS (SELECT uid, string_agg(text, ' ' ORDER BY line) AS ocr FROM ocr GROUP BY uid)
        SELECT s.uid, s.source, s.source_id, s.width, s.height, s.alt_text, d.dropped, c.caption, o.ocr,
               c.n_words, c.ocr_coverage, c.repetition
        FROM samples s LEFT JOIN d USING (uid) LEFT JOIN c USING (uid) LEFT JOIN o USING (uid)
        ORDER BY s.source, s.source_id, s.uid LIMIT ?
        """,
        [limit],
    )


def read_lengths(con: duckdb.DuckDBPyConnection, run: RunDir) -> tuple[list[int], list[int], dict[str, Any]]:
    """Token lengths per exported record, words per caption, and export/stats.json's summary."""
    tokens: list[int] = []
    if run.exists("export/records.parquet"):
        import pyarrow.parquet as pq  # the query connection reads no files itself (read-only)

        t = pq.read_table(run.storage.key("export/records.parquet"), columns=["tokens"], filesystem=run.fs)
        tokens = [x for x in t["tokens"].to_pylist() if x is not None]
    words = [r[0] for r in con.execute("SELECT n_words FROM captions WHERE n_words IS NOT NULL").fetchall()]
    return tokens, words, export_stats(run)


def export_stats(run: RunDir) -> dict[str, Any]:
    """``export/stats.json`` of the run ({} when there is none or it is not JSON)."""
    try:
        return json.loads(run.read_text("export/stats.json"))
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def read_image_bytes(con: duckdb.DuckDBPyConnection, uids: list[str], chunk: int = 128):
    """Yield (uid, encoded image bytes) for ``uids``: one scan of ``samples``, streamed in chunks
    (images can be large, so they are never all in memory at once)."""
    if not uids:
        return
    con.execute("CREATE OR REPLACE TEMP TABLE _report_uids AS SELECT unnest(?::VARCHAR[]) AS uid", [uids])
    cur = con.execute("SELECT uid, image FROM samples WHERE uid IN (SELECT uid FROM _report_uids)")
    while rows := cur.fetchmany(chunk):
        yield from rows


def read_report_data(con: duckdb.DuckDBPyConnection, run: RunDir, max_samples: int = 5000) -> ReportData:
    manifest = run.manifest()
    clusters, n_clusters = read_clusters(con)
    tokens, words, stats = read_lengths(con, run)
    return ReportData(
        manifest=manifest,
        funnel=read_funnel(con, manifest),
        drop_reasons=read_drop_reasons(con),
        dup_groups=read_dup_groups(con),
        clusters=clusters,
        n_clusters=n_clusters,
        overlays=read_overlays(con),
        captions=read_captions(con),
        token_lengths=tokens,
        caption_words=words,
        token_stats=stats,
        samples=read_samples(con, max_samples),
        n_samples=con.execute("SELECT count(*) FROM samples").fetchone()[0],
        extra={
            "quality": _quality(con, run),
            "map": embedding_map(con),
            "cluster_gallery": cluster_gallery(con),
        },
    )


def _quality(con: duckdb.DuckDBPyConnection, run: RunDir) -> dict[str, Any]:
    """``loupe eval --run``'s dataset-quality metrics (``loupe.eval.quality``), shown in the report."""
    from loupe.eval.quality import quality_metrics

    return quality_metrics(con, stats=export_stats(run))


def report_path(run: RunDir, output: str | Path | None) -> Path:
    return Path(output) if output is not None else run.path / "report"
