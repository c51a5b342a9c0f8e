"""The import graph follows ARCHITECTURE.md's layout table: no package imports one it may not."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MAY_IMPORT = {
    "schemas": set(),
    "experts": {"schemas"},
    "pipeline": {"schemas", "experts"},
    "train": {"schemas"},
    "eval": {"schemas", "train"},
    "recipes": set(),
}
# Composition roots: the command line and the report put the halves together (lazy imports only).
ROOTS = {
    "pipeline/cli.py": {"train", "eval"},
    "pipeline/report/data.py": {"eval"},
    "pipeline/report/html.py": {"eval"},
    "pipeline/loop/jobs.py": {"train", "eval"},  # `loupe pipeline`: curate -> train -> eval, composed here
    "eval/cli.py": {"pipeline"},
}


def loupe_imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names = [node.module] if isinstance(node, ast.ImportFrom) and node.module else []
        names += [a.name for a in node.names] if isinstance(node, ast.Import) else []
        found |= {n.split(".")[1] for n in names if n.startswith("loupe.") and n.count(".") >= 1}
    return found


def test_no_package_imports_one_it_may_not():
    wrong = []
    for top, allowed in MAY_IMPORT.items():
        for f in sorted((REPO / top).rglob("*.py")):
            rel = f.relative_to(REPO).as_posix()
            extra = loupe_imports(f) - allowed - {top} - ROOTS.get(rel, set())
            if extra:
                wrong.append(f"{rel} imports loupe.{sorted(extra)}")
    assert not wrong, "\n".join(wrong)


def test_the_checker_sees_an_upward_import(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("def f():\n    from loupe.pipeline.query import open_run\n")
    assert loupe_imports(f) == {"pipeline"}
