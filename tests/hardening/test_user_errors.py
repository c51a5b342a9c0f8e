"""Every user error is one line on stderr and exit status 2: never a traceback."""

from __future__ import annotations

import os

import pytest

from loupe.pipeline.rundir import RunDir

from .common import cli, fast_recipe, one_line_error


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    run = RunDir(tmp_path_factory.mktemp("r") / "run")
    run.update_manifest(status="complete")
    return run.path


def test_report_max_samples_negative(run_dir):
    assert "--max-samples: -5 must be >= 0" in one_line_error(
        cli("report", str(run_dir), "--max-samples", "-5")
    )


def test_query_unknown_format(run_dir):
    msg = one_line_error(cli("query", str(run_dir), "SELECT 1", "--format", "xml"))
    assert "--format: 'xml'" in msg and "table, csv, json" in msg


RECIPE_ERRORS = {
    "duplicate key": (
        "name: a\nname: b\nsources: [{type: local_folder, path: images}]\n",
        "duplicate key 'name'",
    ),
    "repeated stage": (
        "name: a\nsources: [{type: local_folder, path: images}]\nstages: [{stage: exact_dedup}, {stage: exact_dedup}]\n",
        "repeats stages[0] ('exact_dedup' with the same settings)",
    ),
    "no extensions": (
        "name: a\nsources: [{type: local_folder, path: images, extensions: []}]\n",
        "extensions",
    ),
    "bad extension": ("name: a\nsources: [{type: local_folder, path: images, extensions: [jpg]}]\n", "'jpg'"),
    "batch size": (
        "name: a\nsources: [{type: local_folder, path: images}]\nstages: [{stage: exact_dedup, batch_size: 0}]\n",
        "batch_size",
    ),
    "huge batch": (
        "name: a\nsources: [{type: local_folder, path: images}]\nstages: [{stage: exact_dedup, batch_size: 10000000000}]\n",
        "batch_size",
    ),
    "epsilons": (
        "name: a\nsources: [{type: local_folder, path: images}]\nstages: [{stage: semdedup, epsilons: [0.1, 1.5]}]\n",
        "epsilons[1]",
    ),
    "epsilon": (
        "name: a\nsources: [{type: local_folder, path: images}]\nstages: [{stage: semdedup, epsilon: -0.1}]\n",
        "epsilon",
    ),
    "pixel budget": (
        "name: a\nsources: [{type: local_folder, path: images}]\nlimits: {max_image_pixels: 0}\n",
        "max_image_pixels",
    ),
    "same source twice": (
        "name: a\nsources: [{type: local_folder, path: images}, {type: local_folder, path: images}]\n",
        "repeats sources[0]",
    ),
}


@pytest.mark.parametrize("case", sorted(RECIPE_ERRORS))
def test_recipe_errors_caught_by_validate(tmp_path, case):
    from loupe.pipeline.errors import RecipeError
    from loupe.pipeline.recipe import load_recipe

    text, expect = RECIPE_ERRORS[case]
    recipe = fast_recipe(tmp_path, text)
    with pytest.raises(RecipeError) as e:  # what `loupe validate` prints after "error: "
        load_recipe(recipe)
    msg = str(e.value)
    assert expect in msg and len(msg.splitlines()) == 1, msg


def test_recipe_error_through_the_cli(tmp_path):
    recipe = fast_recipe(tmp_path, RECIPE_ERRORS["epsilons"][0])
    assert "epsilons[1]" in one_line_error(cli("validate", str(recipe)))


def test_non_utf8_recipe(tmp_path):
    recipe = fast_recipe(tmp_path, "name: a\n")
    recipe.write_bytes(b"name: caf\xe9\nsources: []\n")
    assert "not UTF-8" in one_line_error(cli("validate", str(recipe)))


def test_output_naming_a_file(tmp_path):
    recipe = fast_recipe(tmp_path)
    (tmp_path / "runs").write_text("I am a file")
    assert "is not a folder" in one_line_error(cli("validate", str(recipe)))
    (tmp_path / "runs").unlink()
    (tmp_path / "other").write_text("x")
    assert "--output" in one_line_error(cli("run", str(recipe), "-q", "--output", str(tmp_path / "other")))


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions")
def test_read_only_output_names_the_path(tmp_path):
    recipe = fast_recipe(tmp_path)
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        msg = one_line_error(cli("run", str(recipe), "-q", "--output", str(ro)))
        assert str(ro) in msg
    finally:
        ro.chmod(0o700)


def test_full_disk_during_commit_names_the_path(tmp_path, monkeypatch):
    import errno

    import pyarrow.parquet as pq

    from loupe.pipeline.errors import LoupeError
    from loupe.schemas.tables import drops_table

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pq, "write_table", full)
    run = RunDir(tmp_path / "run")
    with pytest.raises(LoupeError, match="no space left on the device; free space and rerun") as e:
        run.commit("f", None, None, drops_table([{"uid": "x", "stage": "f", "reason": "r"}]), ["x"])
    assert str(run.path / "drops") in str(e.value)
    assert not [p for p in run.path.rglob("*") if p.is_file()]  # no temp file left behind


def test_non_utf8_url_list_rows_become_drops_naming_file_and_row(tmp_path):
    from loupe.pipeline.stage import StageContext
    from loupe.pipeline.stages.ingest.url_list import UrlList
    from loupe.schemas.recipe import UrlListSource

    (tmp_path / "u.csv").write_bytes(
        b"url,caption\nhttp://10.0.0.1/a.jpg,ok\nhttp://10.0.0.2/\xff\xfe.jpg,caf\xe9\n"
    )
    cfg = UrlListSource(type="url_list", name="web", path="u.csv", input_format="csv")
    src = UrlList(cfg, StageContext(run=None, recipe_dir=tmp_path, stage_name="ingest"))
    drops = [d for o in src.read(set()) for d in o.drops.to_pylist()]
    by_reason = {d["reason"]: d["detail"] for d in drops}
    assert by_reason["invalid_url"] == "u.csv row 1: 'url' is not UTF-8 text"
    assert "10.0.0.1" in by_reason["ssrf_refused"]  # the valid row is judged as usual


def test_non_utf8_file_name_becomes_a_drop_row(tmp_path):
    import io

    from PIL import Image

    from .common import run_recipe

    recipe = fast_recipe(
        tmp_path, "name: n\noutput: runs\nsources:\n  - {type: local_folder, name: d, path: imgs}\n"
    )
    (tmp_path / "imgs").mkdir()
    buf = io.BytesIO()
    Image.new("RGB", (20, 20), (9, 9, 9)).save(buf, format="PNG")
    (tmp_path / "imgs" / "good.png").write_bytes(buf.getvalue())
    with open(os.path.join(os.fsencode(tmp_path / "imgs"), b"caf\xe9.png"), "wb") as f:
        f.write(buf.getvalue())
    plan = run_recipe(recipe)
    drops = plan.run.read_table("drops").to_pylist()
    assert [(d["reason"], d["detail"]) for d in drops] == [
        ("invalid_file_name", "caf\\xe9.png: the file name is not valid UTF-8; rename the file")
    ]
    assert plan.run.read_table("samples")["source_id"].to_pylist() == ["good.png"]
