"""Recipe validation: malformed recipes give one-line errors naming the field, value and what is valid."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from loupe.pipeline.errors import RecipeError
from loupe.pipeline.recipe import lineage_hash, load_recipe, stage_ids
from loupe.schemas.recipe import Recipe

REPO = Path(__file__).resolve().parents[1]

GOOD = """
name: t
sources:
  - type: local_folder
    path: imgs
stages:
  - stage: exact_dedup
  - stage: ocr
    min_score: 0.6
"""


def _load(tmp_path: Path, text: str):
    (tmp_path / "imgs").mkdir(exist_ok=True)
    p = tmp_path / "r.yaml"
    p.write_text(text)
    return load_recipe(p)


def _error(tmp_path: Path, text: str) -> str:
    with pytest.raises(RecipeError) as e:
        _load(tmp_path, text)
    return str(e.value)


def test_good_recipe_loads(tmp_path):
    loaded = _load(tmp_path, GOOD)
    assert [s.stage for s in loaded.recipe.stages] == ["exact_dedup", "ocr"]
    assert loaded.recipe.stages[1].min_score == 0.6
    assert loaded.recipe.stages[1].batch_size == 32  # documented default


def test_unknown_stage(tmp_path):
    msg = _error(tmp_path, GOOD.replace("stage: ocr", "stage: orc"))
    assert msg == (
        "r.yaml: stages[1].stage: unknown stage 'orc'; valid: exact_dedup, phash, phash_dedup, resolution_filter, "
        "embed, semdedup, select, clip_score_filter, ocr, detect, tag, caption, export"
    )


def test_unknown_key_names_stage_and_valid_keys(tmp_path):
    msg = _error(tmp_path, GOOD.replace("min_score: 0.6", "min_scor: 0.6"))
    assert msg.startswith("r.yaml: stages[1].min_scor: unknown key 'min_scor'; valid keys: ")
    assert "min_score" in msg and "\n" not in msg


def test_wrong_type(tmp_path):
    msg = _error(tmp_path, GOOD.replace("min_score: 0.6", "min_score: high"))
    assert msg.startswith("r.yaml: stages[1].min_score: Input should be a valid number")
    assert '(got "high")' in msg


def test_out_of_range_value(tmp_path):
    msg = _error(tmp_path, GOOD.replace("min_score: 0.6", "min_score: 3"))
    assert "stages[1].min_score" in msg and "less than or equal to 1" in msg and "(got 3)" in msg


def test_missing_input_path(tmp_path):
    msg = _error(tmp_path, GOOD.replace("path: imgs", "path: nowhere"))
    assert msg.startswith("r.yaml: sources[0].path: 'nowhere' does not exist (resolved to ")


def test_missing_required_field(tmp_path):
    msg = _error(tmp_path, GOOD.replace("name: t\n", ""))
    assert msg == "r.yaml: name: required field is missing"


def test_unknown_source_type(tmp_path):
    msg = _error(tmp_path, GOOD.replace("type: local_folder", "type: s3_bucket"))
    assert msg.startswith("r.yaml: sources[0].type: unknown source type 's3_bucket'; valid: local_folder")


def test_bad_yaml_names_line(tmp_path):
    msg = _error(tmp_path, "name: t\nsources: [\n")
    assert msg.startswith("r.yaml: not valid YAML at line")


def test_not_a_mapping(tmp_path):
    assert "must be a YAML mapping" in _error(tmp_path, "- just\n- a list\n")


def test_bad_name(tmp_path):
    msg = _error(tmp_path, GOOD.replace("name: t", "name: 'a b/c'"))
    assert msg.startswith("r.yaml: name: Value error, use letters")


def test_several_errors_one_line_each(tmp_path):
    text = GOOD.replace("min_score: 0.6", "min_score: x\n    colour: red")
    lines = _error(tmp_path, text).splitlines()
    assert len(lines) == 2
    assert any("stages[1].colour: unknown key" in ln for ln in lines)
    assert any("stages[1].min_score" in ln for ln in lines)


def test_missing_recipe_file(tmp_path):
    with pytest.raises(RecipeError, match="does not exist"):
        load_recipe(tmp_path / "nope.yaml")


def test_lineage_hash_stable_and_sensitive(tmp_path):
    a = lineage_hash(_load(tmp_path, GOOD))
    assert a == lineage_hash(
        _load(tmp_path, GOOD + "description: other words\n")
    )  # description is not lineage
    assert a != lineage_hash(_load(tmp_path, GOOD.replace("0.6", "0.7")))


def test_repeated_stage_is_an_error(tmp_path):
    msg = _error(tmp_path, GOOD + "  - stage: ocr\n    min_score: 0.6\n")
    assert "stages[2] repeats stages[1] ('ocr' with the same settings)" in msg, msg
    # a repeat with other settings is a second stage (DenseFusion: closed- and open-set detection)
    assert stage_ids(_load(tmp_path, GOOD + "  - stage: ocr\n").recipe) == ["exact_dedup", "ocr", "ocr_2"]


@pytest.mark.parametrize("path", sorted((REPO / "recipes").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_recipe_validates(path):
    recipe = Recipe.model_validate(yaml.safe_load(path.read_text()))
    assert recipe.sources and recipe.name


def test_unknown_prompt_template(tmp_path):
    msg = _error(tmp_path, GOOD + "  - stage: caption\n    prompt_template: densefusion_v9\n")
    assert msg == "r.yaml: stages[2].prompt_template: 'densefusion_v9' is not a template; valid: densefusion_engine, densefusion_gpt4v, loupe_v1"
