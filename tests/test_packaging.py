"""The wheel installs the top-level dirs under the ``loupe.*`` namespace (non-editable install)."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_maps_dirs_to_loupe_namespace(tmp_path):
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(REPO),
        ],
        check=True,
    )
    (wheel,) = tmp_path.glob("loupe-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for must in (
        "loupe/pipeline/__init__.py",
        "loupe/pipeline/cli.py",
        "loupe/schemas/tables.py",
        "loupe/experts/base.py",
        "loupe/recipes/demo.yaml",
        "loupe/recipes/demo_images/chelsea.jpg",
        # data files the code reads at run time
        "loupe/pipeline/stages/fuse/templates/densefusion_gpt4v.txt",
        "loupe/pipeline/report/templates/train.html.j2",
        "loupe/pipeline/report/templates/pipeline.html.j2",
        "loupe/pipeline/report/templates/report.html.j2",
        "loupe/pipeline/report/templates/report.js",
        "loupe/experts/vocab/tags.txt",
        "loupe/experts/vocab/imagenet.tsv",
    ):
        assert must in names
    assert not any(n.startswith(("pipeline/", "schemas/", "tests/")) for n in names)
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)],
        check=True,
    )
    # -S: no site-packages, so the editable install of this checkout cannot answer the import
    code = f"import sys; sys.path.insert(0, {str(target)!r}); import loupe.pipeline, loupe.schemas; print(loupe.pipeline.__file__)"
    out = subprocess.run(
        [sys.executable, "-S", "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip().startswith(str(target))
