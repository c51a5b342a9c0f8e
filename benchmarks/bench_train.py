"""Training throughput: ``loupe train``'s loop vs a plain ``transformers.Trainer`` on the same model and data.

Both train the same tiny random-init ``llava`` model (train/configs/tiny_llava.yaml) on the same
tokenised samples (the demo images with synthetic captions, 576 image tokens each) for the same
number of steps; tokens/s counts the non-padding input tokens (image positions included) over the
wall time of ``Trainer.train()``. Runs alternate (ours, plain, ours, plain, ...) and the best of
each is kept, so a noisy shared box hurts both alike. Goal: ratio ≥ 0.95 (our callbacks, loss log
and resume-safe reload add no measurable cost).

    python benchmarks/bench_train.py --steps 20 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]


def synthetic_export(root: Path, n: int) -> Path:
    """conversations.jsonl over the bundled demo images, with simple captions (no OCR run needed)."""
    imgs = sorted(p for p in (REPO / "recipes" / "demo_images").iterdir() if p.suffix in (".jpg", ".png"))
    lines = []
    for i in range(n):
        img = imgs[i % len(imgs)]
        turns = [
            {"from": "human", "value": "Describe this image in detail."},
            {
                "from": "gpt",
                "value": f"Image {i}: {img.stem.replace('_', ' ')}, " + "a detailed caption " * 8,
            },
        ]
        lines.append(
            json.dumps({"image_url": str(img), "conversations": turns, "source": "bench", "uid": str(i)})
        )
    path = root / "conversations.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def run_ours(cfg_sets: list[str], out: Path) -> float:
    from loupe.train.config import load_train_config
    from loupe.train.trainer import run_training

    loaded = load_train_config(
        REPO / "train" / "configs" / "tiny_llava.yaml", [*cfg_sets, f"train.output_dir={out}"]
    )
    s = run_training(loaded)
    return s["tokens_seen"] / s["seconds"]


def run_plain(cfg_sets: list[str], out: Path) -> float:
    """The same pieces handed to an unmodified transformers Trainer (no callbacks, no Loupe loop)."""
    from transformers import Trainer, TrainingArguments, set_seed

    from loupe.train.config import load_train_config
    from loupe.train.dataset import Collator, TrainDataset
    from loupe.train.sources import read_samples
    from loupe.train.strategies import build_strategy
    from loupe.train.templates import load_template
    from loupe.train.tokenizer import build_tiny_tokenizer, prepare_tokenizer

    loaded = load_train_config(REPO / "train" / "configs" / "tiny_llava.yaml", cfg_sets)
    cfg = loaded.config
    set_seed(cfg.train.seed)
    samples = read_samples(cfg.data.path)
    from loupe.train.tiny import TINY_TEXTS

    tok = prepare_tokenizer(
        build_tiny_tokenizer(TINY_TEXTS + [t["value"] for s in samples.samples for t in s.turns])
    )
    strategy = build_strategy(cfg.model)
    ds = TrainDataset(samples, tok, strategy, load_template(loaded.template), cfg.data.max_length)
    model = strategy.build_model(tok)
    model.config.use_cache = False
    args = TrainingArguments(
        output_dir=str(out),
        per_device_train_batch_size=cfg.train.batch_size,
        learning_rate=loaded.lr,
        max_steps=cfg.train.max_steps,
        warmup_steps=0.03,
        lr_scheduler_type="cosine",
        logging_steps=1,
        save_strategy="steps",
        save_steps=cfg.train.save_steps,
        report_to="none",
        remove_unused_columns=False,
        use_cpu=True,
        seed=cfg.train.seed,
        include_num_input_tokens_seen="non_padding",
    )
    trainer = Trainer(
        model=model, args=args, train_dataset=ds, data_collator=Collator(tok.pad_token_id, strategy)
    )
    t0 = time.perf_counter()
    trainer.train()
    return trainer.state.num_input_tokens_seen / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=2)
    a = ap.parse_args()
    import torch

    torch.set_num_threads(max(1, (os.cpu_count() or 2)))
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        data = synthetic_export(root, a.steps * a.batch_size)
        # save_steps beyond max_steps: neither loop writes a checkpoint inside the timed run
        sets = [
            f"data.path={data}",
            f"train.max_steps={a.steps}",
            f"train.batch_size={a.batch_size}",
            f"train.save_steps={a.steps + 1}",
        ]
        ours, plain = [], []
        for r in range(a.repeats):
            ours.append(run_ours(sets, root / f"ours{r}"))
            plain.append(run_plain(sets, root / f"plain{r}"))
            print(f"repeat {r}: ours {ours[-1]:.0f} tok/s, plain Trainer {plain[-1]:.0f} tok/s", flush=True)
    best_o, best_p = max(ours), max(plain)
    print(
        json.dumps(
            {
                "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
                "steps": a.steps,
                "batch_size": a.batch_size,
                "ours_tokens_per_s": round(best_o, 1),
                "plain_trainer_tokens_per_s": round(best_p, 1),
                "ratio": round(best_o / best_p, 3),
                "all_ours": [round(x) for x in ours],
                "all_plain": [round(x) for x in plain],
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
