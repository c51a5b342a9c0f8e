"""Pipeline stages around the visual experts (OCR, detection, tags): one base, three thin subclasses.

:class:`ExpertStage` decodes the batch's images, calls the expert once on the whole batch and, when
that raises, again image by image, so one bad image (corrupt bytes, 1x1, 10000x10, a backend crash)
becomes a ``drops`` row (``decode_error`` / ``expert_error``) instead of a failed batch.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from PIL import Image

from loupe.experts.base import Expert
from loupe.pipeline.errors import LoupeError
from loupe.pipeline.images import DecodeError, decode
from loupe.pipeline.stage import Stage, StageContext, StageOutput
from loupe.schemas.tables import DROPS, drops_table


def _error_text(e: BaseException, limit: int = 300) -> str:
    msg = f"{type(e).__name__}: {e}"
    return msg if len(msg) <= limit else msg[: limit - 3] + "..."


class ExpertStage(Stage):
    """Run one :class:`~loupe.experts.base.Expert` over a batch of samples; rows keyed by uid + model."""

    reads: ClassVar[tuple[str, ...]] = ("uid", "image")

    def __init__(self, config: Any, ctx: StageContext):
        super().__init__(config, ctx)
        self.expert = self.make_expert()

    def make_expert(self) -> Any:  # pragma: no cover - interface (an Expert, or an Embedder for embed)
        raise NotImplementedError

    @property
    def draft_size(self) -> int | None:
        """Short side JPEGs may be decoded to in draft mode (``preprocess: fast``); None = full decode."""
        if getattr(self.config, "preprocess", "exact") != "fast":
            return None
        model = (
            getattr(self.expert, "backbone", None) or getattr(self.expert, "embedder", None) or self.expert
        )
        return getattr(model, "draft_size", None)

    def close(self) -> None:
        """Called by the executor after the last batch: release the expert's threads."""
        close = getattr(self.expert, "close", None)
        if close is not None:
            close()

    def decode_side(self) -> int:
        """The longest side the expert can use: bigger JPEGs decode at 1/2..1/8 scale (images.decode).
        Boxes are stored normalised to [0, 1], so a reduced decode gives the same coordinates."""
        cfg = self.config
        return max(int(getattr(cfg, "max_side", 0) or 0), int(getattr(cfg, "imgsz", 0) or 0), 1024)

    def run_expert(self, images: list[Image.Image], rows: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
        """Call the expert; ``rows`` are the input rows (with evidence columns) of the same images."""
        return self.expert.predict(images)

    def _checked(self, images: list[Image.Image], rows: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
        out = self.run_expert(images, rows)
        if len(out) != len(images):
            raise RuntimeError(f"expert returned {len(out)} results for {len(images)} images")
        return out

    def __call__(self, batch: pa.Table) -> StageOutput:
        rows_in = batch.to_pylist()
        drops: list[dict] = []
        ok_rows: list[dict[str, Any]] = []
        images: list[Image.Image] = []
        draft = self.draft_size
        for row in rows_in:
            try:
                images.append(decode(row.get("image") or b"", max_side=self.decode_side(), draft_size=draft))
                ok_rows.append(row)
            except DecodeError as e:
                drops.append(self.drop(row["uid"], e.reason, str(e)))

        results: list[list[dict[str, Any]] | None]
        try:
            results = list(self._checked(images, ok_rows)) if images else []
        except LoupeError:
            raise  # a recipe or model problem, not a bad image: stop with its message
        except Exception:
            # Isolate the failure: the batch call failed, so find which image(s) break the expert.
            results = []
            for img, row in zip(images, ok_rows):
                try:
                    results.append(self._checked([img], [row])[0])
                except LoupeError:
                    raise
                except Exception as e:
                    results.append(None)
                    drops.append(self.drop(row["uid"], "expert_error", _error_text(e)))

        out_rows: list[dict[str, Any]] = []
        model = self.expert.model_id
        for row, res in zip(ok_rows, results):
            if res is None:
                continue
            out_rows.extend({"uid": row["uid"], "model": model, **r} for r in res)
        table = pa.Table.from_pylist(out_rows, schema=self.schema) if out_rows else self.schema.empty_table()
        return StageOutput(
            rows=table,
            drops=drops_table(drops) if drops else DROPS.empty_table(),
            metrics={"expert_model": model},
        )


class OcrStage(ExpertStage):
    name = "ocr"
    table = "ocr"

    def make_expert(self) -> Expert:
        from loupe.experts.ocr import make_ocr

        c = self.config
        return make_ocr(c.backend, c.min_score, c.max_side, c.det_min_side, c.workers, c.device)


class TagStage(ExpertStage):
    """Tags. When an ``embed`` stage of the same backbone ran first (same model id: EfficientNet-Lite0
    or the same open_clip model), tags are scored from its stored vectors — the classifier head on
    the pooled feature, or CLIP's zero-shot rule on the unit vector — so each image is decoded and
    run through the network once for both stages (issue 19). Images without such a vector are
    decoded and tagged as usual."""

    name = "tag"
    table = "tags"
    evidence: ClassVar[tuple[str, ...]] = ("embeddings",)

    def make_expert(self) -> Expert:
        from loupe.experts.tags import make_tagger

        return make_tagger(self.config, base=self.ctx.recipe_dir)

    def __call__(self, batch: pa.Table) -> StageOutput:
        if "embeddings" not in batch.column_names:
            return super().__call__(batch)
        reuse, unit, norms = stored_vectors(
            batch["embeddings"], self.expert.model_id, getattr(self.expert, "needs_norm", False)
        )
        batch = batch.drop_columns(["embeddings"])
        if not hasattr(self.expert, "predict_from_embeddings") or not len(reuse):
            return super().__call__(batch)
        results = self.expert.predict_from_embeddings(unit, norms)
        model = self.expert.model_id
        uids = batch["uid"].to_pylist()
        rows = [{"uid": uids[i], "model": model, **r} for i, res in zip(reuse.tolist(), results) for r in res]
        rest = np.setdiff1d(np.arange(batch.num_rows), reuse)
        out = super().__call__(batch.take(rest)) if len(rest) else StageOutput(drops=DROPS.empty_table())
        table = pa.Table.from_pylist(rows, schema=self.schema)
        out.rows = pa.concat_tables([table, out.rows]) if out.rows is not None else table
        out.metrics = {**out.metrics, "expert_model": model, "tags_from_embeddings": len(reuse)}
        return out


def stored_vectors(
    col: pa.ChunkedArray, model: str, need_norm: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """From a batch's ``embeddings`` evidence column: the row indices with an image vector of ``model``
    (and a stored norm when ``need_norm``), those unit vectors (n, dim) and their norms."""
    col = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    flat = pc.list_flatten(col)
    parent = pc.list_parent_indices(col).to_numpy()
    ok = pc.and_(pc.equal(flat.field("model"), model), pc.equal(flat.field("kind"), "image"))
    if need_norm:
        ok = pc.and_(ok, pc.is_valid(flat.field("norm")))
    ok = pc.fill_null(ok, False).to_numpy(zero_copy_only=False)
    rows, first = np.unique(parent[ok], return_index=True)  # one vector per uid (the first)
    if not len(rows):
        return rows, np.zeros((0, 0), np.float32), np.zeros(0, np.float32)
    picked = flat.filter(pa.array(ok)).take(pa.array(first))
    vectors = picked.field("vector")
    dim = len(vectors[0])
    unit = pc.list_flatten(vectors).to_numpy(zero_copy_only=False).astype(np.float32).reshape(-1, dim)
    norms = picked.field("norm").to_numpy(zero_copy_only=False).astype(np.float32)
    return rows, unit, norms


class DetectStage(ExpertStage):
    name = "detect"
    table = "detect"
    # OWL-ViT is queried with each image's tags (from the tag stage), unless the recipe lists queries.
    evidence: ClassVar[tuple[str, ...]] = ("tags",)

    def make_expert(self) -> Expert:
        from loupe.experts.detect import make_detector

        return make_detector(self.config, base=self.ctx.recipe_dir)

    def run_expert(self, images: list[Image.Image], rows: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
        if getattr(self.expert, "needs_queries", False):
            fixed = list(self.config.queries)
            queries = [fixed or [t["tag"] for t in (r.get("tags") or [])] for r in rows]
            return self.expert.predict(images, queries=queries)
        return self.expert.predict(images)
