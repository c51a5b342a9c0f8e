"""``loupe pipeline``: curate (``loupe run``) -> split -> train -> eval -> plot, resumable end to end.

Layout under the run dir (the curation's own ``runs/<recipe>/<lineage>/``)::

    loop/<loop-hash>/            hash of the recipe's train + eval sections (a new budget, a new folder)
      split/                     train.jsonl (loupe train's input), heldout.jsonl (loupe eval's
                                 vqa_jsonl task), heldout_images/, split.json
      <strategy>-seed<k>/        a loupe train output: checkpoint-<N>/, loss.jsonl, eval/step-<N>/
                                 (loupe eval's predictions and scores), done.json (loupe.pipeline.loop.jobs)
      summary.json               per strategy: mean/min/max/std held-out accuracy at each eval step
      accuracy.png               accuracy vs training steps, mean +- spread over seeds

Resume works like the curation stages': curation skips committed shards, the split is rewritten (a
pure function of the run), a finished training run (``done.json``) is skipped and an unfinished one
continues from its last Trainer checkpoint. ``manifest.json`` gets a ``pipeline`` entry per loop hash with
each run's status, checkpoint and scores, which ``loupe report`` shows.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from loupe.pipeline.errors import LoupeError
from loupe.pipeline.loop.jobs import check_configs
from loupe.pipeline.loop.split import make_split
from loupe.pipeline.rundir import RunDir, atomic_write_text
from loupe.schemas.recipe import EvalStep, Recipe, TrainStep

LOOP_VERSION = "2"  # 2: the bundled trainer (loupe train) and evaluator (loupe eval)
# relative training cost per step (measured on the default geometry): orders the jobs
COST = {"dragonfly": 10.0, "slime": 5.0, "s2": 3.5, "llava": 1.0}


def loop_hash(train: TrainStep, ev: EvalStep) -> str:
    blob = json.dumps(
        {
            "train": train.model_dump(mode="json", exclude={"threads", "workers"}),
            "eval": ev.model_dump(mode="json"),
            "v": LOOP_VERSION,
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:10]


def run_loop(run: RunDir, recipe: Recipe, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Split, train every (strategy, seed), aggregate and plot; returns the manifest's pipeline entry."""
    if recipe.train is None:
        raise LoupeError(
            f"recipe {recipe.name!r} has no `train` section: nothing for `loupe pipeline` to train"
        )
    tr, ev = recipe.train, recipe.eval or EvalStep()
    h = loop_hash(tr, ev)
    root = run.path / "loop" / h
    split = make_split(run, root / "split", tr.heldout, ev.question, ev.answer_field)
    log(f"split: {split['train']} training records, {split['heldout']} held-out images "
        f"(OCR answer = ground truth on {split['train_answers_equal_truth']:.1%} of training records)")  # fmt: skip
    entry: dict[str, Any] = {
        "loop_hash": h,
        "dir": str(root),
        "split": split,
        "runs": {},
        "status": "running",
    }
    _record(run, h, entry)
    check_configs(tr, root, root / "split" / "train.jsonl")
    jobs = []
    # the most expensive strategies first, so parallel workers finish together
    for strategy in sorted(tr.strategies, key=lambda s: -COST.get(s, 1)):
        for seed in tr.seeds:
            name = f"{strategy}-seed{seed}"
            args = (str(root / name), tr.model_dump(mode="json"), ev.model_dump(mode="json"), strategy, seed,
                    str(root / "split" / "train.jsonl"), str(root / "split" / "heldout.jsonl"), tr.threads)  # fmt: skip
            jobs.append((name, args))
    for name, _ in jobs:
        entry["runs"].setdefault(name, {"status": "queued"})
        if entry["runs"][name].get("status") != "complete":
            entry["runs"][name] = {"status": "running", "dir": str(root / name)}
    _record(run, h, entry)
    workers = min(len(jobs), tr.workers or _cpus())
    log(f"training {len(jobs)} runs ({', '.join(n for n, _ in jobs)}) on {workers} worker(s), "
        f"{tr.threads} torch thread(s) each")  # fmt: skip
    if workers == 1:
        for name, args in jobs:
            entry["runs"][name] = {"status": "complete", **train_job(*args)}
            _record(run, h, entry)
    else:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor, as_completed

        with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
            futures = {pool.submit(train_job, *args): name for name, args in jobs}
            for fut in as_completed(futures):
                entry["runs"][futures[fut]] = {"status": "complete", **fut.result()}
                _record(run, h, entry)
    summary = summarize(entry["runs"], tr.strategies)
    atomic_write_text(root / "summary.json", json.dumps(summary, indent=1))
    from loupe.pipeline.loop.plot import plot_curves

    plot_curves(
        summary, root / "accuracy.png", title=f"{recipe.name}: held-out {ev.scorer} ({len(tr.seeds)} seeds)"
    )
    entry.update(summary=summary, plot=str(root / "accuracy.png"), status="complete")
    _record(run, h, entry)
    return entry


def summarize(runs: dict[str, dict], strategies: list[str]) -> dict[str, Any]:
    """Per strategy and eval step: mean, std, min, max of held-out accuracy over seeds; final numbers."""
    out: dict[str, Any] = {}
    for s in strategies:
        recs = [r for n, r in runs.items() if n.startswith(f"{s}-seed") and r.get("status") == "complete"]
        if not recs:
            continue
        steps = sorted({p["step"] for r in recs for p in r["curve"]})
        curve = []
        for st in steps:
            vals = np.array([p["accuracy"] for r in recs for p in r["curve"] if p["step"] == st])
            curve.append({"step": st, "mean": round(float(vals.mean()), 4), "std": round(float(vals.std()), 4),
                          "min": round(float(vals.min()), 4), "max": round(float(vals.max()), 4), "n": len(vals)})  # fmt: skip
        finals = np.array([r["accuracy"] for r in recs])
        out[s] = {
            "curve": curve,
            "final_mean": round(float(finals.mean()), 4),
            "final_std": round(float(finals.std()), 4),
            "final_min": round(float(finals.min()), 4),
            "final_max": round(float(finals.max()), 4),
            "seeds": len(recs),
            "seconds": round(sum(r["seconds"] for r in recs), 1),
            "cpu_seconds": round(sum(r["cpu_seconds"] for r in recs), 1),
        }
    return out


def _record(run: RunDir, h: str, entry: dict[str, Any]) -> None:
    pipe = run.manifest().get("pipeline", {})
    pipe[h] = entry
    run.update_manifest(pipeline=pipe)


def _cpus() -> int:
    from loupe.experts.weights import usable_cpus

    return usable_cpus()


def _exit_with_parent(poll_s: float = 1.0) -> None:
    """In a worker process: exit as soon as the parent dies (a killed ``loupe pipeline`` must not leave
    workers training on, writing checkpoints a resumed run is about to write too)."""
    import threading

    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(poll_s)
            if os.getppid() != parent:
                os._exit(1)

    if parent != 1:
        threading.Thread(target=watch, daemon=True, name="exit-with-parent").start()


def train_job(
    out: str, tr: dict, ev: dict, strategy: str, seed: int, train: str, heldout: str, threads: int
) -> dict[str, Any]:
    """One (strategy, seed) run; top-level so a spawned worker process can run it."""
    import sys

    import torch

    from loupe.pipeline.loop.jobs import train_and_evaluate

    torch.set_num_threads(threads)
    _exit_with_parent()
    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    return train_and_evaluate(
        Path(out), TrainStep.model_validate(tr), EvalStep.model_validate(ev), strategy, seed,
        Path(train), Path(heldout), log=log,
    )  # fmt: skip


def cpu_seconds() -> float:
    """CPU seconds (user + system) of this process and of its finished child processes (the workers)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system
