"""``loupe train``: build tokenizer, data, strategy model; let ``transformers.Trainer`` run the loop.

Read top to bottom: setup (tokenizer -> samples -> dataset -> model -> freeze) -> ``Trainer.train``
-> save (final model + tokenizer + ``loupe_train.yaml``) -> loss plot. The Trainer owns
checkpointing (model, optimizer, scheduler, RNG states, step), exact resume (it skips the batches
already seen in the interrupted epoch), gradient accumulation, mixed precision, DDP under
``torchrun`` (gloo on CPU) and DeepSpeed/FSDP (``train.deepspeed`` / ``train.fsdp`` passed through).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import yaml

from loupe.train.config import ConfigError, LoadedTrainConfig
from loupe.train.strategies.base import trainable_names

CONFIG_FILE = "loupe_train.yaml"
LOSS_LOG = "loss.jsonl"


def _rank0() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def _say(console: Any, msg: str) -> None:
    if console is not None and _rank0():
        console.print(msg, highlight=False, markup=False, soft_wrap=True)


def build_tokenizer(loaded: LoadedTrainConfig, samples: Any, out: Path, resume: bool = False) -> Any:
    from loupe.train.tokenizer import build_tiny_tokenizer, load_tokenizer, prepare_tokenizer

    m = loaded.config.model
    if m.init_from and m.tokenizer in (None, "tiny"):
        # continuing a trained model (pretrain -> finetune): its vocabulary, <image> id included
        return load_tokenizer(loaded.resolve(m.init_from))
    if m.tokenizer == "tiny":
        saved = out / "tokenizer"
        if resume and (saved / "tokenizer.json").exists():
            return load_tokenizer(saved)
        # every DDP rank trains the same (deterministic) tokenizer; only rank 0 writes it
        texts = [t["value"] for s in samples.samples for t in s.turns]
        from loupe.train.tiny import TINY_TEXTS

        tok = prepare_tokenizer(build_tiny_tokenizer(TINY_TEXTS + texts))
        if _rank0():
            tok.save_pretrained(saved)
        return tok
    src = m.tokenizer or m.llm.path
    p = loaded.resolve(src)
    try:
        return load_tokenizer(p if p.exists() else src)
    except OSError as e:
        raise ConfigError(f"model.tokenizer: cannot load {src!r} ({str(e).splitlines()[0]})") from None


def freeze(model: Any, patterns: list[str] | tuple[str, ...], frozen: list[str]) -> tuple[int, int]:
    """Train only parameters matching ``patterns`` (and no ``frozen`` pattern); returns (trained, total)."""
    names = [n for n, _ in model.named_parameters()]
    keep = trainable_names(names, patterns, frozen)
    if not keep:
        raise ConfigError(
            f"train.trainable: no parameter matches {list(patterns)}; names look like {names[0]!r}, {names[-1]!r}"
        )
    trained = total = 0
    for n, p in model.named_parameters():
        p.requires_grad_(n in keep)
        total += p.numel()
        trained += p.numel() if n in keep else 0
    return trained, total


def training_arguments(loaded: LoadedTrainConfig, out: Path, has_text_only: bool) -> Any:
    import torch
    from transformers import TrainingArguments

    t = loaded.config.train
    cuda = torch.cuda.is_available()
    precision = t.precision if cuda or t.precision != "fp16" else "fp32"
    kw: dict[str, Any] = dict(
        output_dir=str(out),
        per_device_train_batch_size=t.batch_size,
        gradient_accumulation_steps=t.grad_accum,
        learning_rate=loaded.lr,
        weight_decay=t.weight_decay,
        warmup_steps=t.warmup_ratio,  # a float in [0, 1) is a ratio of the total steps
        lr_scheduler_type=t.scheduler,
        max_grad_norm=t.max_grad_norm,
        num_train_epochs=t.epochs,
        max_steps=t.max_steps or -1,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        logging_steps=t.logging_steps,
        save_strategy="steps",
        save_steps=t.save_steps,
        save_total_limit=t.save_total_limit,
        seed=t.seed,
        data_seed=t.seed,
        dataloader_num_workers=t.dataloader_workers,
        remove_unused_columns=False,  # the collator's image keys are the strategy's, not the model signature's
        report_to="none",
        include_num_input_tokens_seen="non_padding",
        use_cpu=not cuda,
        ddp_backend=None if cuda or int(os.environ.get("WORLD_SIZE", "1")) == 1 else "gloo",
        # a text-only batch leaves the projector without gradient on that rank
        ddp_find_unused_parameters=has_text_only,
    )
    if t.gradient_checkpointing:
        kw["activation_checkpointing"] = True
    if t.deepspeed:
        kw["deepspeed"] = str(loaded.resolve(t.deepspeed))
    if t.fsdp:
        kw["fsdp"] = t.fsdp
    kw.update(t.extra_args)
    try:
        return TrainingArguments(**kw)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"train: transformers rejects the arguments: {e}") from None


def _check_output_dir(out: Path, resume: bool) -> None:
    ckpts = sorted(out.glob("checkpoint-*")) if out.exists() else []
    if resume and not ckpts:
        raise ConfigError(f"--resume: no checkpoint-* in {out} to resume from")
    if not resume and ckpts:
        raise ConfigError(
            f"train.output_dir: {out} already holds {ckpts[-1].name}; pass --resume to continue it, "
            "or choose another output_dir"
        )


def _config_mismatch(out: Path, loaded: LoadedTrainConfig, console: Any) -> None:
    """On resume, warn about config fields that differ from the run being resumed (torchtune lesson)."""
    f = out / CONFIG_FILE
    if not f.exists():
        return
    old = yaml.safe_load(f.read_text()) or {}
    new = json.loads(loaded.config.model_dump_json())

    def diff(a: Any, b: Any, at: str) -> list[str]:
        if isinstance(a, dict) and isinstance(b, dict):
            return [
                d for k in sorted(set(a) | set(b)) for d in diff(a.get(k), b.get(k), f"{at}.{k}".lstrip("."))
            ]
        return [] if a == b else [f"{at}: {a!r} -> {b!r}"]

    changes = [d for d in diff(old.get("config", {}), new, "") if not d.startswith("train.max_steps")]
    if changes:
        _say(console, "warning: resuming with a changed config: " + "; ".join(changes[:8]))


def _trainer_class():
    from transformers import PreTrainedModel, Trainer

    class LoupeTrainer(Trainer):
        """``Trainer`` whose resume restores a ``PreTrainedModel`` through ``from_pretrained``.

        transformers 5.x saves checkpoints of models with a key conversion mapping (LLaVA:
        ``model.language_model.*`` is written as ``language_model.model.*``, the original format),
        but ``Trainer._load_from_checkpoint`` loads that file with ``load_state_dict(strict=False)``:
        no key matches, and a resumed run silently restarts from the freshly initialised weights.
        Loading through ``from_pretrained`` applies the mapping; ``strict=True`` then proves that
        every weight came back.
        """

        def _load_from_checkpoint(self, resume_from_checkpoint: str, model: Any = None) -> None:
            model = self.accelerator.unwrap_model(model or self.model)
            if self.is_fsdp_enabled:
                return super()._load_from_checkpoint(resume_from_checkpoint, model)
            ckpt = Path(resume_from_checkpoint)
            if (ckpt / "model.safetensors").exists():  # a plain state dict (non-HF model) loads as is
                from safetensors.torch import load_file

                sd = load_file(str(ckpt / "model.safetensors"))
                if set(sd) == set(model.state_dict()):
                    model.load_state_dict(sd, strict=True)
                    return
            if isinstance(model, PreTrainedModel):
                saved = type(model).from_pretrained(str(ckpt), dtype=next(model.parameters()).dtype)
                model.load_state_dict(saved.state_dict(), strict=True)
                return
            raise RuntimeError(f"--resume: the weights in {ckpt} do not match the model being trained")

    return LoupeTrainer


def _config_into_checkpoints(out: Path) -> Any:
    """A callback copying ``loupe_train.yaml`` into every ``checkpoint-N`` folder the Trainer writes,
    so each checkpoint loads on its own (``loupe eval --model out/checkpoint-N``)."""
    import shutil

    from transformers import TrainerCallback

    class ConfigIntoCheckpoints(TrainerCallback):
        def on_save(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            ckpt = out / f"checkpoint-{state.global_step}"
            if state.is_world_process_zero and ckpt.is_dir() and (out / CONFIG_FILE).is_file():
                shutil.copyfile(out / CONFIG_FILE, ckpt / CONFIG_FILE)

    return ConfigIntoCheckpoints()


def run_training(
    loaded: LoadedTrainConfig, resume: bool = False, console: Any = None, callbacks: list[Any] = ()
) -> dict[str, Any]:
    """Train as configured; returns a summary (steps, final loss, tokens/s, output dir).
    ``callbacks``: more ``transformers.TrainerCallback`` objects (``loupe pipeline`` times its runs)."""
    import torch
    from transformers import set_seed

    from loupe.train.dataset import Collator, TrainDataset
    from loupe.train.losslog import LossLogCallback, plot_losses
    from loupe.train.sources import attach_boxes, read_samples
    from loupe.train.strategies import build_strategy
    from loupe.train.templates import load_template

    cfg = loaded.config
    out = loaded.output_dir
    _check_output_dir(out, resume)
    if resume:
        _config_mismatch(out, loaded, console)
    if not cfg.data.path:
        raise ConfigError("data.path: required (or pass --data runs/<recipe>)")
    set_seed(cfg.train.seed)
    out.mkdir(parents=True, exist_ok=True)

    try:
        template = load_template(loaded.template)
        strategy = build_strategy(cfg.model, loaded.dir)
        samples = read_samples(
            loaded.resolve(cfg.data.path),
            cfg.data.format,
            loaded.resolve(cfg.data.image_root) if cfg.data.image_root else None,
            cfg.data.limit,
            plain=template.name == "plain",
            verify_images=cfg.data.verify_images,
        )
        use_boxes = cfg.data.boxes if cfg.data.boxes is not None else cfg.model.strategy == "mg_llava"
        if use_boxes:
            attach_boxes(samples, cfg.data.min_box_score)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    tokenizer = build_tokenizer(loaded, samples, out, resume)
    ds = TrainDataset(
        samples,
        tokenizer,
        strategy,
        template,
        cfg.data.max_length,
        cfg.data.learn,
        cfg.data.system,
        use_boxes,
    )
    _say(
        console,
        f"data: {samples.path} ({samples.format}): {len(ds)} samples, {ds.text_tokens} tokens; "
        f"template {template.name}, strategy {strategy.name}",
    )
    for reason, n in ds.skipped.most_common():
        _say(console, f"  skipped {n}: {reason} (e.g. {ds.examples[reason]})")
    if len(ds) == 0:
        raise ConfigError(f"data.path: no trainable samples in {samples.path} (skipped: {dict(ds.skipped)})")

    model = (
        strategy.load_model(loaded.resolve(cfg.model.init_from))
        if cfg.model.init_from
        else strategy.build_model(tokenizer)
    )
    if getattr(model, "config", None) is not None and hasattr(model.config, "use_cache"):
        model.config.use_cache = False
    patterns = cfg.train.trainable or strategy.trainable_presets[cfg.train.stage]
    trained, total = freeze(model, patterns, cfg.train.frozen)
    _say(
        console, f"model: {total / 1e6:.2f}M parameters, {trained / 1e6:.2f}M trained ({', '.join(patterns)})"
    )

    args = training_arguments(loaded, out, any(s.image is None for s, _, _ in ds.items))
    if _rank0():
        (out / CONFIG_FILE).write_text(
            yaml.safe_dump(
                {
                    "config": json.loads(cfg.model_dump_json()),
                    "data": str(samples.path),
                    "template": template.name,
                    "lr": loaded.lr,
                    "config_dir": str(loaded.dir),
                },
                sort_keys=False,
            )
        )
    log = LossLogCallback(out / LOSS_LOG)
    trainer = _trainer_class()(
        model=model,
        args=args,
        train_dataset=ds,
        data_collator=Collator(tokenizer.pad_token_id, strategy),
        processing_class=tokenizer,
        callbacks=[log, _config_into_checkpoints(out), *callbacks],
    )
    t0 = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=True if resume else None)
    seconds = time.perf_counter() - t0
    trainer.save_model(str(out))
    summary = {
        "output_dir": str(out),
        "global_step": trainer.state.global_step,
        "train_loss": result.training_loss,
        "last_loss": log.last_loss,
        "samples": len(ds),
        "skipped": dict(ds.skipped),
        "tokens_seen": int(trainer.state.num_input_tokens_seen),
        "seconds": round(seconds, 2),
        "tokens_per_s": round(log.tokens_in_run / seconds, 1) if seconds else None,
        "world_size": int(torch.distributed.get_world_size()) if torch.distributed.is_initialized() else 1,
    }
    if trainer.is_world_process_zero():
        (out / "train_summary.json").write_text(json.dumps(summary, indent=2))
        plot_losses(out / LOSS_LOG, out / "loss.png", title=cfg.name)
    return summary
