"""Load a training config: YAML -> ``--set`` overrides -> pydantic validation -> stage presets.

Errors are one line per problem naming the field (``model.strategy: 'x' is not a strategy; valid:
...``), like recipe errors. Presets fill only what the config leaves unset:

| stage      | trainable (strategy patterns) | template   | lr    |
|------------|-------------------------------|------------|-------|
| `pretrain` | projector                     | `plain`    | 1e-3  |
| `finetune` | projector + LLM               | `llama3`   | 2e-5  |
| `custom`   | `train.trainable` (required)  | `llama3`   | 2e-5  |

(LLaVA-1.5's scripts/v1_5/pretrain.sh: lr 1e-3, tune_mm_mlp_adapter; finetune.sh: lr 2e-5; both
warmup_ratio 0.03, cosine.)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from loupe.schemas.train import STRATEGY_NAMES, TrainConfig

PRESETS: dict[str, dict[str, Any]] = {
    "pretrain": {"template": "plain", "lr": 1e-3},
    "finetune": {"template": "llama3", "lr": 2e-5},
    "custom": {"template": "llama3", "lr": 2e-5},
}


class ConfigError(ValueError):
    """A training config problem, one line per problem, each naming the field."""


@dataclass
class LoadedTrainConfig:
    config: TrainConfig
    path: Path | None
    raw: dict[str, Any]

    @property
    def dir(self) -> Path:
        return self.path.parent if self.path else Path.cwd()

    def resolve(self, p: str) -> Path:
        q = Path(p).expanduser()
        return q if q.is_absolute() else (self.dir / q).resolve()

    @property
    def output_dir(self) -> Path:
        return self.resolve(self.config.train.output_dir.format(name=self.config.name))

    @property
    def template(self) -> str:
        return self.config.data.template or PRESETS[self.config.train.stage]["template"]

    @property
    def lr(self) -> float:
        return self.config.train.lr or PRESETS[self.config.train.stage]["lr"]


def apply_overrides(raw: dict[str, Any], sets: list[str]) -> dict[str, Any]:
    """``--set train.lr=1e-4 --set model.strategy=s2``: values parsed as YAML (numbers, lists, null)."""
    for s in sets:
        if "=" not in s:
            raise ConfigError(f"--set {s!r}: expected key=value, e.g. train.max_steps=10")
        key, value = s.split("=", 1)
        node = raw
        parts = key.strip().split(".")
        for part in parts[:-1]:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[parts[-1]] = _scalar(yaml.safe_load(value))
    return raw


def _scalar(v: Any) -> Any:
    """YAML 1.1 reads ``3e-4`` (no dot) as a string; a command line means the number."""
    if isinstance(v, str):
        try:
            return float(v) if any(c in v for c in ".eE") and v.strip() not in ("", ".") else v
        except ValueError:
            return v
    return v


def _model_at(loc: tuple) -> type[BaseModel] | None:
    model: Any = TrainConfig
    for part in loc[:-1]:
        f = model.model_fields.get(part) if isinstance(part, str) else None
        ann = getattr(f, "annotation", None)
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return None
        model = ann
    return model


def format_errors(err: ValidationError, where: str, prefix: str = "") -> str:
    lines = []
    for e in err.errors():
        loc = tuple(e["loc"])
        field = prefix + ".".join(str(p) for p in loc) if loc else prefix.rstrip(".") or "config"
        value = e.get("input")
        if e["type"] == "extra_forbidden":
            m = _model_at(loc)
            valid = ", ".join(m.model_fields) if m else "see `loupe schema train`"
            lines.append(f"{where}: {field}: unknown key {loc[-1]!r}; valid keys: {valid}")
        elif e["type"] == "missing":
            lines.append(f"{where}: {field}: required field is missing")
        elif e["type"] == "literal_error" and loc[-1] == "strategy":
            lines.append(f"{where}: {field}: {value!r} is not a strategy; valid: {', '.join(STRATEGY_NAMES)}")
        else:
            shown = json.dumps(value, default=str) if not isinstance(value, dict) else "{...}"
            shown = shown if len(shown) <= 80 else shown[:77] + "..."
            lines.append(f"{where}: {field}: {e['msg']} (got {shown})")
    return "\n".join(lines)


def parse_train_config(raw: Any, where: str = "config", path: Path | None = None) -> LoadedTrainConfig:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: a training config is a YAML mapping with name, model, data, train")
    try:
        cfg = TrainConfig.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(format_errors(e, where)) from None
    loaded = LoadedTrainConfig(cfg, path, raw)
    problems = []
    m = cfg.model
    for side in ("vision", "llm"):
        t = getattr(m, side)
        if (t.path is None) == (t.config is None):
            problems.append(
                f"{where}: model.{side}: give exactly one of path (pretrained) or config (random init)"
            )
    if m.tokenizer is None and m.llm.path is None:
        problems.append(
            f"{where}: model.tokenizer: required when model.llm is random-init (a path, or `tiny`)"
        )
    if cfg.train.stage == "custom" and not cfg.train.trainable:
        problems.append(
            f"{where}: train.trainable: required with train.stage custom (parameter-name patterns)"
        )
    from loupe.train.strategies import strategy_class

    try:
        cls = strategy_class(m.strategy)
        cls.Options.model_validate(m.options)
    except ValidationError as e:
        problems.append(format_errors(e, where, prefix="model.options."))
    except ValueError as e:
        problems.append(f"{where}: {e}")
    if problems:
        raise ConfigError("\n".join(problems))
    return loaded


def load_train_config(path: str | Path, sets: list[str] = ()) -> LoadedTrainConfig:
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"training config {str(path)!r} does not exist")
    try:
        raw = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{p.name}: not valid YAML{at}: {getattr(e, 'problem', e)}") from None
    if isinstance(raw, dict):
        raw = apply_overrides(raw, list(sets))
    return parse_train_config(raw, p.name, p.resolve())
