"""Regenerate recipes/demo_images/ (committed) from scikit-image's bundled sample data.

Real photos come from scikit-image's data folder (public domain / CC0, see LICENSES.md there);
text images are drawn with matplotlib's bundled DejaVu/STIX fonts (free licences). A few exact
duplicates and one truncated JPEG are planted so the demo shows dedup and drops.
Run: python scripts/make_demo_images.py
"""

from __future__ import annotations

import shutil
from pathlib import Path

import matplotlib
import skimage
from PIL import Image, ImageDraw, ImageFont

OUT = Path(__file__).resolve().parents[1] / "recipes" / "demo_images"
SK = Path(skimage.__file__).parent / "data"
FONTS = Path(matplotlib.get_data_path()) / "fonts" / "ttf"

PHOTOS = {
    "astronaut.png": "Portrait of astronaut Eileen Collins in an orange flight suit in front of the US flag.",
    "brick.png": "Close-up of a grey brick wall texture.",
    "camera.png": "Black and white photo of a man standing with a camera on a tripod.",
    "cell.png": "Microscope image of a cell.",
    "chelsea.png": "Chelsea the tabby cat looking to the side.",
    "clock_motion.png": "Motion-blurred photo of a wall clock.",
    "coffee.png": "A cup of coffee on a saucer with a spoon, seen from above.",
    "coins.png": "Greek coins from Pompeii on a dark background.",
    "color.png": "A rainbow colour gradient test image.",
    "grass.png": "Green grass texture.",
    "gravel.png": "Grey gravel stones texture.",
    "horse.png": "Silhouette of a running horse.",
    "hubble_deep_field.jpg": "The Hubble Deep Field: hundreds of distant galaxies.",
    "ihc.png": "Immunohistochemistry stained tissue sample.",
    "logo.png": "The scikit-image logo: a snake on a grid.",
    "moon.png": "Surface of the moon with craters.",
    "motorcycle_left.png": "A motorcycle photographed in a studio, left view of a stereo pair.",
    "motorcycle_right.png": "A motorcycle photographed in a studio, right view of a stereo pair.",
    "page.png": "A scanned page of printed text.",
    "retina.jpg": "Fundus photograph of a human retina.",
    "rocket.jpg": "A SpaceX rocket on the launch pad.",
    "text.png": "Street signs with painted text.",
    "microaneurysms.png": "Retinal image showing microaneurysms.",
}

TEXTS = [
    ("sign_open.png", "OPEN 24 HOURS", "DejaVuSans-Bold.ttf", 64, "white", "darkred"),
    ("menu_board.png", "COFFEE 3 EUROS\nTEA 2 EUROS", "DejaVuSerif.ttf", 48, "black", "beige"),
    ("exit_sign.png", "EXIT", "DejaVuSans-Bold.ttf", 96, "white", "darkgreen"),
    ("poster_loupe.png", "LOUPE DATA\nPIPELINE 2026", "DejaVuSansMono-Bold.ttf", 52, "navy", "white"),
    ("street_name.png", "MAIN STREET", "DejaVuSans.ttf", 60, "white", "steelblue"),
    ("warning_label.png", "CAUTION\nWET FLOOR", "DejaVuSans-Bold.ttf", 60, "black", "gold"),
    ("book_cover.png", "THE GARDEN\nOF ATOMS", "DejaVuSerif-Bold.ttf", 56, "maroon", "ivory"),
    ("receipt.png", "TOTAL 42.50\nTHANK YOU", "DejaVuSansMono.ttf", 44, "black", "whitesmoke"),
    ("banner_sale.png", "SUMMER SALE", "STIXGeneralBol.ttf", 72, "white", "purple"),
    ("label_fragile.png", "FRAGILE\nHANDLE WITH CARE", "DejaVuSans-Bold.ttf", 46, "red", "white"),
]

DUPLICATES = {
    "chelsea_copy.jpg": "chelsea.jpg",
    "coffee_again.jpg": "coffee.jpg",
    "exit_sign_dup.png": "exit_sign.png",
}


def main() -> None:
    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir(parents=True)
    for name, alt in PHOTOS.items():
        img = Image.open(SK / name).convert("RGB")
        img.thumbnail((640, 640))
        stem = Path(name).stem
        target = OUT / (f"{stem}.jpg" if name != "page.png" and name != "text.png" else f"{stem}.png")
        img.save(target, quality=88) if target.suffix == ".jpg" else img.save(target)
        target.with_suffix(".txt").write_text(alt + "\n")
    for name, text, font, size, fg, bg in TEXTS:
        f = ImageFont.truetype(str(FONTS / font), size)
        probe = ImageDraw.Draw(Image.new("RGB", (10, 10)))
        x0, y0, x1, y1 = probe.multiline_textbbox((0, 0), text, font=f, spacing=18)
        img = Image.new("RGB", (x1 - x0 + 120, y1 - y0 + 120), bg)
        ImageDraw.Draw(img).multiline_text((60 - x0, 60 - y0), text, font=f, fill=fg, spacing=18)
        img.save(OUT / name)
        (OUT / name).with_suffix(".txt").write_text(f"A {bg} sign with {fg} lettering.\n")
    for dup, orig in DUPLICATES.items():
        shutil.copyfile(OUT / orig, OUT / dup)
    data = (OUT / "rocket.jpg").read_bytes()
    (OUT / "broken_upload.jpg").write_bytes(data[: len(data) // 3])  # truncated JPEG: a corrupt file
    (OUT / "LICENSES.md").write_text(
        "# Demo images\n\nPhotos: scikit-image sample data (skimage/data), public domain or CC0 as listed in\n"
        "scikit-image's `skimage/data/README.txt`. Text images: drawn by scripts/make_demo_images.py with\n"
        "matplotlib's bundled DejaVu (Bitstream Vera licence) and STIX (OFL) fonts. `*_copy`, `*_again`,\n"
        "`*_dup` files are planted exact duplicates; `broken_upload.jpg` is a truncated JPEG.\n"
    )
    print(f"wrote {len(list(OUT.glob('*')))} files to {OUT}")


if __name__ == "__main__":
    main()
