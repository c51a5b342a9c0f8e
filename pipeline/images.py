"""Image decoding shared by every stage: bytes -> RGB PIL image, with clear failures and bounded memory.

Pixel budget (``limits.max_image_pixels`` in the recipe, default ~90 Mpx): the size is read from the
image header (``Image.open`` parses only the header) and an image above the budget is refused with
:class:`ImageTooLarge` *before* any pixel is decoded. A 48 KB PNG can declare 20000 x 20000 pixels
(1.2 GB as RGB); decoding it first and checking after is what exhausts memory. Pillow's own
``MAX_IMAGE_PIXELS`` guard is kept at 4x the budget (it raises at 2x that) as a backstop for code
that opens images directly; images reaching those paths were admitted by ingest already.

``max_side``: callers that only need a smaller picture (models resize to 224..1600 px anyway) get
it without the full-size intermediate where the codec allows: JPEG decodes at 1/2, 1/4 or 1/8 scale
(``Image.draft``, libjpeg's DCT scaling); other formats are decoded, then shrunk with ``Image.reduce``
so a batch holds only the small copies.
"""

from __future__ import annotations

import io
import re
import warnings

import numpy as np
from PIL import Image, ImageOps

DEFAULT_MAX_PIXELS = 90_000_000
_budget = DEFAULT_MAX_PIXELS
Image.MAX_IMAGE_PIXELS = 4 * DEFAULT_MAX_PIXELS

#: object addresses in Pillow messages ("<_io.BytesIO object at 0x7f...>") change on every run
_ADDRESS = re.compile(r"<([\w.]+) object at 0x[0-9a-fA-F]+>")


class DecodeError(ValueError):
    reason = "decode_error"


class ImageTooLarge(DecodeError):
    """The header declares more pixels than the budget: refused before decoding."""

    reason = "image_too_large"


def set_pixel_budget(max_pixels: int) -> None:
    """Set the per-image pixel budget for this process (executors call it from the recipe's ``limits``)."""
    global _budget
    _budget = int(max_pixels)
    Image.MAX_IMAGE_PIXELS = 4 * _budget


def pixel_budget() -> int:
    return _budget


def _stable(e: BaseException) -> str:
    return _ADDRESS.sub(r"<\1>", f"{type(e).__name__}: {e}")


def _to_rgb(img: Image.Image) -> Image.Image:
    """RGB, scaling high-bit-depth greyscale properly (Pillow's convert clips 16-bit to 255: white)."""
    if img.mode == "RGB":
        return img
    if img.mode.startswith("I;16"):
        a = np.asarray(img).astype(np.uint32)
        return Image.fromarray(((a * 255 + 32767) // 65535).astype(np.uint8), "L").convert("RGB")
    if img.mode == "I":  # 32-bit integers: a 16-bit range is scaled, an 8-bit range kept
        a = np.clip(np.asarray(img).astype(np.int64), 0, 65535)
        if a.max(initial=0) > 255:
            a = (a * 255 + 32767) // 65535
        return Image.fromarray(a.astype(np.uint8), "L").convert("RGB")
    if img.mode == "F":
        a = np.asarray(img, dtype=np.float32)
        lo, hi = float(np.nanmin(a, initial=0.0)), float(np.nanmax(a, initial=1.0))
        a8 = np.nan_to_num((a - lo) / (hi - lo or 1.0) * 255.0)
        return Image.fromarray(a8.round().astype(np.uint8), "L").convert("RGB")
    return img.convert("RGB")


def decode(
    data: bytes, max_side: int | None = None, max_pixels: int | None = None, draft_size: int | None = None
) -> Image.Image:
    """Decode fully (so truncated files fail here, not later), apply EXIF rotation, convert to RGB.

    Refuses images above the pixel budget before decoding (:class:`ImageTooLarge`). With
    ``max_side``, the result's longer side may be reduced towards ``max_side`` (never below it).
    With ``draft_size`` (a model that resizes to that short side anyway, ``preprocess: fast``), a
    JPEG is decoded in draft mode: libjpeg's DCT scaling at 1/2..1/8, the smallest that keeps both
    sides at least ``draft_size`` (2-8x fewer pixels to decode and resize); it overrides
    ``max_side`` for JPEGs; other formats decode as without it.
    """
    if not data:
        raise DecodeError("empty file")
    budget = max_pixels or _budget
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
        w, h = img.size  # from the header: nothing decoded yet
        if w * h > budget:
            raise ImageTooLarge(
                f"{w}x{h} = {w * h / 1e6:.0f} Mpx is over the pixel budget of {budget / 1e6:.0f} Mpx "
                "(limits.max_image_pixels)"
            )
        fmt = img.format
        if draft_size and fmt == "JPEG":
            img.draft("RGB", (draft_size, draft_size))
        elif max_side and max(w, h) >= 2 * max_side and fmt == "JPEG":
            img.draft("RGB", (max_side, max_side))  # libjpeg decodes at 1/2..1/8 scale, >= max_side
        img.load()
        if max_side and max(img.size) >= 2 * max_side and fmt != "JPEG":
            img = img.reduce(max(img.size) // max_side)
        img = ImageOps.exif_transpose(img)
        img = _to_rgb(img)
        img.format = fmt  # keep the container format (JPEG, PNG...) through the conversions
        return img
    except DecodeError:
        raise
    except Image.DecompressionBombError as e:  # far over: Pillow refused it in the header already
        raise ImageTooLarge(f"{e} (limits.max_image_pixels: {budget / 1e6:.0f} Mpx)") from None
    except Exception as e:  # PIL raises many types: OSError, SyntaxError, ValueError, DecompressionBomb...
        raise DecodeError(_stable(e)) from e


def encode_jpeg(img: Image.Image, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    img.convert("RGB").save(buf, format="JPEG", quality=quality)
    return buf.getvalue()
