"""Every shipped training config validates; presets, --set and the generated reference are right."""

from __future__ import annotations

from pathlib import Path

import pytest

from loupe.train.config import ConfigError, apply_overrides, load_train_config, parse_train_config

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "train" / "configs").glob("*.yaml"))
DOC = Path(__file__).resolve().parents[2] / "docs" / "train_config.md"


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_configs_validate(path):
    loaded = load_train_config(path)
    assert loaded.config.name == path.stem


def test_presets_fill_what_is_unset():
    pre = parse_train_config({"name": "a", "train": {"stage": "pretrain"}})
    assert (pre.template, pre.lr) == ("plain", 1e-3)
    ft = parse_train_config({"name": "a", "data": {"template": "vicuna_v1"}, "train": {"lr": 1e-4}})
    assert (ft.template, ft.lr) == ("vicuna_v1", 1e-4)
    assert ft.config.train.warmup_ratio == 0.03 and ft.config.train.scheduler == "cosine"


def test_llava_presets_train_the_right_parameters():
    from loupe.train.strategies import build_strategy
    from loupe.train.strategies.base import trainable_names
    from loupe.train.tiny import tiny_model_config, tiny_tokenizer

    s = build_strategy(tiny_model_config())
    names = [n for n, _ in s.build_model(tiny_tokenizer()).named_parameters()]
    pre = trainable_names(names, s.trainable_presets["pretrain"])
    assert pre and all(n.startswith("model.multi_modal_projector.") for n in pre)
    ft = trainable_names(names, s.trainable_presets["finetune"])
    assert pre < ft and "lm_head.weight" in ft and not any("vision_tower" in n for n in ft)
    assert not trainable_names(names, s.trainable_presets["finetune"], ["*layers.0.*", "lm_head.*"]) & {
        "lm_head.weight",
        "model.language_model.layers.0.mlp.up_proj.weight",
    }


def test_set_overrides_parse_yaml_values():
    raw = apply_overrides(
        {"name": "x", "train": {"lr": 1}},
        ["train.lr=3e-4", "data.limit=5", "model.options={}", "train.trainable=[a, b]", "data.system=null"],
    )
    assert raw["train"] == {"lr": 3e-4, "trainable": ["a", "b"]} and raw["data"] == {
        "limit": 5,
        "system": None,
    }


def test_errors_name_every_field_at_once():
    with pytest.raises(ConfigError) as e:
        parse_train_config(
            {
                "name": "x",
                "model": {"strategy": "nope", "projektor": 1},
                "train": {"batch_size": 0, "stage": "custom"},
            },
            "c.yaml",
        )
    lines = str(e.value).splitlines()
    assert (
        "c.yaml: model.strategy: 'nope' is not a strategy; valid: llava, s2, dragonfly, slime, mg_llava"
        in lines
    )
    assert any(
        x.startswith("c.yaml: model.projektor: unknown key 'projektor'; valid keys: strategy, vision")
        for x in lines
    )
    assert any(
        x.startswith("c.yaml: train.batch_size: Input should be greater than or equal to 1") for x in lines
    )
    with pytest.raises(ConfigError, match="train.trainable: required with train.stage custom"):
        parse_train_config({"name": "x", "train": {"stage": "custom"}})
    with pytest.raises(ConfigError, match="model.tokenizer: required when model.llm is random-init"):
        parse_train_config({"name": "x", "model": {"llm": {"config": {}}}})


def test_reference_doc_is_current_and_schema_exports():
    from loupe.pipeline.train_config_docs import render
    from loupe.schemas.train import TrainConfig

    assert DOC.read_text() == render(), (
        "run: python -m loupe.pipeline.train_config_docs > docs/train_config.md"
    )
    schema = TrainConfig.model_json_schema()
    assert schema["required"] == ["name"] and "ModelConfig" in schema["$defs"]
