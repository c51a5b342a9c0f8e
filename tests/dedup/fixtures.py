"""Real photos (scikit-image's bundled data) with planted duplicates, written as a local folder.

Twenty distinct images; three of them get a byte-identical copy, three a resized (80 %) JPEG
re-encode (quality 85) and three a slightly cropped copy (2.5 % off each edge, re-saved as PNG).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

DISTINCT = (
    "astronaut", "camera", "chelsea", "coffee", "coins", "horse", "hubble_deep_field",
    "immunohistochemistry", "moon", "page", "text", "rocket", "retina", "colorwheel", "grass",
    "gravel", "brick", "logo", "clock", "cell",
)  # fmt: skip
IDENTICAL = ("astronaut", "coffee", "moon")
RESIZED = ("chelsea", "rocket", "clock")
CROPPED = ("camera", "immunohistochemistry", "hubble_deep_field")
CROP = 0.025


def photo(name: str) -> Image.Image:
    import skimage.data

    a = getattr(skimage.data, name)()
    if a.dtype == bool:
        a = a.astype(np.uint8) * 255
    img = Image.fromarray(a)
    return img.convert("RGB")


def png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def resized_jpeg(img: Image.Image, scale: float = 0.8, quality: int = 85) -> bytes:
    w, h = img.size
    buf = io.BytesIO()
    img.resize((round(w * scale), round(h * scale)), Image.Resampling.BICUBIC).save(
        buf, "JPEG", quality=quality
    )
    return buf.getvalue()


def cropped(img: Image.Image, frac: float = CROP) -> Image.Image:
    w, h = img.size
    dx, dy = round(w * frac), round(h * frac)
    return img.crop((dx, dy, w - dx, h - dy))


def write_planted(folder: Path) -> dict[str, set[str]]:
    """Write the images; returns the file names per kind: distinct, identical, resized, cropped."""
    folder.mkdir(parents=True, exist_ok=True)
    kinds: dict[str, set[str]] = {"distinct": set(), "identical": set(), "resized": set(), "cropped": set()}
    for name in DISTINCT:
        img = photo(name)
        data = png(img)
        (folder / f"{name}.png").write_bytes(data)
        kinds["distinct"].add(f"{name}.png")
        if name in IDENTICAL:
            (folder / f"{name}_copy.png").write_bytes(data)
            kinds["identical"].add(f"{name}_copy.png")
        if name in RESIZED:
            (folder / f"{name}_resized.jpg").write_bytes(resized_jpeg(img))
            kinds["resized"].add(f"{name}_resized.jpg")
        if name in CROPPED:
            (folder / f"{name}_cropped.png").write_bytes(png(cropped(img)))
            kinds["cropped"].add(f"{name}_cropped.png")
    return kinds
