"""Re-export of :mod:`loupe.schemas.errors`: the error classes live in ``schemas/`` so that ``experts/``,
``train/`` and ``eval/`` can raise them without importing ``pipeline/`` (ARCHITECTURE.md's layering)."""

from loupe.schemas.errors import LoupeError, ModelUnavailable, RecipeError

__all__ = ["LoupeError", "ModelUnavailable", "RecipeError"]
