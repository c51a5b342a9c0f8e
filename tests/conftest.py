"""Shared fixtures. Tests run offline: nothing may download weights or touch outside hosts."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

for _k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "YOLO_OFFLINE"):
    os.environ.setdefault(_k, "1")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

REPO = Path(__file__).resolve().parents[1]
DEMO_IMAGES = REPO / "recipes" / "demo_images"


@pytest.fixture
def demo_images(tmp_path: Path) -> Path:
    """A private copy of the bundled demo images."""
    dst = tmp_path / "demo_images"
    shutil.copytree(DEMO_IMAGES, dst)
    return dst


def write_recipe(tmp_path: Path, text: str, name: str = "recipe.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


@contextmanager
def private_ray(test_module: str) -> Iterator[object]:
    """A private in-process Ray (2 CPUs) in a short temp dir, torn down afterwards.

    ``test_module`` (the caller's ``__name__``) is pickled by value: Ray workers cannot import test files.
    """
    import ray
    import ray.cloudpickle

    from loupe.pipeline.executors.ray import connect

    # Ray's unix socket paths must stay under 107 characters: a short private temp dir
    d = tempfile.mkdtemp(prefix="lray", dir="/tmp")
    saved = {k: os.environ.get(k) for k in ("RAY_TMPDIR", "RAY_ADDRESS")}
    os.environ["RAY_TMPDIR"] = d
    os.environ.pop("RAY_ADDRESS", None)
    ray.cloudpickle.register_pickle_by_value(sys.modules[test_module])
    try:
        connect(None, quiet=True, num_cpus=2)
        yield ray
    finally:
        ray.shutdown()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        shutil.rmtree(d, ignore_errors=True)
