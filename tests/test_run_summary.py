"""The stage table `loupe run` prints: export has no table of its own, so it shows the records it wrote."""

from __future__ import annotations

import io

from rich.console import Console

from loupe.pipeline import cli
from loupe.pipeline.executors.local import run_local
from loupe.pipeline.executors.plan import make_plan
from loupe.pipeline.recipe import load_recipe

LIVE_DEMO = 33  # 37 files - 3 planted duplicates - 1 corrupt


def test_export_row_shows_the_records_it_wrote(tmp_path, demo_images, monkeypatch):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        f"name: summary\noutput: {tmp_path / 'runs'}\nsources:\n"
        f"  - {{type: local_folder, name: demo, path: {demo_images}}}\nstages:\n  - stage: exact_dedup\n"
        "  - {stage: caption, backend: composer}\n  - {stage: export, formats: [llama3_jsonl]}\n"
    )
    plan = make_plan(load_recipe(recipe))
    metrics = run_local(plan, quiet=True)
    written = plan.run.read_text("export/conversations.jsonl").splitlines()
    assert metrics["export"]["rows_out"] == 0 and metrics["export"]["records"] == len(written) == LIVE_DEMO

    buf = io.StringIO()
    monkeypatch.setattr(cli, "err", Console(file=buf, width=120))
    cli._summary(metrics)
    rows = {
        line.split("│")[1].strip(): line.split("│")[3].strip()
        for line in buf.getvalue().splitlines()
        if "│" in line
    }
    assert rows["export"] == f"{LIVE_DEMO} records"  # not "0": export writes files, no table rows
    assert rows["caption"] == str(LIVE_DEMO) and rows["exact_dedup"] == "36"
