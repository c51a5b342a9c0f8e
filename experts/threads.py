"""CPU threads for torch models: several one-thread workers instead of one many-thread forward.

Why (issue 19, ``benchmarks/bench_threads.py``): torch's intra-op threads meet at a barrier after
every operator, so when another process takes one core, every operator waits for the descheduled
thread; a 2-thread EfficientNet embed fell from 84 to 11 img/s next to two busy processes. Single-
thread workers, each running whole micro-batches, do not wait for each other: a stage then slows in
proportion to the CPU it gets. torch releases the GIL inside operators, so Python threads suffice.

The number of workers is the CPUs this worker was given: the actor's ``num_cpus`` under Ray (not
the node's cores: two actors of one CPU each must not start two threads each), else the CPU
affinity of the process (``taskset``, containers), else the core count.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, TypeVar

from loupe.experts.weights import usable_cpus

T = TypeVar("T")
R = TypeVar("R")


def ray_assigned_cpus() -> float | None:
    """CPUs Ray assigned to the current task/actor, or None outside a Ray worker."""
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return None
    try:
        ctx = ray.get_runtime_context()
        if ctx.worker.mode != ray.WORKER_MODE:  # the driver has no assignment
            return None
        return float(ctx.get_assigned_resources().get("CPU", 0.0)) or None
    except Exception:
        return None


def worker_cpus() -> int:
    """How many one-thread workers a CPU model in this process should run (at least 1)."""
    assigned = ray_assigned_cpus()
    if assigned is not None:
        return max(1, min(usable_cpus(), math.ceil(assigned - 1e-9)))
    return usable_cpus()


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run torch with ``n`` intra-op threads inside the block (process-wide; restored after)."""
    import torch

    before = torch.get_num_threads()
    if before != n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if before != n:
            torch.set_num_threads(before)


class OneThreadWorkers:
    """Maps a function over chunks with ``workers`` threads while torch runs one thread per op.

    With one worker (or one chunk) it calls the function inline with torch's own threading.
    """

    def __init__(self, workers: int | None = None, name: str = "loupe-torch"):
        self.workers = max(1, int(workers or worker_cpus()))
        self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix=name) if self.workers > 1 else None

    def map(self, fn: Callable[[T], R], chunks: Sequence[T]) -> list[R]:
        if self._pool is None or len(chunks) < 2:
            return [fn(c) for c in chunks]
        with torch_threads(1):
            return list(self._pool.map(fn, chunks))

    def map_io(self, fn: Callable[[T], R], items: Sequence[T]) -> list[R]:
        """Map on the workers without touching torch's threads (PIL resizing before a GPU forward)."""
        if self._pool is None or len(items) < 2:
            return [fn(x) for x in items]
        return list(self._pool.map(fn, items))

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def __del__(self) -> None:
        pool: Any = getattr(self, "_pool", None)
        if pool is not None:
            pool.shutdown(wait=False)
