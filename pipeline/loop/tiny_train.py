"""Train and evaluate one :mod:`~loupe.pipeline.loop.tiny_vlm` model, resumably (``train.backend: tiny``).

A run is one folder: ``checkpoint.pt`` (model, optimizer, step, seed, config, curve; written to a
temp name and renamed every ``save_every`` steps), ``curve.jsonl`` (held-out accuracy at each
evaluation step), ``loss.jsonl`` and ``done.json`` (written last: the completion record). The data
order of step ``t`` is a pure function of (seed, t), so a run killed at any point and resumed from its
checkpoint continues with the same batches it would have seen.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from loupe.pipeline.loop.tiny_vlm import TinyConfig, TinyVLM, cosine_lr, make_batch, prompt_ids

Scorer = Callable[[str, list[str]], float]


def load_images(paths: list[str]) -> torch.Tensor:
    """uint8 (N, 3, H, W); every image of the task has one size."""
    arrs = []
    for p in paths:
        with Image.open(p) as im:
            arrs.append(np.asarray(im.convert("RGB")))
    return torch.from_numpy(np.stack(arrs)).permute(0, 3, 1, 2).contiguous()


def batch_indices(n: int, batch: int, step: int, seed: int) -> list[int]:
    """Indices of step ``step``: consecutive slices of a per-epoch seeded permutation."""
    out = []
    pos = step * batch
    while len(out) < batch:
        epoch, off = divmod(pos, n)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
        take = min(batch - len(out), n - off)
        out += perm[off : off + take].tolist()
        pos += take
    return out


def _truncate_logs(out: Path, step: int) -> None:
    """Drop log lines written after the checkpoint a resumed run restarts from (they are redone)."""
    for name in ("loss.jsonl", "curve.jsonl"):
        p = out / name
        if p.exists():
            keep = [x for x in p.read_text().splitlines() if x.strip() and json.loads(x)["step"] <= step]
            p.write_text("".join(x + "\n" for x in keep))


def _atomic_save(obj: Any, path: Path) -> None:
    tmp = path.with_name(f".tmp-{path.name}")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def evaluate(
    model: TinyVLM,
    images: torch.Tensor,
    questions: list[str],
    answers: list[list[str]],
    scorer: Scorer,
    max_new_tokens: int,
    batch: int = 32,
) -> tuple[float, list[str]]:
    model.eval()
    preds: list[str] = []
    for i in range(0, len(questions), batch):
        x = images[i : i + batch].float() / 255
        prompts = [prompt_ids(q, model.cfg.max_text) for q in questions[i : i + batch]]
        preds += model.generate(x, prompts, max_new_tokens)
    model.train()
    scores = [scorer(p, a) for p, a in zip(preds, answers)]
    return (float(np.mean(scores)) if scores else 0.0), preds


def train_tiny(
    out: Path,
    cfg: TinyConfig,
    train: dict[str, list],
    heldout: dict[str, list],
    *,
    seed: int,
    steps: int,
    batch_size: int,
    lr: float,
    eval_every: int,
    save_every: int,
    scorer: Scorer,
    max_new_tokens: int = 8,
    log: Callable[[str], None] = print,
    stop_after: int | None = None,
) -> dict[str, Any]:
    """Train ``steps`` steps (resuming from ``out/checkpoint.pt``) and evaluate every ``eval_every``.

    ``train``: {"image": paths, "question": [...], "answer": [...]};
    ``heldout``: {"image": paths, "question": [...], "answers": [[gt, ...], ...]}.
    Returns the ``done.json`` record: curve, final accuracy, seconds, CPU seconds.
    ``stop_after``: return (without a completion record) once that step's checkpoint is written, as a
    kill right after it would (tests).
    """
    out.mkdir(parents=True, exist_ok=True)
    done = out / "done.json"
    if done.exists():
        return json.loads(done.read_text())
    torch.manual_seed(seed)
    model = TinyVLM(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0, betas=(0.9, 0.98))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: cosine_lr(s, steps))
    ckpt_path = out / "checkpoint.pt"
    state: dict[str, Any] = {"step": 0, "curve": [], "seconds": 0.0, "cpu_seconds": 0.0, "resumed_from": []}
    if ckpt_path.exists():
        ck = torch.load(ckpt_path, weights_only=False)
        if ck["config"] != asdict(cfg) or ck["seed"] != seed:
            raise ValueError(
                f"{ckpt_path}: checkpoint was written by another config or seed; delete the folder"
            )
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        sched.load_state_dict(ck["scheduler"])
        state = ck["state"]
        state["resumed_from"].append(state["step"])
        _truncate_logs(out, state["step"])
        log(f"resumed {out.name} at step {state['step']}")
    x_train = load_images(train["image"])
    x_held = load_images(heldout["image"])
    t0, c0 = time.time(), time.process_time()

    def clock() -> tuple[float, float]:
        return state["seconds"] + time.time() - t0, state["cpu_seconds"] + time.process_time() - c0

    def checkpoint() -> None:
        s, c = clock()
        _atomic_save(
            {"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
             "config": asdict(cfg), "seed": seed, "state": {**state, "seconds": s, "cpu_seconds": c}},
            ckpt_path,
        )  # fmt: skip

    def eval_point(step: int) -> None:
        acc, preds = evaluate(model, x_held, heldout["question"], heldout["answers"], scorer, max_new_tokens)
        s, c = clock()
        point = {"step": step, "accuracy": round(acc, 4), "seconds": round(s, 1), "cpu_seconds": round(c, 1)}
        state["curve"].append(point)
        with (out / "curve.jsonl").open("a") as f:
            f.write(json.dumps(point) + "\n")
        (out / "predictions.json").write_text(json.dumps(preds))
        log(f"{out.name}: step {step} held-out accuracy {acc:.3f}")

    model.train()
    n = len(train["answer"])
    if state["step"] == 0 and not state["curve"]:
        eval_point(0)
    while state["step"] < steps:
        step = state["step"]
        idx = batch_indices(n, batch_size, step, seed)
        x = x_train[idx].float() / 255
        ids, labels = make_batch(
            [train["question"][i] for i in idx], [train["answer"][i] for i in idx], cfg.max_text
        )
        loss = model(x, ids, labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        state["step"] = step + 1
        with (out / "loss.jsonl").open("a") as f:
            f.write(json.dumps({"step": step + 1, "loss": round(loss.item(), 5)}) + "\n")
        if state["step"] % eval_every == 0 or state["step"] == steps:
            eval_point(state["step"])
        if state["step"] % save_every == 0 or state["step"] == steps:
            checkpoint()
            if stop_after is not None and state["step"] >= stop_after:
                return {"stopped_at": state["step"]}
    s, c = clock()
    record = {
        "steps": steps,
        "seed": seed,
        "strategy": cfg.strategy,
        "curve": state["curve"],
        "accuracy": state["curve"][-1]["accuracy"] if state["curve"] else None,
        "seconds": round(s, 1),
        "cpu_seconds": round(c, 1),
        "resumed_from": state["resumed_from"],
        "checkpoint": str(ckpt_path),
        "parameters": sum(p.numel() for p in model.parameters()),
    }
    tmp = done.with_name(".tmp-done.json")
    tmp.write_text(json.dumps(record, indent=1))
    os.replace(tmp, done)
    return record
