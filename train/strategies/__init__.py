"""Vision strategies: ``model.strategy`` name -> class (one file each; the contract is in ``base.py``).

Modules are imported on first use, so a strategy's dependencies load only when it is chosen.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING

from loupe.schemas.train import STRATEGY_NAMES

if TYPE_CHECKING:
    from loupe.schemas.train import ModelConfig
    from loupe.train.strategies.base import Strategy

# name -> "module:Class" under loupe.train.strategies
REGISTRY: dict[str, str] = {
    "llava": "llava:LlavaStrategy",
    "s2": "s2:S2Strategy",
    "dragonfly": "dragonfly:DragonflyStrategy",
    "slime": "slime:SlimeStrategy",
    "mg_llava": "mg_llava:MGLlavaStrategy",
}
assert tuple(REGISTRY) == STRATEGY_NAMES


def strategy_class(name: str) -> type[Strategy]:
    """The class registered as ``name``; ValueError naming the valid ones otherwise."""
    if name not in REGISTRY:
        raise ValueError(f"model.strategy: {name!r} is not a strategy; valid: {', '.join(REGISTRY)}")
    module, cls = REGISTRY[name].split(":")
    try:
        mod = importlib.import_module(f"loupe.train.strategies.{module}")
    except ModuleNotFoundError as e:
        if e.name == f"loupe.train.strategies.{module}":
            raise ValueError(f"model.strategy: {name!r} is not implemented in this build") from None
        raise
    return getattr(mod, cls)


def build_strategy(model_cfg: ModelConfig, base_dir: Path | str = ".") -> Strategy:
    """The configured strategy, its ``model.options`` validated."""
    return strategy_class(model_cfg.strategy)(model_cfg, base_dir)
