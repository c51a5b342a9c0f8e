"""The ``caption`` stage: evidence -> DenseFusion prompt -> captioner -> checked caption rows."""

from __future__ import annotations

import re
from typing import Any

import pyarrow as pa

from loupe.pipeline.logs import LOG
from loupe.pipeline.stage import Stage, StageOutput
from loupe.pipeline.stages.fuse.checks import check_caption
from loupe.pipeline.stages.fuse.composer import compose
from loupe.pipeline.stages.fuse.prompt import Evidence, PerceptualFusionPrompt, select_boxes
from loupe.schemas.tables import CAPTIONS, drops_table

#: caption models that only show the pipeline works (tiny, random or ~100M-parameter LLMs)
SMOKE_TEST_MODEL = re.compile(r"(?i)(smollm2?-(135|360)m|tiny|random|dummy)")


def is_smoke_test_model(model_id: str | None) -> bool:
    return bool(model_id and SMOKE_TEST_MODEL.search(model_id))


class ComposerBackend:
    """Deterministic, evidence-only captions (no LLM)."""

    name = "composer"
    model_id = "loupe-composer-v1"

    def caption(self, prompts: list[str], evidence: list[Evidence]) -> list[str]:
        return [compose(ev) for ev in evidence]


def make_backend(config: Any, ctx) -> Any:
    if config.backend == "composer":
        return ComposerBackend()
    # LLM backends live with the other models in loupe.experts (torch / HTTP clients imported lazily)
    from loupe.experts.captioner import make_captioner

    return make_captioner(config, base=ctx.recipe_dir)


class Caption(Stage):
    name = "caption"
    table = "captions"
    reads = ("uid", "alt_text", "width", "height")
    evidence = ("ocr", "detect", "tags")

    def __init__(self, config: Any, ctx):
        super().__init__(config, ctx)
        self.prompt = PerceptualFusionPrompt(config.prompt_template)
        self.backend = make_backend(config, ctx)
        self.smoke_test = is_smoke_test_model(self.backend.model_id)
        if self.smoke_test:
            LOG.warning(
                "stage %s: %s is a smoke-test model: its captions check the pipeline, they are not "
                "training data (set caption.model to a real captioner)",
                ctx.stage_name,
                self.backend.model_id,
            )

    def __call__(self, batch: pa.Table) -> StageOutput:
        rows = batch.to_pylist()
        evidence = [Evidence.from_row(r) for r in rows]
        for ev in evidence:  # DenseFusion §3.2.1: confident boxes, balanced towards small objects
            ev.boxes = select_boxes(
                ev.boxes, self.config.box_min_score, self.config.max_boxes, ev.width, ev.height
            )
        prompts = [self.prompt.render(ev) for ev in evidence]
        captions = self.backend.caption(prompts, evidence)
        out, drops = [], []
        cfg = self.config
        for r, ev, prompt, cap in zip(rows, evidence, prompts, captions):
            if isinstance(cap, BaseException) or not (cap or "").strip():
                detail = f"{type(cap).__name__}: {cap}" if isinstance(cap, BaseException) else "empty caption"
                drops.append(self.drop(r["uid"], "caption_failed", detail))
                continue
            cap = cap.strip()
            chk = check_caption(cap, ev, cfg.repetition_ngram)
            reason = None
            if chk.n_words < cfg.min_words:
                reason = ("caption_too_short", f"{chk.n_words} words < min_words {cfg.min_words}")
            elif cfg.max_words is not None and chk.n_words > cfg.max_words:
                reason = ("caption_too_long", f"{chk.n_words} words > max_words {cfg.max_words}")
            elif cfg.max_repetition is not None and chk.repetition > cfg.max_repetition:
                reason = (
                    "caption_repetitive",
                    f"{cfg.repetition_ngram}-gram repetition {chk.repetition:.2f} > max_repetition "
                    f"{cfg.max_repetition}: {cap[:60]!r}",
                )
            elif chk.ocr_coverage is not None and chk.ocr_coverage < cfg.min_ocr_coverage:
                reason = ("low_ocr_coverage", f"ocr_coverage {chk.ocr_coverage:.2f} < {cfg.min_ocr_coverage}")
            elif cfg.drop_hallucinations and chk.hallucinated:
                reason = ("hallucination", "names unseen objects: " + ", ".join(chk.hallucinated))
            if reason:
                drops.append(self.drop(r["uid"], *reason))
            out.append(
                {
                    "uid": r["uid"],
                    "backend": self.backend.name,
                    "model": self.backend.model_id,
                    "prompt_version": self.prompt.version,
                    "prompt": prompt,
                    "caption": cap,
                    "n_words": chk.n_words,
                    "ocr_coverage": chk.ocr_coverage,
                    "label_coverage": chk.label_coverage,
                    "hallucinated": chk.hallucinated,
                    "evidence": ev.to_json(),
                    "repetition": round(chk.repetition, 4),
                }
            )
        metrics = {"smoke_test_model": self.backend.model_id} if self.smoke_test else {}
        return StageOutput(
            rows=pa.Table.from_pylist(out, schema=CAPTIONS), drops=drops_table(drops), metrics=metrics
        )

    def close(self) -> None:
        close = getattr(self.backend, "close", None)
        if close:
            close()
