"""Row filters: image resolution (DenseFusion's first rule) and image-text CLIP score."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from loupe.pipeline.errors import RecipeError
from loupe.pipeline.stage import FilterStage, Stage, StageOutput
from loupe.pipeline.vectors import load_vectors
from loupe.schemas.tables import drops_table


class ResolutionFilter(FilterStage):
    """DenseFusion-1M removes images whose short edge is below 448 px before anything else
    (Li et al. 2024, sec. 3.1); an optional aspect-ratio cap drops banners and slivers."""

    name = "resolution_filter"
    reads = ("uid", "width", "height")

    def check(self, row: dict[str, Any]) -> tuple[str, str] | None:
        w, h = row.get("width"), row.get("height")
        if not w or not h or w <= 0 or h <= 0:
            return "unknown_size", f"width={w} height={h}"
        short, long_ = min(w, h), max(w, h)
        if short < self.config.min_short_edge:
            return "low_resolution", f"{w}x{h}: short edge {short} < {self.config.min_short_edge}"
        cap = self.config.max_aspect_ratio
        if cap is not None and long_ / short > cap:
            return "aspect_ratio", f"{w}x{h}: aspect {long_ / short:.2f} > {cap}"
        return None


class ClipScoreFilter(Stage):
    """Drops samples whose image-text cosine similarity (the CLIP score of LAION filtering) is below
    ``min_score``. Needs image and text vectors of the same model from an ``embed`` stage with
    ``text: true``; samples without alt-text have no text vector and are dropped as ``no_text``."""

    name = "clip_score_filter"
    reads = ("uid",)

    def __call__(self, batch: pa.Table) -> StageOutput:
        uids = batch["uid"].to_pylist()
        text = load_vectors(self.ctx.run, uids, "text")
        if text.model is None:
            raise RecipeError(
                f"{self.ctx.stage_name}: no text embeddings in this run; the CLIP-score filter needs an "
                "`embed` stage with `text: true` and an image-text model (backend: open_clip) before it"
            )
        image = load_vectors(self.ctx.run, uids, "image", model=text.model)
        img = dict(zip(image.uids, image.matrix))
        txt = dict(zip(text.uids, text.matrix))
        drops = []
        for u in uids:
            if u not in img:
                drops.append(self.drop(u, "no_embedding", f"no image vector of {text.model}"))
            elif u not in txt:
                drops.append(self.drop(u, "no_text", "no alt-text, so no text vector to score"))
            else:
                s = float(np.dot(img[u], txt[u]))
                if s < self.config.min_score:
                    drops.append(self.drop(u, "low_clip_score", f"{s:.4f} < {self.config.min_score}"))
        return StageOutput(drops=drops_table(drops))
