"""Benchmark tasks (registered by name): vqav2, textvqa, gqa, pope, mme, seed, sqa, mmbench."""

from loupe.eval.tasks import mcq, vqa, yesno  # noqa: F401  (register the tasks)
from loupe.eval.tasks.base import TASKS, Sample, Task, get_task

__all__ = ["TASKS", "Sample", "Task", "get_task"]
