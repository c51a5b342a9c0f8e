"""Safe pHash defaults: signs with different words are never merged, flat images never merge, the keep
policy picks the largest true-colour copy, and the max_distances sweep is reported."""

from __future__ import annotations

import io
import itertools
from pathlib import Path

import matplotlib
import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

from loupe.pipeline.executors.local import run_local
from loupe.pipeline.executors.plan import make_plan
from loupe.pipeline.query import query
from loupe.pipeline.recipe import load_recipe
from loupe.pipeline.stages.dedup.confirm import block_difference, signature
from loupe.pipeline.stages.dedup.phash import phash_bits

from .fixtures import cropped, photo, resized_jpeg

FONTS = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
WORDS = ("TEA", "TEN", "INN", "PULL", "SALE", "CAFE", "GATE", "EXIT", "WAIT", "STOP", "DOOR", "PARK", "MENU")
STYLES = {
    "white": {},
    "green": {"bg": "darkgreen", "fg": "white", "pt": 70},
    "yellow": {"font": "DejaVuSerif.ttf", "pt": 100, "bg": "yellow"},
    "red": {"size": (400, 400), "pt": 80, "bg": "red", "fg": "white"},
}


def sign(word, size=(640, 320), font="DejaVuSans-Bold.ttf", pt=90, bg="white", fg="black") -> Image.Image:
    img = Image.new("RGB", size, bg)
    f = ImageFont.truetype(str(FONTS / font), pt)
    d = ImageDraw.Draw(img)
    x0, y0, x1, y1 = d.textbbox((0, 0), word, font=f)
    d.text(((size[0] - (x1 - x0)) / 2 - x0, (size[1] - (y1 - y0)) / 2 - y0), word, font=f, fill=fg)
    return img


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def _run(root: Path, stage: str, name: str):
    (root / f"{name}.yaml").write_text(
        f"name: {name}\noutput: runs\nsources: [{{type: local_folder, name: f, path: imgs}}]\nstages:\n{stage}"
    )
    plan = make_plan(load_recipe(root / f"{name}.yaml"))
    metrics = run_local(plan, quiet=True)
    names = {
        r["uid"]: r["source_id"] for r in query(plan.run, "SELECT uid, source_id FROM samples").to_pylist()
    }
    rows = query(
        plan.run, "SELECT uid, duplicate_of, detail FROM drops WHERE stage = 'phash_dedup'"
    ).to_pylist()
    return metrics["phash_dedup"], {names[r["uid"]]: names[r["duplicate_of"]] for r in rows}, rows


def test_plain_phash_would_merge_these_signs():
    """The hazard is real: same-layout signs with different words are within 6 of 64 bits."""
    close = []
    for style in STYLES.values():
        h = {w: phash_bits(sign(w, **style)) for w in WORDS}
        close += [(a, b) for a, b in itertools.combinations(WORDS, 2) if (h[a] != h[b]).sum() <= 6]
    assert len(close) >= 5, close


def test_signs_with_different_words_are_never_phash_duplicates(tmp_path):
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    for style, kw in STYLES.items():
        for w in WORDS:
            (imgs / f"{style}_{w}.png").write_bytes(_png(sign(w, **kw)))
    # a resized JPEG re-encode of one sign is still a duplicate
    (imgs / "white_EXIT_reencoded.jpg").write_bytes(resized_jpeg(sign("EXIT")))
    m, dups, rows = _run(tmp_path, "  - stage: phash_dedup\n", "signs")
    assert dups == {"white_EXIT_reencoded.jpg": "white_EXIT.png"}, dups
    assert m["pairs_rejected_by_confirmation"] >= 5
    assert "confirmed, block difference" in rows[0]["detail"]


def test_confirmation_margins_on_photos_and_signs():
    """Golden margins behind the default confirm_threshold 0.55 (module docstring)."""
    for name in ("camera", "immunohistochemistry", "hubble_deep_field", "chelsea"):
        p = photo(name)
        assert block_difference(signature(p), signature(cropped(p))) <= 0.5
        re = Image.open(io.BytesIO(resized_jpeg(p))).convert("RGB")
        assert block_difference(signature(p), signature(re)) <= 0.15
    tea, ten = (signature(sign(w, **STYLES["red"])) for w in ("TEA", "TEN"))
    assert block_difference(tea, ten) >= 0.6


def test_flat_colour_images_are_never_merged(tmp_path):
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    for c in ("red", "blue", "white"):
        (imgs / f"{c}.png").write_bytes(_png(Image.new("RGB", (300, 200), c)))
    m, dups, _ = _run(tmp_path, "  - stage: phash_dedup\n    confirm: false\n", "flat")
    assert dups == {} and m["low_information"] == 3


def test_keep_policy_largest_true_colour_and_first(tmp_path):
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    p = photo("astronaut")  # 512 x 512
    p.resize((640, 640)).convert("P", palette=Image.Palette.ADAPTIVE).save(imgs / "a_biggest.gif")
    (imgs / "b_small.jpg").write_bytes(resized_jpeg(p, scale=0.5))
    (imgs / "c_large.jpg").write_bytes(resized_jpeg(p, scale=1.0, quality=92))
    m, dups, _ = _run(tmp_path, "  - stage: phash_dedup\n    max_distances: [0, 2, 10]\n", "keep")
    assert dups == {"a_biggest.gif": "c_large.jpg", "b_small.jpg": "c_large.jpg"}
    assert m["kept_max_distance_6"] == 1
    kept = [m[f"kept_max_distance_{d}"] for d in (0, 2, 6, 10)]
    assert kept == sorted(kept, reverse=True)
    _, dups, _ = _run(tmp_path, "  - stage: phash_dedup\n    keep: first\n", "keepfirst")
    assert dups == {"b_small.jpg": "a_biggest.gif", "c_large.jpg": "a_biggest.gif"}


@pytest.mark.parametrize("bad", ["keep: newest", "confirm_threshold: 0"])
def test_bad_phash_fields_name_the_field(tmp_path, bad):
    from loupe.pipeline.errors import RecipeError

    (tmp_path / "imgs").mkdir()
    (tmp_path / "r.yaml").write_text(
        f"name: x\nsources: [{{type: local_folder, path: imgs}}]\nstages:\n  - stage: phash_dedup\n    {bad}\n"
    )
    with pytest.raises(RecipeError, match=rf"stages\[0\]\.{bad.split(':')[0]}"):
        load_recipe(tmp_path / "r.yaml")


def test_signature_is_normalised():
    s = signature(sign("EXIT"))
    assert s.shape == (64, 64) and abs(float(s.mean())) < 1e-3 and abs(float(s.std()) - 1) < 0.01
    assert np.isfinite(block_difference(s, s)) and block_difference(s, s) == 0
