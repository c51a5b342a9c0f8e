"""Helpers shared by the hardening tests: a fast recipe over the demo images and the real CLI."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "loupe.pipeline.cli"]

#: no model stages: exact dedup, deterministic captions, export (seconds, not minutes)
FAST_RECIPE = """\
name: fast
output: runs
sources:
  - type: local_folder
    name: demo
    path: images
stages:
  - stage: exact_dedup
  - stage: caption
    backend: composer
  - stage: export
    formats: [llama3_jsonl, llava_json]
"""


def fast_recipe(root: Path, text: str = FAST_RECIPE) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    if not (root / "images").exists():
        shutil.copytree(REPO / "recipes" / "demo_images", root / "images")
    p = root / "recipe.yaml"
    p.write_text(text)
    return p


def cli(*args: str, timeout: int = 300, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout, **kw)


def one_line_error(r: subprocess.CompletedProcess) -> str:
    """Assert ``r`` failed the way a user error must: exit 2, one line, no traceback. Returns it."""
    err = r.stderr.strip()
    assert r.returncode == 2, (r.returncode, r.stdout[-2000:], err[-3000:])
    lines = [ln for ln in err.splitlines() if not ln.startswith("warning:")]  # preflight may warn first
    assert "Traceback" not in err and len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def export_files(run_dir: Path) -> dict[str, bytes]:
    """Every file under export/ with its bytes (image names are uids, so equal runs compare equal)."""
    root = run_dir / "export"
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def run_recipe(recipe: Path, output: str | None = None):
    """Run ``recipe`` in-process with the local executor (quiet); returns the Plan."""
    from loupe.pipeline.executors.local import run_local
    from loupe.pipeline.executors.plan import make_plan
    from loupe.pipeline.recipe import load_recipe

    plan = make_plan(load_recipe(recipe), output)
    run_local(plan, quiet=True)
    return plan
