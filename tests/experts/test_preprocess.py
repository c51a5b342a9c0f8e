"""Cheaper preprocessing (draft-mode JPEG decode) and one-thread torch workers (issue 19)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from loupe.experts.threads import OneThreadWorkers, ray_assigned_cpus, worker_cpus
from loupe.pipeline.images import decode

DEMO = Path(__file__).resolve().parents[2] / "recipes" / "demo_images"
PHOTOS = ("chelsea.jpg", "coffee.jpg", "grass.jpg", "motorcycle_right.jpg", "astronaut.jpg", "rocket.jpg")


def big_jpeg(name: str, short: int = 1024) -> bytes:
    """A demo photo upscaled to a LAION-like size, re-encoded as JPEG."""
    im = Image.open(DEMO / name).convert("RGB")
    s = short / min(im.size)
    buf = io.BytesIO()
    im.resize((round(im.width * s), round(im.height * s)), Image.Resampling.BICUBIC).save(
        buf, "JPEG", quality=90
    )
    return buf.getvalue()


def test_draft_decode_keeps_both_sides_at_least_the_asked_size():
    data = big_jpeg("coffee.jpg")
    full, fast = decode(data), decode(data, draft_size=384)
    assert min(full.size) == 1024 and 384 <= min(fast.size) < 1024  # libjpeg scaled it down (1/2)
    assert fast.mode == "RGB"
    png = io.BytesIO()
    Image.open(DEMO / "exit_sign.png").save(png, "PNG")
    assert (
        decode(png.getvalue(), draft_size=32).size == decode(png.getvalue()).size
    )  # only JPEGs have a draft mode


@pytest.fixture(scope="module")
def lite():
    from loupe.experts.embed import EfficientNetLite0

    return EfficientNetLite0(device="cpu")


def test_fast_preprocess_embeddings_stay_within_cosine_098_of_exact(lite):
    datas = [big_jpeg(n) for n in PHOTOS]
    exact = lite.embed_images([decode(d) for d in datas])
    fast = lite.embed_images([decode(d, draft_size=lite.draft_size) for d in datas])
    cos = (exact * fast).sum(axis=1)
    assert cos.min() >= 0.98, dict(zip(PHOTOS, cos.round(4)))


def test_one_thread_workers_keep_order_and_restore_torch_threads(lite):
    import torch

    before = torch.get_num_threads()
    seen = []
    pool = OneThreadWorkers(2)
    out = pool.map(lambda x: seen.append(torch.get_num_threads()) or x * 2, list(range(7)))
    assert out == [0, 2, 4, 6, 8, 10, 12] and set(seen) == {1}
    assert torch.get_num_threads() == before
    pool.close()
    # several one-thread workers give the same vectors as one call with torch's own threads
    images = [decode(big_jpeg(n, 300)) for n in PHOTOS]
    lite.workers, saved = OneThreadWorkers(1), lite.workers
    one = lite.embed_images(images)
    lite.workers = saved
    assert np.allclose(one, lite.embed_images(images), atol=1e-4)


def test_worker_cpus_outside_ray_is_the_affinity():
    assert ray_assigned_cpus() is None
    assert worker_cpus() >= 1


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_ray_actors_get_one_torch_worker_per_assigned_cpu():
    from ray_helpers import private_ray

    with private_ray(__name__) as ray:

        @ray.remote
        class Probe:
            def cpus(self) -> int:
                from loupe.experts.threads import worker_cpus

                return worker_cpus()

        one = Probe.options(num_cpus=1).remote()
        assert ray.get(one.cpus.remote()) == 1
        ray.kill(one)
        two = Probe.options(num_cpus=2).remote()
        assert ray.get(two.cpus.remote()) == min(2, worker_cpus())
