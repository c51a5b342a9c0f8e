"""The report's "Training and evaluation" block and the training report: jinja2 templates, autoescaped."""

from __future__ import annotations

import yaml

from loupe.pipeline.loop.report import pipeline_context
from loupe.pipeline.report.html import _environment

MANIFEST = {
    "pipeline": {
        "abc123": {
            "status": "complete",
            "split": {"train": 10, "heldout": 4, "train_answers_equal_truth": 0.9, "leaked_copies": 0},
            "timing": {"total_seconds": 12.5, "total_cpu_seconds": 9.0, "curate_seconds": 3, "curate_cpu_seconds": 2},
            "summary": {
                "llava": {"seeds": 2, "final_mean": 0.25, "final_std": 0.05, "final_min": 0.2, "final_max": 0.3,
                          "seconds": 5, "cpu_seconds": 4,
                          "curve": [{"step": 2, "mean": 0.1, "std": 0.0}, {"step": 4, "mean": 0.25, "std": 0.05}]},
            },
            "runs": {"llava-seed0": {"status": "complete", "accuracy": 0.2, "steps": 4, "cpu_seconds": 2,
                                     "answers": {"<b>42</b>": 3}, "checkpoint": "/x/llava-seed0", "resumed_from": [2]}},
        }
    }
}  # fmt: skip


def test_pipeline_block_shows_scores_steps_and_escapes_model_answers():
    html = (
        _environment()
        .get_template("pipeline.html.j2")
        .render(pipeline=pipeline_context(MANIFEST, {"abc123": "plots/pipeline-abc123.png"}))
    )
    assert "Training and evaluation" in html and 'src="plots/pipeline-abc123.png"' in html
    assert '<td class="num">25.0</td>' in html and "10.0 ± 0.0" in html and "25.0 ± 5.0" in html
    assert "&lt;b&gt;42&lt;/b&gt;" in html and "<b>42</b>" not in html  # a model's answer is data
    assert "/x/llava-seed0" in html and "12.5 s wall" in html
    assert _environment().get_template("pipeline.html.j2").render(pipeline=[]).strip() == ""


def test_train_report_is_escaped(tmp_path):
    from loupe.pipeline.report.train import build_train_report

    meta = {"config": {"name": "<script>x</script>", "model": {"strategy": "llava"}}, "template": "llama3"}
    (tmp_path / "loupe_train.yaml").write_text(yaml.safe_dump(meta))
    (tmp_path / "train_summary.json").write_text('{"global_step": 3, "skipped": {"<i>bad</i>": 2}}')
    page = build_train_report(tmp_path).read_text()
    assert "<script>x" not in page and "&lt;script&gt;x&lt;/script&gt;" in page
    assert "&lt;i&gt;bad&lt;/i&gt;" in page and '<td class="num">3</td>' in page
