"""``loupe train --executor ray``: the same training under Ray Train's ``TorchTrainer``.

Each Ray worker runs :func:`loupe.train.trainer.run_training` unchanged; Ray Train starts the torch
process group (gloo on CPU, NCCL on GPU) and sets ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``, so the
transformers ``Trainer`` inside runs DDP exactly as under ``torchrun``. Checkpoints, the loss log and
the final model go to ``train.output_dir`` (a path every worker can write: local for one node, a
shared filesystem for several). The caller connects to Ray first (``ray.init``); inside
``ray job submit`` that joins the job's cluster.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from loupe.train.config import LoadedTrainConfig, parse_train_config


def _worker(payload: dict[str, Any]) -> None:
    import ray.train

    from loupe.train.trainer import run_training

    loaded = parse_train_config(
        payload["raw"], payload["where"], Path(payload["path"]) if payload["path"] else None
    )
    summary = run_training(loaded, resume=payload["resume"], console=None)
    ray.train.report({k: v for k, v in summary.items() if isinstance(v, (int, float, str)) or v is None})


def run_ray_training(loaded: LoadedTrainConfig, resume: bool = False, console: Any = None) -> dict[str, Any]:
    """Run ``ray.num_workers`` training workers on the connected Ray cluster; returns rank 0's summary."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    rc = loaded.config.ray
    out = loaded.output_dir
    payload = {
        "raw": json.loads(loaded.config.model_dump_json()),
        "where": loaded.path.name if loaded.path else "config",
        "path": str(loaded.path) if loaded.path else None,
        "resume": resume,
    }
    # resolved absolute paths: workers may start in another working directory
    payload["raw"]["train"]["output_dir"] = str(out)
    payload["raw"]["data"]["path"] = (
        str(loaded.resolve(loaded.config.data.path)) if loaded.config.data.path else None
    )
    if console is not None:
        console.print(
            f"ray: {rc.num_workers} worker(s), use_gpu={rc.use_gpu} -> {out}",
            highlight=False,
            markup=False,
            soft_wrap=True,
        )
    trainer = TorchTrainer(
        _worker,
        train_loop_config=payload,
        torch_config=TorchConfig(backend="nccl" if rc.use_gpu else "gloo"),
        scaling_config=ScalingConfig(
            num_workers=rc.num_workers, use_gpu=rc.use_gpu, resources_per_worker={"CPU": rc.cpus_per_worker}
        ),
        run_config=RunConfig(name="ray", storage_path=str(out.parent / f"{out.name}_ray")),
    )
    result = trainer.fit()
    if result.error:
        raise RuntimeError(f"ray training failed: {result.error}")
    # rank 0 wrote the summary; Ray Train keeps reported metrics only with checkpoints
    return json.loads((out / "train_summary.json").read_text())
