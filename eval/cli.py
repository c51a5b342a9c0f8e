"""``loupe eval``: benchmark a model on one or more tasks, or measure a run's dataset quality.

Registered on the ``loupe`` app by ``pipeline/cli.py``; kept here so the command and its help live
beside the code they drive. Bad input is one line naming the option or file, exit code 2.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from loupe.schemas.errors import LoupeError

err = Console(stderr=True)
out = Console()

# Folder names tried under --data for each task when several tasks run at once: the task name, then
# the folder LLaVA's playground/data/eval layout uses (docs/evaluation.md).
DATA_DIRS = {
    "vqav2": ("vqav2",), "textvqa": ("textvqa",), "gqa": ("gqa", "gqa/data"), "pope": ("pope",),
    "mme": ("mme", "MME"), "seed": ("seed", "seed_bench"), "sqa": ("sqa", "scienceqa"), "mmbench": ("mmbench",),
    "vqa_jsonl": ("heldout.jsonl",),
}  # fmt: skip

EPILOG = (
    "Examples:\n\n"
    "  loupe eval --task textvqa --model ckpt/ --data ~/eval/textvqa\n\n"
    "  loupe eval --tasks textvqa,gqa,pope --model ckpt/ --data ~/eval   (one folder per task)\n\n"
    "  loupe eval --task gqa --data ~/eval/gqa --predictions out/predictions.jsonl   (re-score)\n\n"
    "  loupe eval --run runs/demo   (dataset-quality metrics of a Loupe run)\n\n"
    "Each task writes OUT/<model>/<task>/predictions.jsonl and scores.json; the results table "
    "puts the scores beside DenseFusion-7B and LLaVA-1.5-7B. See docs/evaluation.md."
)


def _fail(e: Exception) -> None:
    err.print(f"[red]error:[/red] {e}", highlight=False, markup=True, soft_wrap=True)
    raise typer.Exit(2)


def _task_data(name: str, data: Path, many: bool) -> Path:
    if not many:
        return data
    tried = [data / d for d in DATA_DIRS.get(name, (name,))]
    for p in tried:
        if p.exists():
            return p
    raise LoupeError(
        f"--data: no folder for task {name!r} under {data} (tried {', '.join(str(t) for t in tried)})"
    )


def eval_command(
    task: Optional[str] = typer.Option(
        None, "--task", help="One benchmark: vqav2, textvqa, gqa, pope, mme, seed, sqa, mmbench; or vqa_jsonl "
        "(--data a .jsonl of question_id, image, question, answer(s), e.g. loupe pipeline's held-out split)."
    ),
    tasks: Optional[str] = typer.Option(
        None, "--tasks", help="Several benchmarks, comma-separated; --data then holds one folder per task."
    ),
    model: Optional[Path] = typer.Option(
        None, "--model", help="Model folder: a HF LLaVA-style checkpoint or a `loupe train` output."
    ),
    data: Optional[Path] = typer.Option(
        None, "--data", help="The benchmark's files in their official layout (see docs/evaluation.md)."
    ),
    run: Optional[str] = typer.Option(
        None, "--run", help="A Loupe run (runs/<recipe> or its hash dir): print dataset-quality metrics."
    ),
    output: Path = typer.Option(
        Path("eval_results"), "--out", help="Folder for <model>/<task>/predictions.jsonl and scores.json."
    ),
    predictions: Optional[Path] = typer.Option(
        None, "--predictions", help="Score this predictions.jsonl instead of running a model (one --task)."
    ),
    policy: str = typer.Option(
        "greedy", help="greedy (LLaVA-1.5) or dualfocus (DualFocus two-view inference)."
    ),
    batch_size: int = typer.Option(8, help="Questions per model call (batched greedy generation)."),
    limit: Optional[int] = typer.Option(None, help="Only the first N questions of each task (smoke runs)."),
    max_new_tokens: int = typer.Option(
        128, help="Generation length cap (LLaVA's model_vqa_loader uses 128)."
    ),
    chat_format: str = typer.Option("vicuna_v1", help="Prompt template: vicuna_v1 (LLaVA-1.5) or llama3."),
    split: Optional[str] = typer.Option(
        None, help="vqav2: val2014 (default) or test-dev2015; sqa: test (default)."
    ),
    sqa_fallback: str = typer.Option(
        "wrong", help="sqa: unparsed answers are wrong (LLaVA-1.5) or a seeded random choice."
    ),
    device: Optional[str] = typer.Option(None, help="cpu, cuda, cuda:1 ... (default: cuda when available)."),
    format: str = typer.Option("table", "--format", "-f", help="--run output: table or json."),
) -> None:
    """Benchmark a model (LLaVA-1.5 prompts, faithful scorers) or measure a run's dataset quality."""
    try:
        if run is not None:
            _quality(run, format)
            return
        if policy not in ("greedy", "dualfocus"):
            raise LoupeError(f"--policy: {policy!r} is not known; valid: greedy, dualfocus")
        if sqa_fallback not in ("wrong", "random"):
            raise LoupeError(f"--sqa-fallback: {sqa_fallback!r} is not valid; valid: wrong, random")
        names = [t.strip() for t in (tasks or "").split(",") if t.strip()] or ([task] if task else [])
        if not names:
            raise LoupeError(
                "give --task NAME (or --tasks a,b,c) with --model and --data, or --run runs/<recipe>"
            )
        if data is None:
            raise LoupeError(
                "--data: the benchmark folder is required (the official annotation files and images)"
            )
        from loupe.eval.tasks import get_task

        opts = {"split": split, "fallback": sqa_fallback}
        many = len(names) > 1
        built = [get_task(n, _task_data(n, data.expanduser(), many), **opts) for n in names]
        if predictions is not None:
            if many:
                raise LoupeError("--predictions: score one --task at a time")
            from loupe.eval.runner import score_predictions

            s = score_predictions(built[0], predictions, limit)
            _say_missing(s)
            print(json.dumps(s, indent=2, default=str))
            return
        if model is None:
            raise LoupeError("--model: a model folder is required (or --predictions to re-score a file)")
        _run_tasks(built, model, output, policy, batch_size, limit, max_new_tokens, chat_format, device)
    except LoupeError as e:
        _fail(e)


def _say_missing(s: dict) -> None:
    if s.get("n_missing"):
        err.print(f"warning: {s['n_missing']} of {s['n_questions']} questions have no prediction; scored as wrong "
                  f"(e.g. {', '.join(map(str, s['missing_examples'][:3]))})")  # fmt: skip


def _run_tasks(built, model, output, policy, batch_size, limit, max_new_tokens, chat_format, device) -> None:
    from loupe.eval.model import load_vlm
    from loupe.eval.results import results_markdown, results_rows
    from loupe.eval.runner import run_task

    vlm = load_vlm(model, chat_format=chat_format, device=device)
    name = Path(model).expanduser().resolve().name
    root = output / name
    headline: dict[str, float | None] = {}
    for t in built:
        err.print(f"{t.name}: {t.data}")
        s = run_task(
            t, vlm, root / t.name, model_id=name, batch_size=batch_size, policy=policy, limit=limit,
            max_new_tokens=max_new_tokens,
            progress=lambda done, total, n=t.name: err.print(f"  {n}: {done}/{total}") if done == total or done % 200 == 0 else None,
        )  # fmt: skip
        _say_missing(s)
        headline[t.name] = s["score"]
        err.print(
            f"  {t.name}: {t.headline} = {s['score']}  ({s['questions_per_s']} questions/s) -> {root / t.name}"
        )
    header, rows = results_rows(headline, label=name)
    table = Table(title=f"{name} ({policy}) beside the published 7B models")
    for h in header:
        table.add_column(h, justify="left" if h == "model" else "right")
    for r in rows:
        table.add_row(*r)
    out.print(table)
    (root / "results.md").write_text(results_markdown(headline, label=name))
    (root / "results.json").write_text(
        json.dumps({"model": name, "policy": policy, "scores": headline}, indent=2)
    )
    out.print(f"results: {root / 'results.md'}")


def _quality(run_dir: str, format: str) -> None:
    from loupe.eval.quality import flatten, quality_metrics
    from loupe.pipeline.query import connect, resolve_run
    from loupe.pipeline.report.data import export_stats

    if format not in ("table", "json"):
        raise LoupeError(f"--format: {format!r} is not valid; valid: table, json")
    r = resolve_run(run_dir)
    con = connect(r)
    try:
        m = quality_metrics(con, stats=export_stats(r))
    finally:
        con.close()
    if format == "json":
        print(json.dumps(m, indent=2))
        return
    t = Table(title=f"dataset quality: {r.location}")
    t.add_column("metric")
    t.add_column("value", justify="right")
    for k, v in flatten(m):
        t.add_row(k, f"{v:.3f}" if isinstance(v, float) else str(v))
    out.print(t)
