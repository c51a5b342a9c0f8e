"""The ``embed`` stage: one L2-normalised image vector per sample (+ one text vector per alt-text).

Rows go to ``embeddings`` as (uid, model, kind, vector) with kind ``image`` or ``text``; SemDeDup
and selection read the image rows, the CLIP-score filter pairs them with the text rows. Decoding
and per-image failure isolation come from :class:`~loupe.pipeline.stages.experts.ExpertStage`.
"""

from __future__ import annotations

from typing import Any, ClassVar

from PIL import Image

from loupe.experts.embed import Embedder, make_embedder
from loupe.pipeline.errors import RecipeError
from loupe.pipeline.stages.experts import ExpertStage


class Embed(ExpertStage):
    name = "embed"
    table = "embeddings"
    reads: ClassVar[tuple[str, ...]] = ("uid", "image", "alt_text")

    def make_expert(self) -> Embedder:
        embedder = make_embedder(self.config, base=self.ctx.recipe_dir)
        if self.config.text and not embedder.supports_text:
            raise RecipeError(
                f"embed: text: true needs a model with a text tower, but backend={self.config.backend!r} "
                "has none; use backend: open_clip or set text: false"
            )
        return embedder

    def run_expert(self, images: list[Image.Image], rows: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
        vecs, norms = self.expert.embed_images_and_norms(images)
        if norms is None:
            norms = [None] * len(vecs)
        out = [[{"kind": "image", "vector": v.tolist(), "norm": n}] for v, n in zip(vecs, norms)]
        if self.config.text:
            idx = [i for i, r in enumerate(rows) if (r.get("alt_text") or "").strip()]
            if idx:
                texts = self.expert.embed_texts([rows[i]["alt_text"].strip() for i in idx])
                for i, v in zip(idx, texts):
                    out[i].append({"kind": "text", "vector": v.tolist(), "norm": None})
        return out
