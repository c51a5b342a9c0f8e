"""Docs that are generated must be current; the README's commands must exist."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

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
