"""Errors Loupe shows to people: one line that names the field, the value and what is valid."""

from __future__ import annotations


class LoupeError(Exception):
    """An error with a message meant for the user (no traceback needed)."""


class RecipeError(LoupeError):
    """The recipe is malformed: wrong key, type, value or path."""


class ModelUnavailable(LoupeError):
    """A configured model's weights or package are not installed here."""
