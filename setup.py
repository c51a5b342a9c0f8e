"""Map the top-level dirs (schemas/, pipeline/, ...) to the ``loupe.*`` namespace.

pyproject.toml holds all metadata; this file only computes the package list, because
setuptools' ``packages.find`` cannot rename ``pipeline.x`` to ``loupe.pipeline.x``.
"""

from pathlib import Path

from setuptools import setup

TOP = ("schemas", "pipeline", "experts", "recipes", "train", "eval")
here = Path(__file__).parent
packages = sorted(
    "loupe." + ".".join(p.parent.relative_to(here).parts)
    for top in TOP
    for p in (here / top).rglob("__init__.py")
    if ".venv" not in p.parts and "__pycache__" not in p.parts
)
setup(packages=packages, package_dir={f"loupe.{t}": t for t in TOP})
