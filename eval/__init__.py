"""Evaluation: ``loupe eval``.

* ``scorers/`` -- pure benchmark scorers written from the official code (VQA/TextVQA, GQA, POPE,
  ScienceQA-IMG, SEED, MMBench circular, MME);
* ``tasks/`` -- each benchmark's official files -> LLaVA-1.5 prompts -> scores;
* ``model.py`` / ``loupe_ckpt.py`` -- the model interface, HF LLaVA folders and ``loupe train``
  checkpoints, batched greedy generation and answer scoring;
* ``dualfocus.py`` -- DualFocus two-view inference; ``runner.py`` -- predictions.jsonl + scores.json;
* ``quality.py`` -- dataset-quality metrics of a Loupe run; ``results.py`` -- the published numbers.

See docs/evaluation.md.
"""
