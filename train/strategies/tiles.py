"""Image tiling shared by the high-resolution strategies (Dragonfly, SliME, MG-LLaVA, S2).

Pure functions on sizes plus the few PIL operations the upstream processors perform, so the
token arithmetic of each strategy can be tested without a model. Sizes are ``(width, height)``
like PIL's ``Image.size``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from PIL import Image

Size = tuple[int, int]


def select_best_resolution(original_size: Size, possible_resolutions: Sequence[Size]) -> Size:
    """The candidate that keeps the most image pixels after an aspect-preserving fit, ties broken
    by the least padding.

    Same rule, line for line, as LLaVA-NeXT's ``select_best_resolution`` as copied into
    togethercomputer/Dragonfly ``src/dragonfly/models/processing_dragonfly.py`` L109-136 and
    yfzhang114/SliME ``llava/mm_utils.py`` L12-39.
    """
    ow, oh = original_size
    if ow <= 0 or oh <= 0:
        raise ValueError(f"image size must be positive, got {original_size}")
    best: Size | None = None
    max_effective, min_wasted = 0, math.inf
    for w, h in possible_resolutions:
        scale = min(w / ow, h / oh)
        effective = min(int(ow * scale) * int(oh * scale), ow * oh)
        wasted = w * h - effective
        if effective > max_effective or (effective == max_effective and wasted < min_wasted):
            max_effective, min_wasted, best = effective, wasted, (w, h)
    if best is None:
        raise ValueError("possible_resolutions is empty")
    return best


def select_best_resolution_uhd(original_size: Size, crop: int) -> Size:
    """SliME's released grid rule (yfzhang114/SliME ``llava/mm_utils.py`` L41-97), which its
    ``process_anyres_image`` (L194) and ``get_anyres_image_grid_shape`` (L173) call *instead of*
    the pinpoint list set in ``train.py`` L1109: slices = ceil(area / crop²) clamped to [2, 6],
    then the best-fitting factorisation of slices-1 .. slices+1 crops (2..3 when slices is 2)."""
    ow, oh = original_size
    scale = min(max(math.ceil(ow * oh / (crop * crop)), 2), 6)
    counts = [scale, scale + 1] if scale <= 2 else [scale - 1, scale, scale + 1]
    candidates = [
        (cols * crop, (n // cols) * crop) for n in counts for cols in range(1, n + 1) if n % cols == 0
    ]
    # upstream enumerates factors i of n as (i, n // i) = (width slices, height slices)
    return select_best_resolution(original_size, candidates)


def grid_shape(resolution: Size, crop: int) -> tuple[int, int]:
    """``(columns, rows)`` of ``crop``-sized tiles covering ``resolution``."""
    return resolution[0] // crop, resolution[1] // crop


def resize_and_pad(image: Image.Image, target: Size, fill: tuple[int, int, int] = (0, 0, 0)) -> Image.Image:
    """Aspect-preserving resize into ``target`` then centre pad (SliME ``llava/mm_utils.py`` L99-131)."""
    ow, oh = image.size
    tw, th = target
    if tw / ow < th / oh:
        nw, nh = tw, min(math.ceil(oh * tw / ow), th)
    else:
        nw, nh = min(math.ceil(ow * th / oh), tw), th
    canvas = Image.new("RGB", (tw, th), fill)
    canvas.paste(image.resize((nw, nh)), ((tw - nw) // 2, (th - nh) // 2))
    return canvas


def divide_to_patches(image: Image.Image, patch: int) -> list[Image.Image]:
    """Row-major ``patch``×``patch`` crops (Dragonfly ``processing_dragonfly.py`` L174-193)."""
    w, h = image.size
    return [image.crop((x, y, x + patch, y + patch)) for y in range(0, h, patch) for x in range(0, w, patch)]
