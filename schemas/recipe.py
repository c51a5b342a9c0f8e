"""The recipe: a YAML file validated by these pydantic models.

Every field is documented here (``Field(description=...)``); ``loupe schema`` exports the
JSON Schema and ``recipes/README.md`` documents the same fields for people.
Paths in a recipe are relative to the recipe file.
"""

from __future__ import annotations

import re
from pathlib import PurePosixPath
from typing import Annotated, Any, Literal, Union

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def safe_name(v: str) -> str:
    """A name that becomes one folder: no separators, no ``..``, no control characters."""
    if not _NAME.fullmatch(v) or len(v) > 128:
        raise ValueError(
            "use letters, digits, '_', '-', '.' (at most 128, starting with a letter or digit; it names a folder)"
        )
    return v


def relative_subpath(v: str) -> str:
    """A path that must stay inside the folder it is relative to (no absolute path, no ``..``)."""
    if not v or _CONTROL.search(v) or "\\" in v:
        raise ValueError(
            f"{v!r}: must be a non-empty relative path without control characters or backslashes"
        )
    p = PurePosixPath(v)
    if p.is_absolute() or ".." in p.parts or v.startswith("~"):
        raise ValueError(f"{v!r}: must be a relative path inside the run dir (no leading '/', '~' or '..')")
    return v


SafeName = Annotated[str, AfterValidator(safe_name)]


def _first_repeat(keys) -> tuple[int, int] | None:
    """``(i, j)`` for the first key equal to an earlier one (j is that earlier index), else None."""
    first: dict = {}
    for i, k in enumerate(keys):
        if k in first:
            return i, first[k]
        first[k] = i
    return None


SubPath = Annotated[str, AfterValidator(relative_subpath)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Resources(Strict):
    """What one worker of a stage needs. The local executor runs one worker in-process;
    the Ray executor starts ``concurrency`` actors with these resources."""

    num_cpus: float = Field(1.0, ge=0, description="CPUs per worker.")
    num_gpus: float = Field(0.0, ge=0, description="GPUs per worker; fractions (0.25) share a GPU.")
    concurrency: int = Field(1, ge=1, le=4096, description="Workers (Ray actors) for this stage.")


# ----------------------------------------------------------------------------------- sources
class LocalFolderSource(Strict):
    """Images in a folder (recursive). ``photo.jpg`` may have a sidecar ``photo.txt`` alt-text."""

    type: Literal["local_folder"]
    name: SafeName = Field(
        "local", description="Source name written to samples.source (letters, digits, _ - .)."
    )
    path: str = Field(description="Folder with images, relative to the recipe file.")
    extensions: list[str] = Field(
        [".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".avif"],
        min_length=1,
        description="File extensions read as images (case-insensitive), each starting with '.'.",
    )
    alt_text_ext: str = Field(".txt", description="Sidecar extension read as alt-text.")

    @field_validator("extensions", "alt_text_ext")
    @classmethod
    def _dotted(cls, v: list[str] | str) -> list[str] | str:
        for e in [v] if isinstance(v, str) else v:
            if not re.fullmatch(r"\.[A-Za-z0-9_+-]+", e):
                raise ValueError(f"{e!r}: an extension is '.' followed by letters/digits, e.g. '.jpg'")
        return v


class UrlListSource(Strict):
    """LAION-style URL + caption table (parquet/csv/tsv/jsonl) downloaded with img2dataset."""

    type: Literal["url_list"]
    name: SafeName = Field(
        "urls", description="Source name written to samples.source (letters, digits, _ - .)."
    )
    path: str = Field(description="URL table file or folder, relative to the recipe file.")
    input_format: Literal["parquet", "csv", "tsv", "json", "txt"] = Field(
        "parquet", description="Format of the URL table (img2dataset input_format)."
    )
    url_col: str = Field("url", description="Column holding the image URL.")
    caption_col: str | None = Field("caption", description="Column holding alt-text; null for none.")
    save_additional_columns: list[str] = Field([], description="Extra columns kept in samples.meta.")
    image_size: int = Field(
        512, ge=8, le=65536, description="img2dataset image_size (target edge in pixels)."
    )
    resize_mode: Literal["no", "border", "keep_ratio", "keep_ratio_largest", "center_crop"] = Field(
        "keep_ratio", description="img2dataset resize_mode."
    )
    resize_only_if_bigger: bool = Field(True, description="Never upscale small images.")
    min_image_size: int = Field(0, ge=0, description="img2dataset min_image_size: smaller images fail.")
    processes_count: int = Field(2, ge=1, le=1024, description="img2dataset download processes.")
    thread_count: int = Field(16, ge=1, le=4096, description="img2dataset threads per process.")
    timeout: int = Field(10, ge=1, description="Seconds per download.")
    retries: int = Field(0, ge=0, description="img2dataset retries per URL within one run.")
    allow_private_urls: bool = Field(
        False,
        description="Allow URLs resolving to loopback/private/link-local/metadata addresses "
        "(refused by default to prevent SSRF). Tests against 127.0.0.1 set this.",
    )
    retry_failed: bool = Field(True, description="On rerun, download again only the URLs that failed before.")


SmrDataset = Literal[
    "arxivqa",
    "dvqa",
    "chartqa",
    "geometry3k",
    "geoqa3",
    "mathvision",
    "scienceqa",
    "tabmwp",
    "textbookqa",
    "ai2d",
    "geoqa_plus",
    "release",
]


class SmrSource(Strict):
    """One dataset of the SMR (SliME) mixture, read from its native release files, or SliME's own SMR
    release (dataset: release: one LLaVA-format JSON + the images)."""

    type: Literal["smr"]
    dataset: SmrDataset = Field(
        description="Which SMR dataset this folder holds; 'release' = SliME's SMR JSON + images, read as released."
    )
    name: SafeName | None = Field(None, description="Source name; defaults to the dataset name.")
    path: str = Field(description="Local copy of the dataset's release, relative to the recipe file.")
    split: str = Field("train", description="Split to read where the release has several.")
    limit: int | None = Field(None, ge=1, description="Read at most this many records.")
    answer_style: Literal["reasoning", "letter"] = Field(
        "reasoning",
        description="reasoning: where the dataset ships a rationale (ScienceQA, MathVision, TabMWP, ArxivQA), "
        "answer '<rationale>\\nAnswer: X' as SMR does; letter: the letter/value alone (LLaVA-1.5 style).",
    )
    annotation: str | None = Field(
        None,
        description="dataset: release only: the LLaVA-format JSON inside path (default: the one *.json).",
    )


class FineDetailSource(Strict):
    """Synthetic fine-detail task: square images with one small rendered string at a random place
    (``loupe.pipeline.stages.ingest.finedetail``). Deterministic by ``seed``; the string is the ground truth
    in ``samples.meta`` (``answer``), used to score held-out images."""

    type: Literal["finedetail"]
    name: str = Field("finedetail", description="Source name written to samples.source.")
    count: int = Field(400, ge=1, le=1_000_000, description="Images rendered (planted copies included).")
    image_size: int = Field(384, ge=32, le=4096, description="Side of each square image, pixels.")
    text_height: int = Field(
        14, ge=4, le=512, description="Font size of the string, pixels (digit cap height is ~0.7 of it)."
    )
    text: Literal["digits", "words"] = Field(
        "digits", description="digits: random digit strings of `length`; words: one of 24 four-letter words."
    )
    length: int = Field(3, ge=1, le=16, description="Digits per string (text: digits).")
    exact_duplicates: float = Field(
        0.05, ge=0, le=0.5, description="Share of images that are byte copies of an earlier one."
    )
    near_duplicates: float = Field(
        0.05,
        ge=0,
        le=0.5,
        description="Share of images that are an earlier one made one or two grey levels lighter.",
    )
    seed: int = Field(0, description="Seed of the images (image i depends only on seed and i).")


SourceConfig = Annotated[
    Union[LocalFolderSource, UrlListSource, SmrSource, FineDetailSource], Field(discriminator="type")
]


# ------------------------------------------------------------------------------------ stages
class StageConfig(Strict):
    batch_size: int = Field(32, ge=1, le=100_000, description="Rows per batch handed to the stage.")
    resources: Resources = Field(default_factory=Resources, description="Per-worker resources.")


class ExactDedupConfig(StageConfig):
    """Drop samples whose image bytes (sha256) equal an earlier sample's; keeps the first by uid order."""

    stage: Literal["exact_dedup"]


class PhashConfig(StageConfig):
    """Perceptual hash of every image (a per-row stage, in parallel under Ray): writes the ``phash``
    table that ``phash_dedup`` searches. Added before ``phash_dedup`` automatically when a recipe has none."""

    stage: Literal["phash"]
    hash_size: int = Field(8, ge=4, le=32, description="pHash side; the hash has hash_size² bits.")


class PhashDedupConfig(StageConfig):
    """Perceptual-hash dedup: drop images within ``max_distance`` Hamming bits of a kept one."""

    stage: Literal["phash_dedup"]
    hash_size: int = Field(8, ge=4, le=32, description="pHash side; the hash has hash_size² bits.")
    max_distance: int = Field(
        6, ge=0, description="Hamming distance at or below which images are duplicate candidates."
    )
    max_distances: list[int] = Field(
        [], description="Extra distances whose kept counts are reported (kept_max_distance_<d> metrics)."
    )
    confirm: bool = Field(
        True,
        description="Confirm each candidate pair on 64x64 thumbnails (blocks may shift 3 px) so images "
        "that differ in one region, e.g. signs with different words, are never merged.",
    )
    confirm_threshold: float = Field(
        0.55, gt=0, description="Largest block difference (in standard deviations) of a confirmed pair."
    )
    min_contrast: float = Field(
        3.0,
        ge=0,
        description="Images whose grey thumbnail has a lower standard deviation (0-255; flat colour, "
        "blank scans) are never merged: their hash carries no information.",
    )
    keep: Literal["largest", "first"] = Field(
        "largest",
        description="Which copy stays: largest (most pixels; a palette GIF/PNG never beats a true-colour "
        "copy) or first ((source, source_id, uid) order: sorted path in a folder, row order in a URL list).",
    )


class ResolutionFilterConfig(StageConfig):
    """Keep images whose short edge is at least ``min_short_edge`` (DenseFusion uses 448)."""

    stage: Literal["resolution_filter"]
    min_short_edge: int = Field(448, ge=1, description="Minimum of width and height, pixels.")
    max_aspect_ratio: float | None = Field(None, gt=1, description="Drop images longer/shorter than this.")


class EmbedConfig(StageConfig):
    """Image (and optional caption text) embeddings, L2-normalised."""

    stage: Literal["embed"]
    backend: Literal["efficientnet_lite0", "open_clip"] = Field(
        "efficientnet_lite0", description="Offline default, or open_clip with model/pretrained."
    )
    model: str | None = Field(None, description="open_clip architecture, e.g. ViT-B-32.")
    pretrained: str | None = Field(None, description="open_clip pretrained tag, hub id or checkpoint path.")
    text: bool = Field(False, description="Also embed alt-text (needs a text tower: open_clip).")
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N.")
    preprocess: Literal["fast", "exact"] = Field(
        "fast",
        description="fast: JPEGs decoded in draft mode near the model's input size (cosine >= 0.98 to "
        "exact, docs/benchmarks.md); exact: full decode, then resize.",
    )


class SemDedupConfig(StageConfig):
    """SemDeDup (Abbas et al. 2023) on the image embeddings with faiss spherical k-means."""

    stage: Literal["semdedup"]
    n_clusters: int = Field(100, ge=1, description="k-means clusters (capped at the sample count).")
    epsilon: float = Field(0.05, gt=0, lt=1, description="Duplicate when cosine similarity > 1 - epsilon.")
    epsilons: list[Annotated[float, Field(gt=0, lt=1)]] = Field(
        [], description="Extra epsilons (each in (0, 1)) whose kept counts are reported."
    )
    target_size: int | None = Field(None, ge=1, description="Pick the epsilon whose kept count is nearest.")
    keep: Literal["hard", "easy", "random"] = Field(
        "hard",
        description="hard: keep farthest from centroid (paper default); easy: nearest; random: each cluster "
        "shuffled by a generator seeded from `seed` and its sorted member uids (the same order in the local "
        "and Ray executors, whatever the other clusters).",
    )
    variant: Literal["paper", "greedy"] = Field(
        "paper", description="paper: compare with all earlier members; greedy: only earlier kept ones."
    )
    kmeans_iters: int = Field(100, ge=1, description="k-means iterations (SemDeDup release: 100).")
    max_points_per_centroid: int | None = Field(
        256,
        ge=1,
        description="k-means trains on at most this many points per centroid (faiss's sampling, as the "
        "SemDeDup release); null trains on every point. Every point is assigned either way.",
    )
    block_size: int = Field(4096, ge=2, description="Cluster members compared per block (memory bound).")
    seed: int = Field(1234, description="k-means and random-policy seed (SemDeDup release: 1234).")
    use_gpu: Literal["auto", "yes", "no"] = Field("auto", description="faiss GPU index when present.")


class SelectConfig(StageConfig):
    """DenseFusion selection: k-means into ``n_clusters`` and keep the top ``per_cluster`` by score."""

    stage: Literal["select"]
    n_clusters: int = Field(100, ge=1, description="k-means clusters (clusters: kmeans).")
    per_cluster: int = Field(10, ge=1, description="Samples kept per cluster.")
    score: Literal["centroid_distance", "centroid_similarity", "clip_score"] = Field(
        "centroid_similarity", description="Ranking inside a cluster (higher is kept first)."
    )
    clusters: Literal["auto", "semdedup", "kmeans"] = Field(
        "auto",
        description="semdedup: the clusters the semdedup stage made (DenseFusion §3.1: top N 'from each "
        "cluster' of SemDeDup); kmeans: a second k-means into n_clusters (a Loupe addition); auto: semdedup "
        "when a semdedup stage clustered the samples, else kmeans.",
    )
    kmeans_iters: int = Field(100, ge=1, description="k-means iterations (clusters: kmeans).")
    seed: int = Field(1234, description="k-means seed (clusters: kmeans).")


class ClipScoreFilterConfig(StageConfig):
    """Drop samples whose image-text cosine similarity is below ``min_score`` (needs text embeddings)."""

    stage: Literal["clip_score_filter"]
    min_score: float = Field(0.2, ge=-1, le=1, description="Minimum image-text cosine similarity.")


class OcrConfig(StageConfig):
    """OCR lines in reading order."""

    stage: Literal["ocr"]
    backend: Literal["rapidocr", "paddleocr"] = Field(
        "rapidocr", description="rapidocr ships PP-OCR offline."
    )
    min_score: float = Field(0.5, ge=0, le=1, description="Drop lines recognised below this confidence.")
    max_side: int = Field(1600, ge=32, description="Resize so the long side is at most this before OCR.")
    det_min_side: int = Field(
        320,
        ge=0,
        description="Upscale small images so the text detector sees this short side; 0 = never "
        "(320: full word recall on the labelled sweep set at 1.7-2.7x less CPU than 640, docs/benchmarks.md).",
    )
    workers: int | None = Field(
        None, ge=1, description="Images OCR'd in parallel (one 1-thread engine each); null = CPUs, max 4."
    )
    device: str = Field(
        "auto", description="auto (CUDA when onnxruntime-gpu sees a GPU, else CPU) | cpu | cuda."
    )


class DetectConfig(StageConfig):
    """Object detection: OpenCV Haar cascades (offline, shipped in the OpenCV wheel: faces, cat faces, people),
    closed-set YOLO, or open-vocabulary OWL-ViT queried with the image's tags."""

    stage: Literal["detect"]
    backend: Literal["haar", "yolo", "owlvit"] = Field(
        "yolo",
        description="Detector family: haar (offline; weights ship in opencv-python-headless; labels face, cat "
        "face, person by default), yolo (weights you supply), owlvit (open vocabulary, queried with the tags).",
    )
    model: str = Field("yolov8n.pt", description="Weights path or hub id (e.g. google/owlv2-base-patch16).")
    min_score: float = Field(0.25, ge=0, le=1, description="Score threshold.")
    iou: float = Field(0.5, ge=0, le=1, description="NMS IoU threshold.")
    max_boxes: int = Field(50, ge=1, description="Boxes kept per image, best first.")
    queries: list[str] = Field(
        [],
        description="OWL-ViT text queries (empty = the image's tags, as DenseFusion §3.2.1); haar: the labels.",
    )
    imgsz: int = Field(640, ge=32, description="YOLO input size (pixels, multiple of 32).")
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N.")


class TagConfig(StageConfig):
    """Image tags: EfficientNet-Lite0 ImageNet classes offline, or open_clip zero-shot on a vocabulary."""

    stage: Literal["tag"]
    backend: Literal["efficientnet_lite0", "open_clip"] = Field("efficientnet_lite0", description="Tagger.")
    model: str | None = Field(None, description="open_clip architecture.")
    pretrained: str | None = Field(None, description="open_clip pretrained tag, hub id or path.")
    vocabulary: str | list[str] | None = Field(
        None, description="Tag list or file; default ships with Loupe."
    )
    top_k: int = Field(5, ge=1, description="Tags kept per image.")
    min_score: float = Field(0.05, ge=0, le=1, description="Score threshold.")
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N.")
    preprocess: Literal["fast", "exact"] = Field(
        "fast",
        description="fast: JPEGs decoded in draft mode near the model's input size (cosine >= 0.98 to "
        "exact, docs/benchmarks.md); exact: full decode, then resize.",
    )


class CaptionConfig(StageConfig):
    """Perceptual-fusion captions from alt-text + expert evidence (DenseFusion)."""

    stage: Literal["caption"]
    backend: Literal["composer", "transformers", "openai"] = Field(
        "composer", description="composer: deterministic, no LLM; transformers: local LLM; openai: HTTP."
    )
    model: str | None = Field(None, description="Hub id / local path / served model name.")
    endpoint: str | None = Field(None, description="OpenAI-compatible base URL for backend=openai.")
    prompt_template: str = Field(
        "densefusion_gpt4v",
        description="Prompt template (pipeline/stages/fuse/templates/<name>.txt): densefusion_gpt4v = DenseFusion's "
        "App. C.2 GPT-4V prompt (192-word limit); densefusion_engine = its caption-engine prompt; loupe_v1 = "
        "Loupe's earlier paraphrase with an Image Tags slot.",
    )
    box_min_score: float = Field(
        0.3,
        ge=0,
        le=1,
        description="Boxes below this detector score are left out of the prompt (DenseFusion §3.2.1).",
    )
    max_boxes: int = Field(
        20,
        ge=0,
        description="Boxes per prompt; above it, balanced sampling over COCO size bins, small objects first "
        "(DenseFusion §3.2.1).",
    )
    max_new_tokens: int = Field(320, ge=1, description="Generation budget.")
    concurrency: int = Field(4, ge=1, description="Parallel HTTP requests for backend=openai.")
    timeout_s: float = Field(120.0, gt=0, description="Per-request timeout for backend=openai.")
    max_retries: int = Field(4, ge=0, description="Retries on 408/429/5xx/connection errors (backoff).")
    min_words: int = Field(0, ge=0, description="Drop captions shorter than this.")
    max_words: int | None = Field(
        500,
        ge=1,
        description="Drop captions longer than this (caption_too_long; DenseFusion-1M captions average "
        "~190 words); null = no cap.",
    )
    max_repetition: float | None = Field(
        0.3,
        ge=0,
        le=1,
        description="Drop captions whose word n-gram repetition ratio exceeds this (caption_repetitive): "
        "occurrences of repeated n-grams / all n-grams, as Data-Juicer's word_repetition_filter; null = off.",
    )
    repetition_ngram: int = Field(4, ge=1, description="n of the repetition check's word n-grams.")
    min_ocr_coverage: float = Field(0.0, ge=0, le=1, description="Drop captions covering fewer OCR words.")
    drop_hallucinations: bool = Field(False, description="Drop captions naming objects no expert saw.")
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N.")


class ExportConfig(StageConfig):
    """Write training files under export/."""

    stage: Literal["export"]
    formats: list[
        Literal["llama3_jsonl", "dragonfly_parquet", "llava_json", "llava_plain_json", "mg_llava_boxes"]
    ] = Field(
        ["llama3_jsonl", "llava_json"],
        description="Files to write: llama3_jsonl (conversations.jsonl, Loupe's structured record, read by "
        "loupe.train); dragonfly_parquet (dragonfly/<prefix>_<n>.parquet, what Dragonfly's loader reads: "
        "conversations as one Llama-3 string without BOS); llava_json (llava.json, multi-turn fine-tune); "
        "llava_plain_json (llava_plain.json, exactly 2 turns for LLaVA --version plain pre-alignment); "
        "mg_llava_boxes (mg_llava_boxes.json, pixel boxes from the detect table keyed by the LLaVA id).",
    )
    dragonfly_prefix: str = Field(
        "loupe",
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
        description="File-name prefix of the Dragonfly parquet parts; pass it to Dragonfly's "
        "--together_hq_datasets (its loader keeps files whose name starts with it).",
    )
    dragonfly_rows_per_file: int = Field(50_000, ge=1, description="Rows per Dragonfly parquet part.")
    shard_size: int | None = Field(
        None,
        ge=1,
        description="Records per llama3_jsonl shard: a run with more records than this writes "
        "conversations-00000.jsonl, ... plus conversations.index.json (which loupe train reads) instead "
        "of one conversations.jsonl; unset (default): always one file.",
    )
    image_dir: SubPath = Field(
        "images",
        description="Folder (relative, under export/) the images are written to; no '..' or '/' prefix.",
    )
    tasks: list[Literal["caption", "ocr", "grounding", "source_qa"]] = Field(
        ["caption", "ocr", "grounding", "source_qa"], description="Conversation turns to build."
    )
    seed: int = Field(0, description="Seed for sampling instruction phrasings.")
    tokenizer: str | None = Field(
        None,
        description="transformers tokenizer (hub id or path) for exact token stats; default: regex estimate.",
    )
    ocr_min_score: float = Field(
        0.8, ge=0, le=1, description="OCR lines below this recognition confidence stay out of the OCR turn."
    )
    ocr_min_chars: int = Field(
        2, ge=1, description="OCR lines with fewer letters/digits than this stay out of the OCR turn."
    )


StageEntry = Annotated[
    Union[
        ExactDedupConfig,
        PhashConfig,
        PhashDedupConfig,
        ResolutionFilterConfig,
        EmbedConfig,
        SemDedupConfig,
        SelectConfig,
        ClipScoreFilterConfig,
        OcrConfig,
        DetectConfig,
        TagConfig,
        CaptionConfig,
        ExportConfig,
    ],
    Field(discriminator="stage"),
]

STAGE_NAMES = (
    "exact_dedup",
    "phash",
    "phash_dedup",
    "resolution_filter",
    "embed",
    "semdedup",
    "select",
    "clip_score_filter",
    "ocr",
    "detect",
    "tag",
    "caption",
    "export",
)


class ExecutorConfig(Strict):
    """Which executor `loupe run` uses when `--executor` is not given."""

    kind: Literal["local", "ray"] = Field("local", description="local: in-process; ray: Ray Data.")
    address: str | None = Field(None, description="Ray address (auto, ray://host:10001); null starts one.")


class Limits(Strict):
    """Resource bounds that protect a run from hostile or broken inputs (docs/reliability.md)."""

    max_image_pixels: int = Field(
        90_000_000,
        ge=1,
        description="Pixel budget per image (width x height, read from the header before decoding); "
        "larger images are dropped with reason image_too_large. ~90 Mpx = a 9500 x 9500 photo.",
    )
    max_batch_pixels: int = Field(
        300_000_000,
        ge=1,
        description="Decoded pixels per stage batch (sum of width x height, ~3 bytes each in RGB); a "
        "batch above it is split, so batch_size bounds rows and this bounds memory.",
    )

    @model_validator(mode="after")
    def _batch_holds_one_image(self) -> Limits:
        if self.max_batch_pixels < self.max_image_pixels:
            raise ValueError(
                f"max_batch_pixels ({self.max_batch_pixels}) must be >= max_image_pixels "
                f"({self.max_image_pixels}) so that every admitted image fits in a batch"
            )
        return self


class TrainStep(Strict):
    """After curation, ``loupe pipeline`` trains one model per strategy and seed on the run's export
    with the bundled trainer (``loupe train``, transformers ``Trainer``), tiny and randomly initialised
    (``loupe.train.tiny``: a CLIP vision tower and a Llama LLM built from configs, the ``tiny``
    tokenizer trained offline on the data). Held-out samples are chosen by uid, so the split never
    changes."""

    strategies: list[Literal["llava", "s2", "dragonfly", "slime"]] = Field(
        ["llava", "dragonfly"],
        min_length=1,
        description="Vision strategies (train/strategies, docs/strategies.md), each trained on the same budget.",
    )
    seeds: list[int] = Field([0, 1, 2], min_length=1, description="One run per strategy and seed.")
    heldout: float = Field(
        0.25, gt=0, lt=1, description="Share of live samples held out for eval, by uid hash."
    )
    steps: int = Field(200, ge=1, description="Optimizer steps per run (`train.max_steps`).")
    batch_size: int = Field(8, ge=1, description="Samples per step.")
    lr: float = Field(1e-3, gt=0, description="Peak AdamW learning rate (3% warm-up, cosine decay).")
    eval_every: int = Field(
        50,
        ge=1,
        description="Score the checkpoint of every N-th step (and the final model) on the held-out images; "
        "a multiple of save_every.",
    )
    save_every: int = Field(
        25,
        ge=1,
        description="Trainer checkpoint every N steps (`train.save_steps`): a killed run resumes from it.",
    )
    base_resolution: int = Field(
        64,
        ge=8,
        description="Image side the vision tower sees (CLIP `image_size`; a Dragonfly crop, S2's 1x scale).",
    )
    patch: int = Field(8, ge=1, description="ViT patch side; base_resolution / patch is the token grid.")
    vit_width: int = Field(32, ge=8, description="Vision tower width (heads: width / 16).")
    lm_width: int = Field(64, ge=8, description="LLM width (heads: width / 16).")
    layers: int = Field(2, ge=1, description="Layers of the vision tower and of the LLM.")
    options: dict[str, dict[str, Any]] = Field(
        {},
        description="Per strategy, its `model.options` (e.g. `dragonfly: {pool_kernel: 4}`); see docs/strategies.md.",
    )
    max_length: int = Field(2048, ge=8, description="Maximum tokens per sample, image tokens included.")
    workers: int | None = Field(
        None,
        ge=1,
        description="Runs trained at once, one process each; null = the CPUs this process may use.",
    )
    threads: int = Field(
        1, ge=1, description="torch threads per run (1: on a shared or small CPU, parallel runs waste less)."
    )

    @model_validator(mode="after")
    def _eval_on_checkpoints(self) -> TrainStep:
        if self.eval_every % self.save_every:
            raise ValueError(
                f"eval_every ({self.eval_every}) must be a multiple of save_every ({self.save_every}): "
                "held-out scores are taken from the trainer's checkpoints"
            )
        if self.base_resolution % self.patch:
            raise ValueError(f"patch ({self.patch}) must divide base_resolution ({self.base_resolution})")
        return self


class EvalStep(Strict):
    """After training, score each checkpoint on the held-out images against the source's ground truth."""

    scorer: Literal["vqa_accuracy"] = Field(
        "vqa_accuracy",
        description="loupe.eval.scorers.vqa_accuracy (EvalAI normalisation, min(1, matches/3)).",
    )
    question: str = Field(
        "What text appears in the image?", description="Question asked about each held-out image."
    )
    answer_field: str = Field("answer", description="Key of samples.meta holding the ground-truth answer.")
    max_new_tokens: int = Field(8, ge=1, description="Greedy decoding budget.")


class Recipe(Strict):
    """A Loupe recipe."""

    name: str = Field(description="Recipe name; runs go to <output>/<name>/<lineage-hash>/.")
    description: str = Field("", description="Free text.")
    output: str = Field(
        "runs",
        description="Root folder for runs, relative to the recipe file, or an object-store URI (s3://, "
        "gs://, hdfs://, any fsspec protocol; file:// is a local folder): the run dir "
        "<output>/<name>/<lineage-hash>/ then lives on the store and every worker writes it directly, "
        "each shard committed by a marker object (docs/reliability.md). For an S3-compatible server set "
        "AWS_ENDPOINT_URL or append ?endpoint_override=host:port&scheme=http.",
    )
    sources: list[SourceConfig] = Field(min_length=1, description="Where samples come from.")
    stages: list[StageEntry] = Field([], description="Stages run in order after ingest.")
    executor: ExecutorConfig = Field(default_factory=ExecutorConfig, description="Default executor.")
    seed: int = Field(0, description="Global seed.")
    limits: Limits = Field(default_factory=Limits, description="Pixel budgets per image and per batch.")
    train: TrainStep | None = Field(
        None, description="Training after curation (`loupe pipeline`); not part of the run's lineage hash."
    )
    eval: EvalStep | None = Field(
        None, description="Evaluation after training (`loupe pipeline`); not part of the lineage hash."
    )

    @field_validator("stages")
    @classmethod
    def _no_repeats(cls, v: list) -> list:
        # A stage may appear twice with different settings (DenseFusion runs a closed-set and an
        # open-set detector); the same settings twice would write every row twice.
        rep = _first_repeat(repr(st.model_dump(exclude={"batch_size", "resources"})) for st in v)
        if rep:
            i, j = rep
            raise ValueError(
                f"stages[{i}] repeats stages[{j}] ({v[i].stage!r} with the same settings); "
                "a repeated stage must differ, e.g. in backend or model"
            )
        return v

    @field_validator("stages")
    @classmethod
    def _phash_before_phash_dedup(cls, v: list) -> list:
        # phash_dedup searches the hashes the per-row `phash` stage wrote; a recipe written before that
        # stage existed gets one inserted with the same hash_size (so old recipes keep working)
        out: list = []
        for i, st in enumerate(v):
            if st.stage == "phash_dedup":
                hashed = [p for p in out if p.stage == "phash"]
                if not hashed:
                    out.append(PhashConfig(stage="phash", hash_size=st.hash_size, batch_size=st.batch_size))
                elif hashed[-1].hash_size != st.hash_size:
                    raise ValueError(
                        f"stages[{i}].hash_size: {st.hash_size}, but the phash stage before it hashes with "
                        f"hash_size {hashed[-1].hash_size}; make them equal"
                    )
            out.append(st)
        return out

    @field_validator("sources")
    @classmethod
    def _unique_source_names(cls, v: list) -> list:
        rep = _first_repeat(src.name or getattr(src, "dataset", None) for src in v)
        if rep:
            i, j = rep
            raise ValueError(
                f"sources[{i}].name {v[j].name or v[j].dataset!r} repeats sources[{j}]; source names must "
                "differ (they are part of every uid and name the source's scratch folder)"
            )
        return v

    @field_validator("name")
    @classmethod
    def _safe_name(cls, v: str) -> str:
        return safe_name(v)
