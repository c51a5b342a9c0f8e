"""Stage and source registry: recipe names -> implementation classes, imported lazily.

Lazy import keeps ``loupe validate`` and ``loupe query`` fast and free of torch.
"""

from __future__ import annotations

import importlib

STAGES: dict[str, str] = {
    "exact_dedup": "loupe.pipeline.stages.dedup.exact:ExactDedup",
    "phash": "loupe.pipeline.stages.dedup.phash:PhashStage",
    "phash_dedup": "loupe.pipeline.stages.dedup.phash:PhashDedup",
    "resolution_filter": "loupe.pipeline.stages.filters:ResolutionFilter",
    "embed": "loupe.pipeline.stages.embed:Embed",
    "semdedup": "loupe.pipeline.stages.dedup.semdedup_stage:SemDedupStage",
    "select": "loupe.pipeline.stages.select:Select",
    "clip_score_filter": "loupe.pipeline.stages.filters:ClipScoreFilter",
    "ocr": "loupe.pipeline.stages.experts:OcrStage",
    "detect": "loupe.pipeline.stages.experts:DetectStage",
    "tag": "loupe.pipeline.stages.experts:TagStage",
    "caption": "loupe.pipeline.stages.fuse.stage:Caption",
    "export": "loupe.pipeline.stages.export.stage:Export",
}

SOURCES: dict[str, str] = {
    "local_folder": "loupe.pipeline.stages.ingest.local_folder:LocalFolder",
    "url_list": "loupe.pipeline.stages.ingest.url_list:UrlList",
    "smr": "loupe.pipeline.stages.ingest.smr:Smr",
    "finedetail": "loupe.pipeline.stages.ingest.finedetail:FineDetail",
}


def _load(path: str):
    module, _, attr = path.partition(":")
    return getattr(importlib.import_module(module), attr)


def stage_class(name: str):
    if name not in STAGES:
        raise KeyError(f"unknown stage {name!r}; valid: {', '.join(sorted(STAGES))}")
    return _load(STAGES[name])


def source_class(kind: str):
    if kind not in SOURCES:
        raise KeyError(f"unknown source type {kind!r}; valid: {', '.join(sorted(SOURCES))}")
    return _load(SOURCES[kind])
