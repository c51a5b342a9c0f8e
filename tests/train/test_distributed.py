"""The same training on 2 processes: torchrun (gloo, CPU) and Ray Train's TorchTrainer on a local cluster."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

TINY = Path(__file__).resolve().parents[2] / "train" / "configs" / "tiny_llava.yaml"


def _sets(out: Path) -> list[str]:
    return ["--set", f"train.output_dir={out}", "--set", "train.max_steps=2", "--set", "data.limit=8"]


@pytest.mark.slow
def test_torchrun_two_processes_train(demo_runs, tmp_path):
    out = tmp_path / "ddp"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "-m",
        "loupe.pipeline.cli",
        "train",
        str(TINY),
        "--data",
        str(demo_runs),
        *_sets(out),
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    s = json.loads((out / "train_summary.json").read_text())
    # 2 ranks x batch 2 x 2 steps = the 8 samples once: one epoch
    assert s["world_size"] == 2 and s["global_step"] == 2 and s["samples"] == 8
    log = [json.loads(x) for x in (out / "loss.jsonl").read_text().splitlines()]
    assert [x["step"] for x in log] == [1, 2] and log[-1]["epoch"] == 1.0
    assert (out / "model.safetensors").exists()


@pytest.mark.slow
@pytest.mark.ray
def test_ray_train_two_workers(demo_runs, tmp_path):
    """`loupe train --executor ray` on a private local Ray: 2 TorchTrainer workers, DDP over gloo."""
    from ray_helpers import private_ray
    from typer.testing import CliRunner

    from loupe.pipeline.cli import app

    out = tmp_path / "ray"
    args = [
        "train",
        str(TINY),
        "--executor",
        "ray",
        "--data",
        str(demo_runs),
        *_sets(out),
        "--set",
        "ray.num_workers=2",
        "--set",
        "ray.cpus_per_worker=0.5",
    ]
    with private_ray(__name__):  # the CLI joins this Ray instead of starting one
        r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output[-3000:]
    assert "ray: 2 worker(s)" in r.output and "trained 2 steps" in r.output
    s = json.loads((out / "train_summary.json").read_text())
    assert s["world_size"] == 2 and s["global_step"] == 2 and s["samples"] == 8
    assert (out / "model.safetensors").exists() and (out / "loss.jsonl").exists()
