"""One recipe with every SMR dataset (and the SMR release) as a source: per-source counts match the fixtures."""

from __future__ import annotations

from pathlib import Path

import yaml

from loupe.pipeline.executors.local import run_local
from loupe.pipeline.executors.plan import make_plan
from loupe.pipeline.query import query
from loupe.pipeline.recipe import load_recipe

try:  # tests/ingest is a plain folder on sys.path (pytest's default "prepend" import mode)
    from smr_fixtures import BUILDERS
except ImportError:
    from .smr_fixtures import BUILDERS


def test_recipe_with_every_smr_dataset_counts_per_source(tmp_path: Path):
    expects = {name: build(tmp_path) for name, build in sorted(BUILDERS.items())}
    sources = [
        {"type": "smr", "dataset": e.dataset, "path": e.path, "split": e.split, "name": f"smr_{name}"}
        for name, e in expects.items()
    ]
    recipe = tmp_path / "smr_all.yaml"
    recipe.write_text(yaml.safe_dump({"name": "smr_all", "output": "runs", "sources": sources}))
    plan = make_plan(load_recipe(recipe))
    metrics = run_local(plan, quiet=True)

    got = query(plan.run, "SELECT source, count(*) AS n FROM samples GROUP BY source ORDER BY source")
    counts = dict(zip(got["source"].to_pylist(), got["n"].to_pylist()))
    assert counts == {f"smr_{name}": len(e.ids) for name, e in expects.items()}
    assert len(counts) == 12  # the 11 datasets + SliME's own release

    # every missing or corrupt image is one ingest drop; every sample is live
    n_bad = sum(len(e.missing) + len(e.corrupt) for e in expects.values())
    drops = query(plan.run, "SELECT reason, count(*) AS n FROM drops GROUP BY reason ORDER BY reason")
    assert dict(zip(drops["reason"].to_pylist(), drops["n"].to_pylist())) == {
        r: n
        for r, n in (
            ("decode_error", sum(len(e.corrupt) for e in expects.values())),
            ("missing_image", sum(len(e.missing) for e in expects.values())),
        )
        if n
    }
    assert metrics["ingest"]["rows_out"] == sum(counts.values())
    assert metrics["ingest"]["drops"] == n_bad
    assert len(plan.run.live_uids()) == sum(counts.values())
