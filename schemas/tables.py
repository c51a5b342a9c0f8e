"""Arrow schemas of every table a run writes.

Each stage owns one directory under the run dir and writes parquet shards with exactly
the schema below. Every table is keyed by ``uid`` (hex sha256, see ``loupe.schemas.uid``).
Boxes are ``[x1, y1, x2, y2]`` normalised to [0, 1] and rounded to 3 decimals.
"""

from __future__ import annotations

import pyarrow as pa

BOX = pa.list_(pa.float32(), 4)
TURN = pa.struct([("from", pa.string()), ("value", pa.string())])
CONVERSATION = pa.list_(TURN)

SAMPLES = pa.schema(
    [
        ("uid", pa.string()),
        ("source", pa.string()),  # source name from the recipe, e.g. "demo", "chartqa", "laion"
        ("source_id", pa.string()),  # id inside the source: relative path, url, dataset id
        ("url", pa.string()),  # original url, null for local files
        ("image_path", pa.string()),  # where the image came from on disk, if anywhere
        ("image", pa.binary()),  # encoded image bytes as stored (jpeg/png/...)
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("sha256", pa.string()),  # hex sha256 of ``image``
        ("alt_text", pa.string()),  # caption / alt-text / sidecar .txt; null if none
        ("conversations", CONVERSATION),  # Q&A that came with the source (SMR), null if none
        ("meta", pa.string()),  # JSON object of extra source columns
    ]
)

EMBEDDINGS = pa.schema(
    [
        ("uid", pa.string()),
        ("model", pa.string()),
        ("kind", pa.string()),  # "image" | "text"
        ("vector", pa.list_(pa.float32())),  # L2-normalised
        # L2 norm of the feature before normalising, where a classifier head on the same backbone
        # needs it (EfficientNet-Lite0 tags are computed from the stored vector, issue 19); else null
        ("norm", pa.float32()),
    ]
)

DEDUP = pa.schema(
    [
        ("uid", pa.string()),
        ("method", pa.string()),  # "exact" | "phash" | "semdedup" | "select"
        ("cluster", pa.int64()),  # k-means cluster or duplicate group id; null when not clustered
        ("duplicate_of", pa.string()),  # uid this one duplicates; null when kept
        ("similarity", pa.float32()),  # cosine similarity / 1 - hamming/64 to duplicate_of
        ("kept", pa.bool_()),
    ]
)

#: per-image perceptual hash (the ``phash`` stage), with what the near-duplicate search needs beside it
#: (the keep policy's inputs), so ``phash_dedup`` reads this table alone and never the image bytes
PHASH = pa.schema(
    [
        ("uid", pa.string()),
        ("hash", pa.binary()),  # pHash bits packed big-endian (numpy.packbits), hash_size² bits
        ("bits", pa.int32()),  # hash_size²
        ("contrast", pa.float32()),  # std of the 32x32 grey thumbnail (low information below min_contrast)
        ("palette", pa.bool_()),  # stored with a colour palette (GIF, palette PNG)
        ("source", pa.string()),
        ("source_id", pa.string()),
        ("width", pa.int32()),
        ("height", pa.int32()),
    ]
)

CLUSTERS = pa.schema(
    [
        ("method", pa.string()),
        ("cluster", pa.int64()),
        ("size", pa.int64()),
        ("representative", pa.string()),  # uid nearest the centroid
    ]
)

OCR = pa.schema(
    [
        ("uid", pa.string()),
        ("model", pa.string()),
        ("line", pa.int32()),  # reading order, 0-based (top-to-bottom, left-to-right)
        ("text", pa.string()),
        ("box", BOX),
        ("score", pa.float32()),
    ]
)

DETECT = pa.schema(
    [
        ("uid", pa.string()),
        ("model", pa.string()),
        ("label", pa.string()),
        ("box", BOX),
        ("score", pa.float32()),
    ]
)

TAGS = pa.schema(
    [
        ("uid", pa.string()),
        ("model", pa.string()),
        ("tag", pa.string()),
        ("score", pa.float32()),
    ]
)

CAPTIONS = pa.schema(
    [
        ("uid", pa.string()),
        ("backend", pa.string()),  # "composer" | "transformers" | "openai"
        ("model", pa.string()),
        ("prompt_version", pa.string()),
        ("prompt", pa.string()),
        ("caption", pa.string()),
        ("n_words", pa.int32()),
        ("ocr_coverage", pa.float32()),  # share of OCR words found in the caption; null without OCR
        ("label_coverage", pa.float32()),  # share of detected labels named; null without detections
        ("hallucinated", pa.list_(pa.string())),  # object words named that no expert saw
        ("evidence", pa.string()),  # JSON: the alt-text, boxes, OCR lines and tags the caption used
        ("repetition", pa.float32()),  # word n-gram repetition ratio (Data-Juicer word_repetition_filter)
    ]
)

DROPS = pa.schema(
    [
        ("uid", pa.string()),
        ("stage", pa.string()),
        ("reason", pa.string()),  # short machine-friendly reason, e.g. "exact_duplicate"
        ("detail", pa.string()),  # human text: error message, threshold, ...
        ("duplicate_of", pa.string()),  # for dedup drops: the uid that was kept
    ]
)

#: table name (= duckdb view name) -> (directory inside the run dir, schema)
TABLES: dict[str, tuple[str, pa.Schema]] = {
    "samples": ("samples", SAMPLES),
    "embeddings": ("embeddings", EMBEDDINGS),
    "dedup": ("dedup", DEDUP),
    "phash": ("phash", PHASH),
    "clusters": ("clusters", CLUSTERS),
    "ocr": ("experts/ocr", OCR),
    "detect": ("experts/detect", DETECT),
    "tags": ("experts/tags", TAGS),
    "captions": ("captions", CAPTIONS),
    "drops": ("drops", DROPS),
}


def empty(schema: pa.Schema) -> pa.Table:
    return schema.empty_table()


def drops_table(rows: list[dict]) -> pa.Table:
    """Build a DROPS table from dicts with keys uid, stage, reason[, detail, duplicate_of]."""
    return pa.Table.from_pylist(
        [
            {
                "uid": r["uid"],
                "stage": r["stage"],
                "reason": r["reason"],
                "detail": r.get("detail"),
                "duplicate_of": r.get("duplicate_of"),
            }
            for r in rows
        ],
        schema=DROPS,
    )
