"""Throughput of the offline visual experts: one batched ``predict`` call vs one call per image.

    python benchmarks/bench_experts.py [--n 32] [--seconds 0] [--device cpu]

Images: real photos shipped in scikit-image (cat, astronaut, coffee, rocket, ...) and rendered text
pages, so OCR sees both text-free photos and 10-line pages. Prints a markdown table (img/s, ratio).
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import subprocess
import tempfile
import time
from collections.abc import Callable

os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("YOLO_CONFIG_DIR", tempfile.mkdtemp(prefix="loupe-yolo-"))

from PIL import Image, ImageDraw, ImageFont  # noqa: E402

WORDS = "market river orange window garden silver planet coffee yellow morning station museum bridge".split()


def photos(n: int) -> list[Image.Image]:
    from skimage import data

    names = ["chelsea", "astronaut", "coffee", "rocket", "camera", "horse", "coins", "page"]
    base = [Image.fromarray(getattr(data, k)()).convert("RGB") for k in names]
    return [base[i % len(base)] for i in range(n)]


def text_pages(n: int, size: tuple[int, int] = (640, 360)) -> list[Image.Image]:
    out = []
    for i in range(n):
        rng = random.Random(i)
        img = Image.new("RGB", size, "white")
        d = ImageDraw.Draw(img)
        font = ImageFont.load_default(size=rng.choice([16, 22, 28]))
        for y in range(10, size[1] - 30, 34):
            d.text((10, y), " ".join(rng.sample(WORDS, 4)), fill="black", font=font)
        out.append(img)
    return out


def rate(fn: Callable[[], object], n_images: int, min_seconds: float) -> float:
    fn()  # warm-up (lazy model loading, allocator)
    t0, runs = time.perf_counter(), 0
    while True:
        fn()
        runs += 1
        el = time.perf_counter() - t0
        if el >= min_seconds:
            return runs * n_images / el


def compare(
    name: str, predict: Callable[[list[Image.Image]], object], images: list[Image.Image], secs: float
):
    batched = rate(lambda: predict(images), len(images), secs)
    single = rate(lambda: [predict([im]) for im in images], len(images), secs)
    return f"| {name} | {len(images)} | {single:.1f} | {batched:.1f} | {batched / single:.2f}x |"


def machine() -> str:
    try:
        cpu = next(
            line.split(":", 1)[1].strip()
            for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines()
            if line.startswith("Model name")
        )
    except Exception:
        cpu = platform.processor() or "unknown CPU"
    import torch

    return f"{cpu}, {len(os.sched_getaffinity(0))} cores, torch {torch.__version__} ({torch.get_num_threads()} threads)"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=32, help="images per batch")
    ap.add_argument("--seconds", type=float, default=0.0, help="minimum timed seconds per measurement")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--only", nargs="*", default=["ocr", "tags", "embed", "yolo"])
    a = ap.parse_args()
    print(f"machine: {machine()}\n")
    print("| expert | batch | per-image calls, img/s | one batched call, img/s | ratio |")
    print("|---|---|---|---|---|")
    if "ocr" in a.only:
        from loupe.experts.ocr import RapidOcr

        for workers in (1, None):
            ocr = RapidOcr(workers=workers)
            tag = f"rapidocr PP-OCRv6 ({ocr.workers} worker{'s' * (ocr.workers > 1)})"
            print(compare(f"{tag}, photos", ocr.predict, photos(a.n // 2), a.seconds), flush=True)
            print(
                compare(f"{tag}, 10-line text pages", ocr.predict, text_pages(a.n // 2), a.seconds),
                flush=True,
            )
    if "tags" in a.only or "embed" in a.only:
        from loupe.experts.embed import EfficientNetLite0
        from loupe.experts.tags import EfficientNetTagger

        lite = EfficientNetLite0(device=a.device)
        if "tags" in a.only:
            tagger = EfficientNetTagger(backbone=lite)
            print(compare(f"tags EfficientNet-Lite0 ({lite.device})", tagger.predict, photos(a.n), a.seconds))
        if "embed" in a.only:
            print(
                compare(
                    f"embed EfficientNet-Lite0 ({lite.device})", lite.embed_images, photos(a.n), a.seconds
                )
            )
    if "clip" in a.only:
        # open_clip ViT-B-32 with random weights saved as a local-dir: same compute as a trained one
        import json
        from pathlib import Path

        import open_clip
        import torch

        from loupe.experts.embed import OpenClip

        folder = Path(tempfile.mkdtemp(prefix="loupe-clip-"))
        cfg = open_clip.get_model_config("ViT-B-32")
        torch.save(open_clip.create_model("ViT-B-32").state_dict(), folder / "open_clip_pytorch_model.bin")
        (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg}))
        clip = OpenClip(str(folder), None, device=a.device)
        print(compare(f"embed open_clip ViT-B-32 ({clip.device})", clip.embed_images, photos(a.n), a.seconds))
    if "yolo" in a.only:
        from loupe.experts.detect import YoloDetector

        # yolov8n architecture with random weights: same compute as the released yolov8n.pt
        yolo = YoloDetector("yolov8n.yaml", min_score=0.25, device=a.device)
        print(
            compare(f"detect YOLOv8n 640 ({yolo.device})", yolo.predict, photos(a.n), a.seconds), flush=True
        )


if __name__ == "__main__":
    main()
