"""`loupe train` end to end on the demo run's export: steps on CPU, checkpoint, exact resume, HF load."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from loupe.pipeline.cli import app

TINY_CONFIG = Path(__file__).resolve().parents[2] / "train" / "configs" / "tiny_llava.yaml"

runner = CliRunner()


def _train(*args: str):
    return runner.invoke(app, ["train", str(TINY_CONFIG), *args])


def _losses(out: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in map(json.loads, (out / "loss.jsonl").read_text().splitlines())}


def test_config_errors_are_one_line_naming_the_field(tmp_path):
    r = _train("--set", "model.strategy=clip_only")
    assert r.exit_code == 2
    assert (
        "tiny_llava.yaml: model.strategy: 'clip_only' is not a strategy; valid: llava, s2, dragonfly, slime, mg_llava"
        in r.output
    )
    r = _train("--set", "train.learning_rate=1")
    assert (
        r.exit_code == 2
        and "train.learning_rate: unknown key 'learning_rate'; valid keys: output_dir" in r.output
    )
    r = _train("--set", "train.output_dir=" + str(tmp_path / "o"))
    assert r.exit_code == 2 and "data.path: required (or pass --data runs/<recipe>)" in r.output
    r = _train("--data", str(tmp_path / "nope"), "--set", "train.output_dir=" + str(tmp_path / "o"))
    assert r.exit_code == 2 and "does not exist" in r.output
    r = _train("--set", "novalue")
    assert r.exit_code == 2 and "--set 'novalue': expected key=value" in r.output
    r = _train("--set", "model.vision.path=x")
    assert (
        r.exit_code == 2
        and "model.vision: give exactly one of path (pretrained) or config (random init)" in r.output
    )
    assert "Traceback" not in r.output


@pytest.mark.slow
def test_trains_on_demo_export_checkpoints_and_resumes_exactly(demo_runs, tmp_path):
    import torch
    from transformers import LlavaForConditionalGeneration

    out = tmp_path / "tiny"
    common = [
        "--data",
        str(demo_runs),
        "--set",
        f"train.output_dir={out}",
        "--set",
        "train.max_steps=4",
        "--set",
        "train.save_steps=2",
        "--set",
        "data.limit=8",
    ]
    r = _train(*common)
    assert r.exit_code == 0, r.output[-3000:]
    assert "trained 4 steps" in r.output and "(llama3_jsonl): 8 samples" in r.output
    full = _losses(out)
    assert sorted(full) == [1, 2, 3, 4]
    assert (out / "checkpoint-2" / "optimizer.pt").exists() and (out / "loss.png").stat().st_size > 1000
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["global_step"] == 4 and summary["tokens_seen"] > 0

    # a second run into the same output_dir without --resume is refused (one run dir, one flag)
    r = _train(*common)
    assert r.exit_code == 2 and "pass --resume to continue it" in r.output

    # "kill" after checkpoint-2: drop what came later, resume, compare with the uninterrupted run
    shutil.rmtree(out / "checkpoint-4")
    (out / "model.safetensors").unlink()
    r = _train(*common, "--resume")
    assert r.exit_code == 0, r.output[-3000:]
    resumed = _losses(out)
    assert sorted(resumed) == [1, 2, 3, 4]
    assert resumed[3] == pytest.approx(full[3], abs=1e-6) and resumed[4] == pytest.approx(full[4], abs=1e-6)

    # the final folder is a plain HF Llava checkpoint: loads without Loupe and generates
    from transformers import AutoTokenizer

    model = LlavaForConditionalGeneration.from_pretrained(out).eval()
    tok = AutoTokenizer.from_pretrained(out)
    ids = tok("<s>" + "<image>" * 576 + "Describe", add_special_tokens=False, return_tensors="pt")
    with torch.no_grad():
        gen = model.generate(
            **ids,
            pixel_values=torch.zeros(1, 3, 336, 336),
            max_new_tokens=3,
            min_new_tokens=3,
            do_sample=False,
        )
    assert gen.shape[1] == ids["input_ids"].shape[1] + 3

    # and through Loupe's one entry point for every strategy (what eval/ uses)
    from PIL import Image

    from loupe.train.inference import load_for_inference

    bundle = load_for_inference(out)
    assert bundle.template.name == "llama3" and bundle.strategy.name == "llava"
    inputs = bundle.inputs(Image.new("RGB", (64, 48), (9, 9, 9)), "What is it?")
    assert (inputs["input_ids"] == model.config.image_token_id).sum() == 576
    with torch.no_grad():
        gen = bundle.model.generate(**inputs, max_new_tokens=2, min_new_tokens=2, do_sample=False)
    assert isinstance(bundle.decode(gen, inputs), str) and gen.shape[1] == inputs["input_ids"].shape[1] + 2

    # `loupe report` on a training output: summary, embedded loss plot, config
    r = runner.invoke(app, ["report", str(out)])
    assert r.exit_code == 0, r.output
    page = (out / "report" / "index.html").read_text()
    assert "Loupe training · tiny_llava" in page and "data:image/png;base64," in page and "llama3" in page


@pytest.mark.slow
def test_bad_records_are_skipped_and_counted(tmp_path, demo_runs):
    from loupe.pipeline.query import resolve_run

    export = resolve_run(demo_runs).path / "export"
    good = [json.loads(x) for x in (export / "conversations.jsonl").read_text().splitlines()[:3]]
    for g in good:
        g["image_url"] = str(export / g["image_url"])
    turns = good[0]["conversations"]
    bad = [
        {"image_url": good[0]["image_url"], "text": "no conversations here"},
        {"image_url": str(tmp_path / "gone.png"), "conversations": turns, "source": "x"},
        {
            "image_url": good[0]["image_url"],
            "conversations": [turns[0], {"from": "gpt", "value": " "}],
            "source": "x",
        },
        {
            "image_url": None,
            "conversations": [{"from": "human", "value": "2+2?"}, {"from": "gpt", "value": "4"}],
            "source": "text",
        },
    ]
    data = tmp_path / "mixed.jsonl"
    data.write_text("".join(json.dumps(x) + "\n" for x in good + bad) + "{not json\n")
    out = tmp_path / "o"
    r = _train("--data", str(data), "--set", f"train.output_dir={out}", "--set", "train.max_steps=1")
    assert r.exit_code == 0, r.output[-3000:]
    assert "4 samples" in r.output  # 3 good + the text-only one
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["skipped"] == {"not a conversation": 2, "missing image": 1, "empty turn": 1}
    assert "skipped 1: missing image (e.g. mixed.jsonl:5:" in r.output


@pytest.mark.slow
def test_pretrain_then_finetune_presets(demo_runs, tmp_path):
    """pretrain trains only the projector on plain 2-turn pairs; finetune starts from its output."""
    import yaml
    from safetensors.torch import load_file
    from transformers import LlavaForConditionalGeneration

    pre, ft = tmp_path / "pre", tmp_path / "ft"
    r = _train(
        "--data",
        str(demo_runs),
        "--set",
        f"train.output_dir={pre}",
        "--set",
        "train.stage=pretrain",
        "--set",
        "data.template=null",
        "--set",
        "train.lr=null",
        "--set",
        "train.max_steps=2",
        "--set",
        "train.save_steps=1",
        "--set",
        "data.limit=6",
    )
    assert r.exit_code == 0, r.output[-3000:]
    assert "template plain" in r.output and "(model.multi_modal_projector.*)" in r.output
    before = LlavaForConditionalGeneration.from_pretrained(pre / "checkpoint-1").state_dict()
    after = LlavaForConditionalGeneration.from_pretrained(pre).state_dict()
    changed = {k for k in after if not (after[k] == before[k]).all()}
    assert changed and all(k.startswith("model.multi_modal_projector.") for k in changed)
    meta = yaml.safe_load((pre / "loupe_train.yaml").read_text())
    assert (meta["lr"], meta["template"]) == (1e-3, "plain")

    r = _train(
        "--data",
        str(demo_runs),
        "--set",
        f"train.output_dir={ft}",
        "--set",
        f"model.init_from={pre}",
        "--set",
        "train.max_steps=1",
        "--set",
        "data.limit=4",
    )
    assert r.exit_code == 0, r.output[-3000:]
    assert "(model.multi_modal_projector.*, model.language_model.*, lm_head.*)" in r.output
    # it began from the pre-aligned weights: its one step is warm-up step 0 (lr 0), so nothing moved
    start, end = load_file(str(pre / "model.safetensors")), load_file(str(ft / "model.safetensors"))
    assert start.keys() == end.keys() and all((start[k] == end[k]).all() for k in start)
    assert (pre / "tokenizer.json").read_text() == (ft / "tokenizer.json").read_text()
