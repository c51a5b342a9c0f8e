"""Llama-3 chat rendering of our conversation records (the format Dragonfly trains on).

``llama3_render`` reproduces Meta's Llama-3 Instruct chat template exactly::

    <|begin_of_text|><|start_header_id|>{role}<|end_header_id|>\\n\\n{content|trim}<|eot_id|>...

with roles ``system``/``user``/``assistant`` (our ``from`` values system/human/gpt) and, when
``add_generation_prompt`` is set, a trailing ``<|start_header_id|>assistant<|end_header_id|>\\n\\n``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

BOS = "<|begin_of_text|>"
EOT = "<|eot_id|>"
ROLES = {"system": "system", "human": "user", "gpt": "assistant", "user": "user", "assistant": "assistant"}


def header(role: str) -> str:
    return f"<|start_header_id|>{role}<|end_header_id|>\n\n"


def llama3_render(
    turns: Iterable[Mapping[str, str]], system: str | None = None, add_generation_prompt: bool = False
) -> str:
    """Render turns (``{"from": "human"|"gpt"|"system", "value": ...}`` or ``{"role", "content"}``)."""
    out = [BOS]
    msgs = [{"role": "system", "content": system}] if system else []
    for t in turns:
        role = t.get("role") or t.get("from")
        msgs.append({"role": ROLES[role], "content": t.get("content", t.get("value"))})
    for m in msgs:
        out.append(header(m["role"]) + m["content"].strip() + EOT)
    if add_generation_prompt:
        out.append(header("assistant"))
    return "".join(out)
