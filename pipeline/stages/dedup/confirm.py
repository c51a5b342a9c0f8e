"""Safety checks around pHash: low-information images, a second look at candidates, which copy stays.

Why: a 64-bit pHash keeps only the 8×8 lowest DCT frequencies of a 32×32 thumbnail. Two signs with
the same layout and different words ("TEA" / "TEN", "PULL" / "SALE") differ only in high
frequencies and land 0-6 bits apart, and flat-colour images hash to an arbitrary fixed pattern. So:

* **low information** — an image whose 32×32 grey thumbnail has a standard deviation below
  ``min_contrast`` (flat colour, a blank scan) is never merged by pHash: its hash says nothing.
  Byte-identical copies of it are still caught by ``exact_dedup``.
* **confirmation** — a candidate pair within ``max_distance`` bits is compared once more on
  64×64 grey thumbnails (blurred σ=1, each normalised to zero mean and unit variance), split into
  8×8 blocks of 8×8 pixels; each block may shift ±3 pixels (so 2-5 % crops still align). The pair is a
  duplicate only if no block differs by more than ``confirm_threshold`` (mean absolute difference
  in units of the image's standard deviation). Measured (tests/dedup): resized JPEG re-encodes
  ≤ 0.10, 2.5 % crops of the scikit-image photos ≤ 0.48; different words rendered on the same sign
  layout in four styles ≥ 0.61. Default 0.55.
* **keep policy** — which member of a duplicate group stays: ``largest`` (default: most pixels;
  an image stored with a palette — GIF, palette PNG — never wins over a true-colour copy, whatever
  its size), or ``first`` (the first in (source, source_id, uid) order: for a local folder the
  sorted relative path, for a URL list the row order number img2dataset gives each URL).
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageFilter

THUMB = 64
BLOCKS = 8
SHIFT = 3


def grey(img: Image.Image, side: int, blur: float = 0.0) -> np.ndarray:
    im = img.convert("L").resize((side, side), Image.Resampling.BOX)
    if blur:
        im = im.filter(ImageFilter.GaussianBlur(blur))
    return np.asarray(im, np.float32)


def contrast(img: Image.Image) -> float:
    """Standard deviation (0-255 grey levels) of the 32×32 thumbnail pHash itself looks at."""
    return float(grey(img, 32).std())


def signature(img: Image.Image) -> np.ndarray:
    """The 64×64 normalised thumbnail the confirmation compares (kept per candidate image)."""
    a = grey(img, THUMB, 1.0) / 255.0
    return ((a - a.mean()) / (a.std() + 1e-3)).astype(np.float32)


def block_difference(a: np.ndarray, b: np.ndarray, shift: int = SHIFT, blocks: int = BLOCKS) -> float:
    """Max over blocks of the min over shifts (±``shift`` px) of the block's mean |a - b|."""
    s = a.shape[0]
    k = s // blocks
    pa = np.pad(a, shift, mode="edge")
    best = np.full((blocks, blocks), np.inf, np.float32)
    for dy in range(-shift, shift + 1):
        for dx in range(-shift, shift + 1):
            moved = pa[shift + dy : shift + dy + s, shift + dx : shift + dx + s]
            d = np.abs(moved - b).reshape(blocks, k, blocks, k).mean(axis=(1, 3))
            np.minimum(best, d, out=best)
    return float(best.max())


def is_palette(data: bytes) -> bool:
    """Stored with a colour palette (GIF, palette PNG): decoded to RGB it is still ≤ 256 colours."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            return im.mode in ("P", "PA") or (im.format or "").upper() == "GIF"
    except Exception:  # undecodable bytes are reported by the caller's own decode
        return False


def keep_key(policy: str, order: int, width: int, height: int, palette: bool) -> tuple:
    """Sort key: the smaller key is kept when two images are duplicates."""
    if policy == "first":
        return (order,)
    if policy == "largest":
        return (palette, -(width * height), order)
    raise ValueError(f"keep: {policy!r} is not a policy; valid: largest, first")
