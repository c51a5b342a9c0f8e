"""A synthetic fine-detail source: large images with one small rendered digit string or word.

Made for the seeds' central claim (Dragonfly, S2, SliME, MG-LLaVA: a high-resolution view, by zoom
or slices, beats one low-resolution view on fine detail). Each image is ``image_size`` pixels square
with a random pastel background, a few text-free distractor shapes, and ONE short string rendered
``text_height`` pixels tall at a random place: at the full resolution the OCR expert reads it; a model
that sees the whole image at ``image_size / 8`` pixels sees a blot two pixels tall.

Everything is a pure function of ``(seed, index)`` (``numpy.random.default_rng([seed, index])``), so
image ``i`` is the same whatever ``count`` is, and a rerun regenerates identical bytes and uids. The
ground truth (the string, its pixel box, whether the image is a planted copy) goes to
``samples.meta``; :mod:`loupe.pipeline.loop` scores held-out images against it.

Planted duplicates give the dedup stages real work: ``exact_duplicates`` of the images are byte
copies of an earlier one (exact dedup drops them) and ``near_duplicates`` are an earlier image with
every pixel one or two grey levels lighter (SemDeDup drops them; their sha256 differs; two near
copies of one original may coincide, and exact dedup then drops one).
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from functools import lru_cache

import numpy as np
import pyarrow as pa
from PIL import Image, ImageDraw, ImageFont

from loupe.pipeline.stage import Source, StageOutput
from loupe.schemas.tables import SAMPLES, drops_table
from loupe.schemas.uid import local_uid, sha256_hex

BATCH = 64
# Equal-length words so that a low-resolution view cannot tell them apart by the blot's width.
WORDS = (
    "BIRD", "BLUE", "CAKE", "COLD", "DESK", "DOOR", "FISH", "GOLD", "HAND", "KING",
    "LAMP", "MILK", "MOON", "NOSE", "PARK", "RAIN", "ROAD", "SALT", "SHIP", "SNOW",
    "STAR", "TREE", "WIND", "WOLF",
)  # fmt: skip


@lru_cache(maxsize=8)
def _font(size: int) -> ImageFont.FreeTypeFont:
    # Pillow's bundled scalable font (Aileron, Pillow >= 10.1): no system font needed, and its
    # digits are tabular, so every digit string of one length has the same width.
    return ImageFont.load_default(size=size)


def text_for(rng: np.random.Generator, kind: str, length: int) -> str:
    if kind == "digits":
        return "".join(str(d) for d in rng.integers(0, 10, size=length))
    return WORDS[int(rng.integers(0, len(WORDS)))]


def render(
    seed: int, index: int, image_size: int, text_height: int, kind: str, length: int
) -> tuple[Image.Image, str, list[int]]:
    """Image ``index`` of the task: (RGB image, the rendered string, its pixel box x1, y1, x2, y2)."""
    rng = np.random.default_rng([seed, index])
    s = image_size
    base = rng.integers(150, 256, size=3)
    # a soft vertical gradient: no two backgrounds alike, nothing that reads as text
    ramp = np.linspace(0, 1, s)[:, None, None] * (rng.integers(-60, 61, size=3))[None, None, :]
    px = np.clip(base[None, None, :] + ramp, 0, 255).astype(np.uint8)
    img = Image.fromarray(np.ascontiguousarray(np.broadcast_to(px, (s, s, 3))), "RGB")
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(3, 7))):
        x0, y0 = rng.integers(0, s, size=2)
        w, h = rng.integers(s // 12, s // 3, size=2)
        fill = tuple(int(c) for c in rng.integers(90, 256, size=3))
        box = [int(x0), int(y0), int(x0 + w), int(y0 + h)]
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=fill)
    text = text_for(rng, kind, length)
    font = _font(text_height)
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    tw, th = right - left, bottom - top
    pad = max(2, text_height // 4)
    x = int(rng.integers(pad, max(pad + 1, s - tw - pad)))
    y = int(rng.integers(pad, max(pad + 1, s - th - pad)))
    # a light label plate keeps the text legible over any distractor, as a sign or price tag would
    plate = [x - pad, y - pad, x + tw + pad, y + th + pad]
    draw.rectangle(plate, fill=tuple(int(c) for c in rng.integers(225, 256, size=3)))
    ink = tuple(int(c) for c in rng.integers(0, 70, size=3))
    draw.text((x - left, y - top), text, font=font, fill=ink)
    return img, text, [x, y, x + tw, y + th]


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def plant_plan(count: int, exact: float, near: float, seed: int) -> dict[int, tuple[str, int]]:
    """Which indices are planted copies: ``{index: ("exact" | "near", original index)}``.

    Copies are of an earlier original index, chosen by a seeded RNG independent of the images'.
    """
    rng = np.random.default_rng([seed, 0x5EED])
    n_exact, n_near = round(count * exact), round(count * near)
    chosen = [int(v) for v in rng.permutation(np.arange(1, count))[: n_exact + n_near]] if count > 1 else []
    planted = set(chosen)
    plan: dict[int, tuple[str, int]] = {}
    for k, i in enumerate(chosen):
        # copies are of an original (never of another copy), so an exact copy is byte-identical
        originals = [j for j in range(i) if j not in planted]
        plan[i] = ("exact" if k < n_exact else "near", originals[int(rng.integers(0, len(originals)))])
    return plan


class FineDetail(Source):
    """``type: finedetail`` - renders ``count`` images; see the module docstring."""

    def _image(self, index: int, plan: dict[int, tuple[str, int]]) -> tuple[bytes, dict]:
        c = self.config
        kind, orig = plan.get(index, ("original", index))
        img, text, box = render(c.seed, orig, c.image_size, c.text_height, c.text, c.length)
        if kind == "near":
            # every pixel one or two grey levels lighter (by the copy's index): a new sha256, the same
            # picture. Salt noise instead (+1 on a tenth of the pixels) moves EfficientNet-Lite0
            # embeddings of these flat images to cosine 0.78-0.97 of the original, as far as distinct images.
            px = np.asarray(img).astype(np.int16) + 1 + index % 2
            img = Image.fromarray(np.minimum(px, 255).astype(np.uint8))
        meta = {"answer": text, "box": box, "text_height": c.text_height, "copy": kind, "copy_of": orig}
        return png_bytes(img), meta

    def read(self, skip: set[str]) -> Iterator[StageOutput]:
        c = self.config
        plan = plant_plan(c.count, c.exact_duplicates, c.near_duplicates, c.seed)
        rows: list[dict] = []
        for i in range(c.count):
            source_id = f"{c.text}-{c.seed}-{i:06d}.png"
            # the uid hashes the rendered bytes: render cheaply-skippable only after rendering, since
            # a different Pillow (font rasteriser) gives different bytes and must give new uids
            data, meta = self._image(i, plan)
            digest = sha256_hex(data)
            uid = local_uid(self.name, source_id, digest)
            if uid in skip:
                continue
            meta.update({"bytes": len(data), "format": "png", "index": i})
            rows.append(
                {
                    "uid": uid,
                    "source": self.name,
                    "source_id": source_id,
                    "url": None,
                    "image_path": None,
                    "image": data,
                    "width": c.image_size,
                    "height": c.image_size,
                    "sha256": digest,
                    "alt_text": None,
                    "conversations": None,
                    "meta": json.dumps(meta),
                }
            )
            if len(rows) >= BATCH:
                yield StageOutput(rows=pa.Table.from_pylist(rows, schema=SAMPLES), drops=drops_table([]))
                rows = []
        if rows:
            yield StageOutput(rows=pa.Table.from_pylist(rows, schema=SAMPLES), drops=drops_table([]))
