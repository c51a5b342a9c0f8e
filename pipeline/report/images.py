"""Thumbnails and expert overlays for the report, written as small JPEG files.

Files, not data URIs: a 1,000-sample report then stays a ~1 MB HTML page plus ~3 KB per
thumbnail that the browser decodes in parallel, and it still opens from disk with no server.
"""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

THUMB_PX = 96
OVERLAY_PX = 360
OCR_COLOR = (0, 200, 90)
DETECT_COLOR = (255, 140, 0)


def thumb_name(uid: str) -> str:
    return f"{uid[:24]}.jpg"


def _open(data: bytes, size: int) -> Image.Image:
    img = Image.open(io.BytesIO(data))
    if img.format == "JPEG":
        img.draft("RGB", (size, size))  # decode at 1/2..1/8 scale: much faster for big photos
    img.load()
    if img.mode != "RGB":
        img = img.convert("RGBA") if "A" in img.getbands() or img.mode == "P" else img.convert("RGB")
        if img.mode == "RGBA":  # transparent PNGs on white, as a viewer would show them
            bg = Image.new("RGB", img.size, (255, 255, 255))
            bg.paste(img, mask=img.getchannel("A"))
            img = bg
    return img


def make_thumb(data: bytes, size: int = THUMB_PX) -> Image.Image | None:
    """An RGB thumbnail whose longer side is ``size``; None when the bytes do not decode."""
    try:
        img = _open(data, size)
        img.thumbnail((size, size))
        return img
    except Exception:  # a corrupt image must not stop the report; the page shows a placeholder
        return None


class SpriteSheets:
    """Packs thumbnails into a few large JPEG sheets (``cols`` x ``cols`` cells of ``cell`` px).

    Why: 1,000 separate thumbnail files are 1,000 requests; on a busy 2-core machine that alone
    pushed the page's load event past 2 s, while 4 sheets load in a fraction of that. The
    samples table shows a cell of a sheet with CSS ``background-position``.
    """

    def __init__(self, folder: Path, cell: int = THUMB_PX, cols: int = 16):
        self.folder, self.cell, self.cols = folder, cell, cols
        self.names: list[str] = []
        self._sheet: Image.Image | None = None
        self._n = 0

    def add(self, thumb: Image.Image) -> tuple[int, int, int]:
        """Place ``thumb`` centred in the next cell; return (sheet index, x, y) of that cell."""
        per = self.cols * self.cols
        if self._sheet is None or self._n == per:
            self._flush()
            self._sheet = Image.new("RGB", (self.cols * self.cell, self.cols * self.cell), (238, 238, 238))
            self._n = 0
        i = self._n
        x, y = (i % self.cols) * self.cell, (i // self.cols) * self.cell
        self._sheet.paste(thumb, (x + (self.cell - thumb.width) // 2, y + (self.cell - thumb.height) // 2))
        self._n += 1
        return len(self.names), x, y

    def _flush(self) -> None:
        if self._sheet is None or self._n == 0:
            return
        rows = -(-self._n // self.cols)  # crop the unused rows of the last sheet
        name = f"sheet-{len(self.names):03d}.jpg"
        self._sheet.crop((0, 0, self._sheet.width, rows * self.cell)).save(
            self.folder / name, format="JPEG", quality=75
        )
        self.names.append(name)
        self._sheet = None

    def close(self) -> list[str]:
        """Write the last sheet; return every sheet's file name in order."""
        self._flush()
        return self.names


def _font(px: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=px)
    except TypeError:  # Pillow < 10.1 has no sized default font
        return ImageFont.load_default()


def write_overlay(
    data: bytes, path: Path, ocr: list[dict], detect: list[dict], size: int = OVERLAY_PX
) -> bool:
    """Draw OCR boxes (green) and detection boxes with labels (orange) on a thumbnail.

    Boxes are ``[x1, y1, x2, y2]`` in [0, 1] (schemas/tables.py), so they scale to any size.
    """
    try:
        img = _open(data, size)
        img.thumbnail((size, size))
    except Exception:
        return False
    w, h = img.size
    draw = ImageDraw.Draw(img)
    font = _font(12)
    line = max(2, round(min(w, h) / 150))

    def rect(box: list[float]) -> tuple[float, float, float, float]:
        x1, y1, x2, y2 = (float(v) for v in box)
        return x1 * w, y1 * h, max(x1 * w, x2 * w), max(y1 * h, y2 * h)

    for r in ocr:
        if r.get("box") is not None and len(r["box"]) == 4:
            draw.rectangle(rect(r["box"]), outline=OCR_COLOR, width=line)
    for r in detect:
        if r.get("box") is None or len(r["box"]) != 4:
            continue
        x1, y1, x2, y2 = rect(r["box"])
        draw.rectangle((x1, y1, x2, y2), outline=DETECT_COLOR, width=line)
        label = f"{r.get('label') or '?'} {float(r.get('score') or 0):.2f}"
        tx, ty = x1 + line, max(0.0, y1 - 14)
        tb = draw.textbbox((tx, ty), label, font=font)
        draw.rectangle(tb, fill=DETECT_COLOR)
        draw.text((tx, ty), label, fill=(0, 0, 0), font=font)
    img.save(path, format="JPEG", quality=80)
    return True
