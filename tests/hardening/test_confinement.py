"""Names and paths from a recipe or the CLI stay inside the run dir; nothing Loupe did not create is deleted."""

from __future__ import annotations

import pytest

from loupe.pipeline.errors import LoupeError, RecipeError
from loupe.pipeline.recipe import load_recipe
from loupe.pipeline.report import build_report
from loupe.pipeline.rundir import RunDir

from .common import cli, one_line_error

BASE = """\
name: t
sources:
  - type: {type}
    name: {name}
    path: src
stages:
  - stage: export
    image_dir: {image_dir}
"""

ESCAPES = ["../../outside", "/etc", "a/b", "..", ".", "a\\\\b", "x\\ty", "~root", "", "-rf"]


def _recipe(tmp_path, **kw):
    (tmp_path / "src").mkdir(exist_ok=True)
    (tmp_path / "src" / "urls.parquet").write_bytes(b"")
    fields = {"type": "local_folder", "name": "ok", "image_dir": "images", **kw}
    p = tmp_path / "r.yaml"
    p.write_text(BASE.format(**{k: f'"{v}"' if k != "type" else v for k, v in fields.items()}))
    return p


@pytest.mark.parametrize("kind", ["local_folder", "url_list"])
@pytest.mark.parametrize("name", ESCAPES)
def test_source_names_that_escape_are_refused(tmp_path, kind, name):
    with pytest.raises(RecipeError, match=r"sources\[0\]\.name"):
        load_recipe(_recipe(tmp_path, type=kind, name=name))


@pytest.mark.parametrize("image_dir", ["../../outside", "/tmp/x", "a/../../b", "~/x", "", "a\\\\b", "x\\ny"])
def test_export_image_dir_that_escapes_is_refused(tmp_path, image_dir):
    with pytest.raises(RecipeError, match=r"stages\[0\]\.image_dir"):
        load_recipe(_recipe(tmp_path, image_dir=image_dir))


def test_nested_relative_image_dir_is_fine(tmp_path):
    assert load_recipe(_recipe(tmp_path, image_dir="img/v1")).recipe.stages[0].image_dir == "img/v1"


def test_validate_cli_names_the_field(tmp_path):
    msg = one_line_error(cli("validate", str(_recipe(tmp_path, name="../../etc"))))
    assert "sources[0].name" in msg and "names a folder" in msg


def test_report_output_never_replaces_files_it_did_not_create(tmp_path):
    run = RunDir(tmp_path / "run")
    run.update_manifest(status="complete")
    precious = tmp_path / "home"
    (precious / "thumbs").mkdir(parents=True)
    (precious / "thumbs" / "holiday.jpg").write_bytes(b"keep me")
    with pytest.raises(LoupeError, match="did not create"):
        build_report(run, precious)
    assert (precious / "thumbs" / "holiday.jpg").read_bytes() == b"keep me"
    (tmp_path / "afile").write_text("x")
    msg = one_line_error(cli("report", str(run.path), "--output", str(tmp_path / "afile")))
    assert "is a file" in msg
    # a new folder is fine, and rebuilding a report Loupe wrote is fine too
    fresh = tmp_path / "fresh"
    assert build_report(run, fresh).exists() and build_report(run, fresh).exists()
    assert build_report(run).parent == run.path / "report"
