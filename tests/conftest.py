"""Shared fixtures. Tests run offline: nothing may download weights or touch outside hosts."""

from __future__ import annotations

import os
import shutil
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


from ray_helpers import private_ray  # noqa: E402,F401  (re-exported for older imports)


@pytest.fixture(autouse=True)
def _pil_open_unpatched():
    """Tests that import ultralytics directly must not leave its ``Image.open`` patch to later tests."""
    yield
    from loupe.experts.detect import unpatch_pil_open

    unpatch_pil_open()
