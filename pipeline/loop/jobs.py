"""One ``loupe pipeline`` training run: the bundled trainer, then the bundled evaluator on its checkpoints.

A (strategy, seed) run is one ``loupe train`` output folder::

    <strategy>-seed<k>/   loupe_train.yaml, tokenizer/, checkpoint-<N>/ (Trainer checkpoints, each
                          with its loupe_train.yaml), the final model, loss.jsonl, train.log,
                          eval/step-<N>/ (loupe eval's predictions.jsonl + scores.json), done.json

Training is :func:`loupe.train.trainer.run_training` on a config built from the recipe's ``train``
section (:func:`train_config`): a tiny random-init model (:mod:`loupe.train.tiny`), every parameter
trained, the ``tiny`` tokenizer (digits one per token) trained offline on the curated texts.
Evaluation is :func:`loupe.eval.runner.run_task` with the ``vqa_jsonl`` task on the held-out split,
on every ``eval_every``-th checkpoint and on the final model: held-out VQA accuracy vs training steps.

Resume: ``done.json`` (written last) marks a finished run, which is skipped; otherwise a folder with
``checkpoint-*`` resumes through the Trainer (model, optimizer, scheduler, RNG, data position), and a
checkpoint already scored (``eval/step-N/scores.json``) is not scored again.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
from pathlib import Path
from typing import Any

from loupe.pipeline.errors import LoupeError
from loupe.schemas.recipe import EvalStep, TrainStep

DONE = "done.json"
TIMING = "timing.json"


def train_config(tr: TrainStep, strategy: str, seed: int, data: Path, out: Path) -> dict[str, Any]:
    """The ``loupe train`` config (a dict, as the YAML would be) of one run."""
    from loupe.train.tiny import tiny_geometry

    towers = tiny_geometry(tr.base_resolution, tr.patch, tr.vit_width, tr.lm_width, tr.layers)
    return {
        "name": f"{strategy}-seed{seed}",
        "model": {
            "strategy": strategy,
            "vision": {"config": towers["vision"]},
            "llm": {"config": towers["llm"]},
            "tokenizer": "tiny",
            "options": tr.options.get(strategy, {}),
        },
        "data": {
            "path": str(data),
            "format": "llama3_jsonl",
            "template": "llama3",
            "max_length": tr.max_length,
            "verify_images": False,  # curation decoded every image already
        },
        "train": {
            "output_dir": str(out),
            "stage": "custom",
            "trainable": ["*"],  # from scratch: the towers too, not only projector + LLM
            "max_steps": tr.steps,
            "batch_size": tr.batch_size,
            "lr": tr.lr,
            "warmup_ratio": 0.03,
            "scheduler": "cosine",
            "precision": "fp32",
            "seed": seed,
            "save_steps": tr.save_every,
            "save_total_limit": None,  # every checkpoint is an accuracy-vs-steps point
            "extra_args": {"disable_tqdm": True},
        },
    }


def check_configs(tr: TrainStep, root: Path, train: Path) -> None:
    """Validate every run's ``loupe train`` config before any training starts (a bad
    ``train.options`` fails at once, naming the field, not in a worker minutes later)."""
    from loupe.train.config import ConfigError, parse_train_config

    for strategy in tr.strategies:
        try:
            parse_train_config(train_config(tr, strategy, tr.seeds[0], train, root), f"train ({strategy})")
        except ConfigError as e:
            raise LoupeError(str(e).replace("model.options.", f"train.options.{strategy}.")) from None


def _checkpoints(out: Path) -> dict[int, Path]:
    found = {}
    for p in out.glob("checkpoint-*"):
        m = re.fullmatch(r"checkpoint-(\d+)", p.name)
        if m and p.is_dir():
            found[int(m.group(1))] = p
    return found


def _timer(out: Path, base: dict[str, float]) -> Any:
    """A TrainerCallback writing wall and CPU seconds so far (earlier invocations included) at each save."""
    from transformers import TrainerCallback

    t0, c0 = time.time(), time.process_time()

    def now() -> dict[str, float]:
        return {
            "seconds": round(base["seconds"] + time.time() - t0, 2),
            "cpu_seconds": round(base["cpu_seconds"] + time.process_time() - c0, 2),
        }

    class Timer(TrainerCallback):
        def on_save(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            (out / TIMING).write_text(json.dumps({"step": state.global_step, **now()}))

    timer = Timer()
    timer.now = now  # type: ignore[attr-defined]
    return timer


def evaluate_checkpoint(model_dir: Path, heldout: Path, ev: EvalStep, out_dir: Path) -> dict[str, Any]:
    """``loupe eval --task vqa_jsonl --data heldout --model model_dir``, skipped when already scored."""
    scores = out_dir / "scores.json"
    if scores.is_file():
        return json.loads(scores.read_text())
    from loupe.eval.model import load_vlm
    from loupe.eval.runner import run_task
    from loupe.eval.tasks import get_task

    return run_task(
        get_task("vqa_jsonl", heldout),
        load_vlm(model_dir, device="cpu"),
        out_dir,
        model_id=str(model_dir),
        batch_size=16,
        max_new_tokens=ev.max_new_tokens,
    )


def train_and_evaluate(
    out: Path, tr: TrainStep, ev: EvalStep, strategy: str, seed: int, train: Path, heldout: Path,
    log: Any = print,
) -> dict[str, Any]:  # fmt: skip
    """Train (or resume, or skip) one run, score its checkpoints; returns the ``done.json`` record."""
    from loupe.train.config import ConfigError, parse_train_config
    from loupe.train.trainer import run_training

    done = out / DONE
    if done.is_file():
        return json.loads(done.read_text())
    out.mkdir(parents=True, exist_ok=True)
    name = out.name
    try:
        loaded = parse_train_config(train_config(tr, strategy, seed, train, out), f"train ({name})")
    except ConfigError as e:
        raise LoupeError(str(e)) from None
    ckpts = _checkpoints(out)
    resumed_at = max(ckpts) if ckpts else None
    base = {"seconds": 0.0, "cpu_seconds": 0.0}
    if resumed_at is not None:
        log(f"resumed {name} at step {resumed_at}")
        if (out / TIMING).is_file():
            base.update({k: v for k, v in json.loads((out / TIMING).read_text()).items() if k in base})
    prev = json.loads((out / "resumed.json").read_text()) if (out / "resumed.json").is_file() else []
    if resumed_at is not None:
        (out / "resumed.json").write_text(json.dumps(prev + [resumed_at]))
    timer = _timer(out, base)
    with (out / "train.log").open("a") as f, contextlib.redirect_stdout(f):
        try:
            summary = run_training(loaded, resume=resumed_at is not None, callbacks=[timer])
        except ConfigError as e:
            raise LoupeError(str(e)) from None
    train_time = timer.now()

    points = sorted(s for s in _checkpoints(out) if s % tr.eval_every == 0 and s < tr.steps)
    targets = [(s, _checkpoints(out)[s]) for s in points] + [(tr.steps, out)]
    curve = []
    e0, ec0 = time.time(), time.process_time()
    for step, model_dir in targets:
        sc = evaluate_checkpoint(model_dir, heldout, ev, out / "eval" / f"step-{step}")
        curve.append({"step": step, "accuracy": round(sc["accuracy"] / 100, 4)})
        log(f"{name}: step {step} held-out accuracy {sc['accuracy'] / 100:.3f}")
    preds = [
        json.loads(x)
        for x in (out / "eval" / f"step-{tr.steps}" / "predictions.jsonl").read_text().splitlines()
    ]
    record = {
        "strategy": strategy,
        "seed": seed,
        "steps": tr.steps,
        "curve": curve,
        "accuracy": curve[-1]["accuracy"],
        "final_loss": summary.get("last_loss"),
        "checkpoint": str(out),
        "checkpoints": {str(s): str(p) for s, p in sorted(_checkpoints(out).items())},
        "seconds": train_time["seconds"],
        "cpu_seconds": train_time["cpu_seconds"],
        "eval_seconds": round(time.time() - e0, 2),
        "eval_cpu_seconds": round(time.process_time() - ec0, 2),
        "resumed_from": prev + ([resumed_at] if resumed_at is not None else []),
        "answers": _answer_counts(p["text"] for p in preds),
    }
    tmp = done.with_name(".tmp-" + DONE)
    tmp.write_text(json.dumps(record, indent=1))
    os.replace(tmp, done)
    return record


def _answer_counts(texts: Any, top: int = 5) -> dict[str, int]:
    """The most frequent final answers (a model answering one constant string shows up here)."""
    from collections import Counter

    return dict(Counter(t or "" for t in texts).most_common(top))
