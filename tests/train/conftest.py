"""A demo run (the shipped recipe, offline) shared by the training tests of one session."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def demo_runs(tmp_path_factory) -> Path:
    """``<tmp>/runs/demo``: the demo recipe's runs folder after one complete run."""
    from typer.testing import CliRunner

    from loupe.pipeline.cli import app

    root = tmp_path_factory.mktemp("train_demo")
    shutil.copytree(REPO / "recipes" / "demo_images", root / "demo_images")
    text = (REPO / "recipes" / "demo.yaml").read_text().replace("output: ../runs", "output: runs")
    (root / "demo.yaml").write_text(text)
    r = CliRunner().invoke(app, ["run", str(root / "demo.yaml"), "-q"])
    assert r.exit_code == 0, r.output[-2000:]
    return root / "runs" / "demo"
