"""GPU check for the torch experts: EfficientNet-Lite0 embeddings/tags on CUDA vs CPU.

Runs standalone (only torch, numpy, pillow and the two efficientnet wheels needed), so it can be
carried to a bare GPU machine:  python benchmarks/bench_gpu.py --n 2048
Prints img/s per device and batch size, the CUDA/CPU ratio, and whether tags agree across devices.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from PIL import Image

DEMO = Path(__file__).resolve().parents[1] / "recipes" / "demo_images"


def images(n: int) -> list[Image.Image]:
    base = []
    for p in sorted(DEMO.iterdir()):
        if p.suffix.lower() in (".jpg", ".png"):
            try:
                base.append(Image.open(p).convert("RGB"))
            except OSError:
                pass
    return [base[i % len(base)] for i in range(n)]


def bench(device: str, imgs: list[Image.Image], batch: int) -> tuple[float, list[int]]:
    from loupe.experts.embed import EfficientNetLite0

    m = EfficientNetLite0(device=device)
    m.features_and_logits(imgs[:batch])  # warm-up (cuDNN autotune, allocator)
    t0 = time.perf_counter()
    top = []
    for i in range(0, len(imgs), batch):
        _, logits = m.features_and_logits(imgs[i : i + batch])
        top += logits.argmax(1).tolist()
    if device.startswith("cuda"):
        m.torch.cuda.synchronize()
    return len(imgs) / (time.perf_counter() - t0), top


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=1024)
    ap.add_argument("--batches", default="32,128,256")
    args = ap.parse_args()
    import torch

    imgs = images(args.n)
    print(f"torch {torch.__version__}, cuda={torch.cuda.is_available()}, cpus={torch.get_num_threads()}")
    if torch.cuda.is_available():
        print("gpu:", torch.cuda.get_device_name(0))
    cpu_rate, cpu_top = bench("cpu", imgs[: min(args.n, 256)], 32)
    print(f"cpu  batch 32: {cpu_rate:8.1f} img/s")
    if torch.cuda.is_available():
        one_rate, _ = bench("cuda", imgs[:256], 1)
        print(f"cuda per-image calls: {one_rate:8.1f} img/s")
        for b in (int(x) for x in args.batches.split(",")):
            rate, top = bench("cuda", imgs, b)
            agree = sum(a == c for a, c in zip(top, cpu_top)) / len(cpu_top)
            print(
                f"cuda batch {b}: {rate:8.1f} img/s  ({rate / one_rate:.1f}x per-image calls, "
                f"{rate / cpu_rate:.1f}x cpu; top-1 agreement {agree:.3f})"
            )


if __name__ == "__main__":
    main()
