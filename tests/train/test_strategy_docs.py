"""docs/strategies.md documents every option of the multi-view strategies."""

from __future__ import annotations

from pathlib import Path

import pytest

from loupe.train.strategies import strategy_class

DOC = Path(__file__).resolve().parents[2] / "docs" / "strategies.md"


@pytest.mark.parametrize("name", ["s2", "dragonfly", "slime", "mg_llava"])
def test_every_option_is_documented(name):
    text = DOC.read_text()
    assert f"## `{name}`" in text
    section = text.split(f"## `{name}`", 1)[1].split("\n## ", 1)[0]
    for field in strategy_class(name).Options.model_fields:
        assert f"| `{field}` |" in section, f"docs/strategies.md: {name} option {field!r} undocumented"
