"""Docs that are generated must be current; the README's commands must exist."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from loupe.pipeline.recipe_docs import render

REPO = Path(__file__).resolve().parents[1]


def test_recipe_reference_is_current():
    committed = (REPO / "recipes" / "README.md").read_text()
    assert committed == render(), (
        "recipes/README.md is stale: python -m loupe.pipeline.recipe_docs > recipes/README.md"
    )


def test_every_recipe_field_is_documented():
    from loupe.schemas import recipe as R

    for model in (R.Recipe, R.Resources, R.LocalFolderSource, R.UrlListSource, R.SmrSource, R.OcrConfig):
        for name, f in model.model_fields.items():
            if name not in ("type", "stage", "sources", "stages", "executor"):
                assert f.description, f"{model.__name__}.{name} has no description"


def test_ci_runs_the_readme_test_command():
    readme = (REPO / "README.md").read_text()
    assert "bash scripts/test.sh" in readme
    assert "bash scripts/test.sh" in (REPO / ".ci" / "run").read_text()


def test_cli_help_lists_commands():
    r = subprocess.run([sys.executable, "-m", "loupe.pipeline.cli", "--help"], capture_output=True, text=True)
    assert r.returncode == 0
    for cmd in ("run", "validate", "query", "report", "schema"):
        assert cmd in r.stdout


# ------------------------------------------------------------------ every YAML block in docs/*.md
# A block either passes preflight and runs (on two demo images), or fails in preflight with the
# message the docs promise in an HTML comment right after it: <!-- preflight: <message> -->
FENCE = re.compile(r"^```yaml\n(.*?)^```\n(?:\s*<!-- preflight: (.*?) -->)?", re.S | re.M)


def _doc_blocks() -> list[tuple[str, str, str | None]]:
    out = []
    for md in sorted((REPO / "docs").glob("*.md")):
        for n, m in enumerate(FENCE.finditer(md.read_text()), 1):
            out.append((f"{md.name}#{n}", m.group(1), m.group(2)))
    return out


def _as_recipe(block: str, images: Path) -> dict:
    data = yaml.safe_load(block)
    if isinstance(data, list):  # a bare list of stage entries
        data = {"stages": data}
    data.setdefault("name", "docs")
    data.setdefault("sources", [{"type": "local_folder", "name": "demo", "path": str(images)}])
    data["output"] = str(images.parent / "runs")
    return data


@pytest.mark.parametrize("where, block, promise", _doc_blocks(), ids=[b[0] for b in _doc_blocks()])
def test_docs_yaml_block_runs_or_fails_in_preflight_as_promised(tmp_path, where, block, promise, monkeypatch):
    from loupe.pipeline.executors.local import run_local
    from loupe.pipeline.executors.plan import make_plan
    from loupe.pipeline.preflight import preflight
    from loupe.pipeline.recipe import load_recipe

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("YOLO_OFFLINE", "1")
    images = tmp_path / "images"
    images.mkdir()
    for name in ("exit_sign.png", "horse.jpg"):
        shutil.copy(REPO / "recipes" / "demo_images" / name, images / name)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(_as_recipe(block, images)))
    loaded = load_recipe(recipe)
    errors = "\n".join(str(p) for p in preflight(loaded) if p.error)
    if promise:
        assert promise in errors, f"{where}: docs promise {promise!r}; preflight said {errors or 'nothing'!r}"
        return
    assert not errors, f"{where}: preflight failed but the docs promise no error: {errors}"
    metrics = run_local(make_plan(loaded), quiet=True)
    assert metrics["ingest"]["rows_out"] == 2 and make_plan(loaded).run.manifest()["status"] == "complete"
