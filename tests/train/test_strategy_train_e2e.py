"""`loupe train` with each multi-view strategy's tiny config on the demo export: a step, a saved model
that loads back through the strategy and generates through ``load_for_inference`` (the shipped
configs are validated in test_train_config.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from loupe.pipeline.cli import app
from loupe.train.inference import load_for_inference

CONFIGS = Path(__file__).resolve().parents[2] / "train" / "configs"
STRATEGIES = ["s2", "dragonfly", "slime", "mg_llava"]


@pytest.mark.slow
@pytest.mark.parametrize("name", STRATEGIES)
def test_trains_saves_and_reloads(name, demo_runs, tmp_path):
    from safetensors.torch import load_file

    from loupe.train.config import load_train_config
    from loupe.train.strategies import build_strategy

    out = tmp_path / name
    sets = [f"train.output_dir={out}", "train.max_steps=1", "train.save_steps=1", "data.limit=2"]
    args = ["train", str(CONFIGS / f"tiny_{name}.yaml"), "--data", str(demo_runs)]
    r = CliRunner().invoke(app, args + [a for s in sets for a in ("--set", s)])
    assert r.exit_code == 0, r.output[-3000:]
    assert "trained 1 steps" in r.output and "2 samples" in r.output
    loaded = load_train_config(CONFIGS / f"tiny_{name}.yaml")
    model = build_strategy(loaded.config.model, loaded.dir).load_model(out)
    saved = load_file(str(out / "model.safetensors"))
    assert set(saved) == set(model.state_dict())
    assert all(torch.equal(saved[k], v) for k, v in model.state_dict().items())
    # the eval entry point rebuilds it from loupe_train.yaml and generates
    bundle = load_for_inference(out)
    image = next(demo_runs.glob("*/export/images/*"))
    with Image.open(image) as im:
        inputs = bundle.inputs(im.convert("RGB"), "What is in the image?")
    gen = bundle.model.generate(**inputs, max_new_tokens=3, min_new_tokens=3, do_sample=False)
    assert gen.shape[1] == inputs["input_ids"].shape[1] + 3
    assert isinstance(bundle.decode(gen, inputs), str)
