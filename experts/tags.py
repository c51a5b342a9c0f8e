"""Image taggers: ImageNet classes from EfficientNet-Lite0 (offline default) or open_clip zero-shot.

Rows are ``{tag, score}``, best first, at most ``top_k`` with ``score >= min_score``.

EfficientNet tags are the readable ImageNet class names of OpenAI's CLIP release (``tabby cat``,
not ``tabby``) plus a coarse group (``cat``) scored with the summed probability of its classes
(``vocab/imagenet.tsv``), so a cat photo split between three cat breeds still says ``cat`` first.
open_clip tags score a vocabulary with CLIP's zero-shot rule: softmax over the cosine similarities
of the image and ``"a photo of a {tag}."`` times the model's logit scale (Radford et al. 2021).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from loupe.experts.base import Expert
from loupe.experts.embed import EfficientNetLite0, OpenClip
from loupe.schemas.errors import RecipeError

VOCAB_DIR = Path(__file__).resolve().parent / "vocab"
IMAGENET_TSV = VOCAB_DIR / "imagenet.tsv"
DEFAULT_VOCAB = VOCAB_DIR / "tags.txt"
PROMPT = "a photo of a {}."


def load_imagenet_vocab(path: Path = IMAGENET_TSV) -> tuple[list[str], list[str]]:
    """(class name per index, coarse group per index or '') from ``imagenet.tsv``."""
    names, coarse = [], []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line or line.startswith("#"):
            continue
        idx, name, group = (line.split("\t") + [""])[:3]
        if int(idx) != len(names):
            raise ValueError(f"{path}: class index {idx} out of order")
        names.append(name.strip().lower())
        coarse.append(group.strip().lower())
    return names, coarse


def load_vocabulary(vocab: str | list[str] | None, base: Path | None = None) -> list[str]:
    """A tag list from the recipe: a list, a text file (one tag a line, ``#`` comments), or the default."""
    if isinstance(vocab, list):
        tags = vocab
    else:
        path = DEFAULT_VOCAB if vocab is None else Path(vocab).expanduser()
        if vocab is not None and not path.is_absolute() and base is not None:
            path = base / path
        if not path.is_file():
            raise RecipeError(
                f"vocabulary: file {str(path)!r} not found (give a list of tags or a text file)"
            )
        tags = [t for t in path.read_text(encoding="utf-8").splitlines() if not t.startswith("#")]
    out = list(dict.fromkeys(t.strip().lower() for t in tags if t and t.strip()))
    if not out:
        raise RecipeError(f"vocabulary: {vocab!r} holds no tags")
    return out


def softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(axis=-1, keepdims=True)
    e = np.exp(x)
    return e / e.sum(axis=-1, keepdims=True)


def imagenet_tag_matrix(names: list[str], coarse: list[str]) -> tuple[list[str], np.ndarray]:
    """Tags (class names, duplicates merged, then coarse groups) and the 0/1 matrix (tags x classes)
    whose product with class probabilities gives each tag's summed probability."""
    tags = list(dict.fromkeys([*names, *(g for g in coarse if g)]))
    index = {t: i for i, t in enumerate(tags)}
    m = np.zeros((len(tags), len(names)), np.float32)
    for j, (name, group) in enumerate(zip(names, coarse)):
        m[index[name], j] = 1.0
        if group:
            m[index[group], j] = 1.0
    return tags, m


def imagenet_tag_scores(probs: np.ndarray, names: list[str], coarse: list[str]) -> dict[str, float]:
    """Class probabilities of one image -> tag scores (class names and coarse groups, summed)."""
    tags, m = imagenet_tag_matrix(names, coarse)
    return dict(zip(tags, (m @ probs).tolist()))


def top_rows(tags: list[str], scores: np.ndarray, top_k: int, min_score: float) -> list[list[dict[str, Any]]]:
    """Per image (rows of ``scores``), the ``top_k`` best tags scoring at least ``min_score``."""
    out = []
    k = min(top_k, scores.shape[1])
    for row in scores:
        best = np.argpartition(-row, k - 1)[:k] if k < len(row) else np.arange(len(row))
        best = sorted(best.tolist(), key=lambda i: (-row[i], tags[i]))
        out.append([{"tag": tags[i], "score": round(float(row[i]), 4)} for i in best if row[i] >= min_score])
    return out


class EfficientNetTagger(Expert):
    table = "tags"
    #: ``predict_from_embeddings`` needs each stored vector's pre-normalisation norm
    needs_norm = True

    def __init__(
        self,
        top_k: int = 5,
        min_score: float = 0.05,
        device: str = "auto",
        vocabulary: list[str] | None = None,
        backbone: EfficientNetLite0 | None = None,
    ):
        self.backbone = backbone or EfficientNetLite0(device=device)
        tags, matrix = imagenet_tag_matrix(*load_imagenet_vocab())
        if vocabulary:  # optional recipe vocabulary: keep only those tags (class names or coarse groups)
            keep = [i for i, t in enumerate(tags) if t in set(vocabulary)]
            if not keep:
                raise RecipeError(f"vocabulary: none of {vocabulary[:5]}... is an ImageNet class or group")
            tags, matrix = [tags[i] for i in keep], matrix[keep]
        self.tags = tags
        # (classes x tags), scored in torch: a numpy matmul here goes to OpenBLAS, whose spinning
        # threads fight torch's for the cores and made per-image calls 4x slower (bench_experts.py)
        self.torch = self.backbone.torch
        self.matrix = self.torch.from_numpy(np.ascontiguousarray(matrix.T, dtype=np.float64))
        self.top_k, self.min_score = top_k, min_score
        self.model_id = self.backbone.model_id

    def predict(self, images: list[Image.Image]) -> list[list[dict[str, Any]]]:
        return self._rows(self.backbone.features_and_logits(images)[1])

    def predict_from_embeddings(self, unit: np.ndarray, norms: np.ndarray) -> list[list[dict[str, Any]]]:
        """Tags from the embed stage's stored vectors of the same backbone: no decode, no forward."""
        return self._rows(self.backbone.logits_from_features(unit, norms))

    def _rows(self, logits: np.ndarray) -> list[list[dict[str, Any]]]:
        probs = self.torch.softmax(self.torch.from_numpy(logits).double(), dim=-1)
        return top_rows(self.tags, (probs @ self.matrix).numpy(), self.top_k, self.min_score)


class OpenClipTagger(Expert):
    table = "tags"
    needs_norm = False

    def __init__(
        self,
        model: str | None,
        pretrained: str | None,
        vocabulary: list[str],
        top_k: int = 5,
        min_score: float = 0.05,
        device: str = "auto",
        base: Path | None = None,
        embedder: OpenClip | None = None,
    ):
        self.embedder = embedder or OpenClip(model, pretrained, device=device, base=base)
        self.vocabulary = vocabulary
        # text side computed once per worker: one prompt per tag
        self.text = self.embedder.embed_texts([PROMPT.format(t) for t in vocabulary])
        scale = getattr(self.embedder.model, "logit_scale", None)
        self.logit_scale = float(scale.exp().item()) if scale is not None else 100.0
        self.top_k, self.min_score = top_k, min_score
        self.model_id = self.embedder.model_id

    def predict(self, images: list[Image.Image]) -> list[list[dict[str, Any]]]:
        if not images:
            return []
        return self.predict_from_embeddings(self.embedder.embed_images(images))

    def predict_from_embeddings(self, unit: np.ndarray, norms: Any = None) -> list[list[dict[str, Any]]]:
        """Zero-shot tags from stored unit image vectors of the same model (CLIP scores need no norm)."""
        sims = np.asarray(unit, np.float32) @ self.text.T
        probs = softmax(self.logit_scale * sims.astype(np.float64))
        return top_rows(self.vocabulary, probs, self.top_k, self.min_score)


def make_tagger(config: Any, base: Path | None = None) -> Expert:
    """Build the tagger of a recipe ``tag`` stage config (``TagConfig``)."""
    c = config
    if c.backend == "efficientnet_lite0":
        vocab = load_vocabulary(c.vocabulary, base) if c.vocabulary is not None else None
        return EfficientNetTagger(top_k=c.top_k, min_score=c.min_score, device=c.device, vocabulary=vocab)
    if c.backend == "open_clip":
        vocab = load_vocabulary(c.vocabulary, base)
        return OpenClipTagger(c.model, c.pretrained, vocab, c.top_k, c.min_score, c.device, base)
    raise RecipeError(f"tag backend={c.backend!r} is not valid; use efficientnet_lite0 or open_clip")
