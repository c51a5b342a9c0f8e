"""Image decoding shared by every stage: bytes -> RGB PIL image, with clear failures."""

from __future__ import annotations

import io

from PIL import Image, ImageOps

# Refuse decompression bombs early instead of exhausting memory (~ 16k x 16k).
MAX_PIXELS = 268_000_000
Image.MAX_IMAGE_PIXELS = MAX_PIXELS


class DecodeError(ValueError):
    pass


def decode(data: bytes) -> Image.Image:
    """Decode fully (so truncated files fail here, not later), apply EXIF rotation, convert to RGB."""
    if not data:
        raise DecodeError("empty file")
    try:
        img = Image.open(io.BytesIO(data))
        img.load()
        fmt = img.format
        img = ImageOps.exif_transpose(img)
        if img.mode != "RGB":
            img = img.convert("RGB")
        img.format = fmt  # keep the container format (JPEG, PNG...) through the conversions
        return img
    except Exception as e:  # PIL raises many types: OSError, SyntaxError, ValueError, DecompressionBomb...
        raise DecodeError(f"{type(e).__name__}: {e}") from e


def encode_jpeg(img: Image.Image, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    img.convert("RGB").save(buf, format="JPEG", quality=quality)
    return buf.getvalue()
