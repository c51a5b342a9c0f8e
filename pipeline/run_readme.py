"""A run dir that explains itself: ``README.md`` and ``live.parquet``, rewritten after every run.

``README.md`` says what each folder holds (with row counts and columns), which duckdb views
``loupe query`` opens, and how to read the curated set — ``live`` — with plain pyarrow, duckdb or
pandas, no Loupe installed. ``live.parquet`` is that set as a flag for raw readers: one row per live
sample (uid, source, source_id, width, height, alt_text), no image bytes; join it with ``samples/``.
"""

from __future__ import annotations

import time

import pyarrow as pa
import pyarrow.parquet as pq

from loupe.pipeline.rundir import RunDir
from loupe.schemas.tables import TABLES

LIVE_COLUMNS = ["uid", "source", "source_id", "width", "height", "alt_text"]
WHAT = {
    "samples": "every ingested sample: image bytes, size, sha256, alt-text, source Q&A",
    "embeddings": "image (and text) embeddings, L2-normalised, with the model id",
    "dedup": "dedup decisions: method, group, duplicate_of, similarity, kept",
    "clusters": "k-means cluster of each sample, distance to its centroid, representatives",
    "ocr": "OCR lines in reading order with boxes and scores",
    "detect": "detected objects: label, box (0-1), score",
    "tags": "image tags with scores",
    "captions": "perceptual-fusion captions with prompt, model, evidence and check numbers",
    "drops": "every removed sample: uid, stage, reason, detail, duplicate_of",
}


def live_table(run: RunDir) -> pa.Table:
    """Samples no stage dropped (an ingest failure a later retry fixed does not count), as ``loupe
    query``'s ``live`` view defines it."""
    samples = run.read_table("samples", LIVE_COLUMNS)
    drops = run.read_table("drops", ["uid", "stage"])
    dropped = {u for u, s in zip(drops["uid"].to_pylist(), drops["stage"].to_pylist()) if s != "ingest"}
    keep = pa.array([u not in dropped for u in samples["uid"].to_pylist()], pa.bool_())
    return samples.filter(keep).sort_by([("source", "ascending"), ("source_id", "ascending")])


def _count(run: RunDir, table: str) -> int:
    return sum(pq.read_metadata(str(f), filesystem=run.fs).num_rows for f in run.shard_files(table))


def render_readme(run: RunDir, n_live: int) -> str:
    m = run.manifest()
    lines = [
        f"# Loupe run `{m.get('recipe', '?')}` / `{run.location.rstrip('/').rsplit('/', 1)[-1]}`",
        "",
        f"Written by `loupe run` (Loupe {m.get('loupe_version', '?')}) on "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; recipe `{m.get('recipe_path', '?')}`; "
        f"stages {' -> '.join(m.get('stage_order', []))}. Status: {m.get('status', '?')}. "
        f"**{n_live}** live samples.",
        "",
        "## Tables",
        "",
        "Each folder is a parquet dataset (many shards, one schema) keyed by `uid`. Read a folder whole "
        "(`pyarrow.dataset.dataset('samples')`), never single shards: a sample's rows may sit in any of them.",
        "",
        "| view | folder | rows | what | columns |",
        "|---|---|---|---|---|",
    ]
    for name, (folder, schema) in TABLES.items():
        if not run.shard_files(name):
            continue
        cols = ", ".join(f"`{f.name}`" for f in schema)
        lines.append(f"| `{name}` | `{folder}/` | {_count(run, name)} | {WHAT.get(name, '')} | {cols} |")
    lines += [
        "",
        "Other files: `manifest.json` (recipe, versions, per-stage rows in/out, seconds), `run.log` (what each "
        "run did, with progress lines), `export/` (training files), `report/` (`loupe report`), "
        "`live.parquet` (below), `_state/` (Loupe's own bookkeeping).",
        "",
        "## Views",
        "",
        f'`loupe query {run.location} "SELECT ..."` opens every table above as a duckdb view of the same name, '
        "plus `live`: the samples no stage dropped.",
        "",
        "```sql",
        "SELECT stage, reason, count(*) FROM drops GROUP BY 1, 2 ORDER BY 3 DESC;",
        "SELECT l.source_id, c.caption FROM live l JOIN captions c USING (uid);",
        "```",
        "",
        "## Reading `live` without Loupe",
        "",
        "`live.parquet` lists the live samples (uid, source, source_id, width, height, alt_text; no image "
        "bytes). It is rewritten at the end of every run. To compute it yourself — `samples` minus every uid "
        "in `drops` whose stage is not `ingest`:",
        "",
        "```python",
        "import duckdb  # or pyarrow.dataset / pandas.read_parquet on the folders",
        'live = duckdb.sql("""',
        "    SELECT * FROM read_parquet('samples/*.parquet')",
        "    WHERE uid NOT IN (SELECT uid FROM read_parquet('drops/*.parquet') WHERE stage <> 'ingest')",
        '""")',
        "ids = duckdb.sql(\"SELECT uid FROM 'live.parquet'\")  # the same set, precomputed",
        "```",
        "",
        "Skip files whose name starts with `.tmp-` (a shard being written). On an object store a shard "
        "counts only once its marker `<shard>.parquet.commit` exists; `loupe query` reads only those.",
        "",
    ]
    return "\n".join(lines)


def describe_run(run: RunDir) -> str:
    """Write ``live.parquet`` and ``README.md`` into the run dir; returns the README's location."""
    live = live_table(run)
    run.write_parquet_file("live.parquet", live)
    run.write_text("README.md", render_readme(run, live.num_rows))
    return f"{run.location}/README.md"
