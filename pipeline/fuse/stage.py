"""The ``caption`` stage: evidence -> DenseFusion prompt -> captioner -> checked caption rows."""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from loupe.pipeline.fuse.checks import check_caption
from loupe.pipeline.fuse.composer import compose
from loupe.pipeline.fuse.prompt import Evidence, PerceptualFusionPrompt
from loupe.pipeline.stage import Stage, StageOutput
from loupe.schemas.tables import CAPTIONS, drops_table


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

    def __call__(self, batch: pa.Table) -> StageOutput:
        rows = batch.to_pylist()
        evidence = [Evidence.from_row(r) for r in rows]
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
            chk = check_caption(cap, ev)
            reason = None
            if chk.n_words < cfg.min_words:
                reason = ("caption_too_short", f"{chk.n_words} words < min_words {cfg.min_words}")
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
                }
            )
        return StageOutput(rows=pa.Table.from_pylist(out, schema=CAPTIONS), drops=drops_table(drops))

    def close(self) -> None:
        close = getattr(self.backend, "close", None)
        if close:
            close()
