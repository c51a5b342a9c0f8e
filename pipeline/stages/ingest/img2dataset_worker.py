"""Run ``img2dataset.download`` in its own process: ``python -m loupe.pipeline.stages.ingest.img2dataset_worker ARGS.json``.

Why a separate process: img2dataset starts its download processes with ``spawn``, and a spawned
child re-imports the parent's ``__main__``; called from a script without an
``if __name__ == "__main__":`` guard (or from some test runners) it hangs or re-runs the script.
Run as ``python -m`` this module *is* ``__main__``, so the children import it (as
``__mp_main__``, see the ``multiprocessing`` docs on the spawn start method) and nothing else.

That re-import is also how the SSRF guard reaches the download processes: when ``LOUPE_SSRF_GUARD=1``
the module's top level installs :class:`loupe.pipeline.stages.ingest.ssrf.GuardHandler` as the global
urllib opener, in this process and in every spawned child, so redirect hops are checked too.
Under ``--executor ray`` (``LOUPE_RAY_ADDRESS`` set, ``distributor: ray`` in ARGS.json) this process
joins the run's Ray cluster as a job of its own and img2dataset submits one Ray task per shard
(``img2dataset/distributor.py``, ``ray_distributor``). Ray workers never import this module, so the
guard reaches them through the job's ``runtime_env``: ``worker_process_setup_hook`` runs
:func:`loupe.pipeline.stages.ingest.ssrf.install_guard` in every worker process of the job before it runs a
task. When this process dies, Ray ends its job and so the job's tasks.

A crash here (even a segfault in an image codec) cannot take the ``loupe`` process with it.

The other way round, a killed ``loupe`` (even ``kill -9``) takes its downloads with it: the same
top-level code asks Linux to SIGKILL this process when its parent dies (``PR_SET_PDEATHSIG``), in
the worker (parent: ``loupe``) and in each spawned download process (parent: the worker), so no
orphan keeps downloading into a run dir that the next run is about to clean.
"""

from __future__ import annotations

import json
import os
import sys

GUARD_ENV = "LOUPE_SSRF_GUARD"
#: pid of the process expected to be our parent: ``loupe`` for the worker, the worker for its children
PARENT_ENV = "LOUPE_PARENT_PID"
#: the Ray cluster (GCS address) to distribute the downloads on; unset: multiprocessing
RAY_ENV = "LOUPE_RAY_ADDRESS"
PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """SIGKILL this process when its parent exits (Linux); exit now if the parent is already gone."""
    expected = os.environ.get(PARENT_ENV)
    if not expected or not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        return
    if str(os.getppid()) != expected:  # the parent died before prctl took effect
        os._exit(1)


die_with_parent()

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

if os.environ.get(GUARD_ENV) == "1":
    from loupe.pipeline.stages.ingest.ssrf import install_guard

    install_guard()


def join_ray(address: str, guard: bool) -> None:
    """Join the run's Ray cluster as a job whose workers get the SSRF guard and an offline environment."""
    import ray

    env_vars = {k: os.environ[k] for k in ("WANDB_MODE", "NO_ALBUMENTATIONS_UPDATE")}
    runtime_env: dict = {"env_vars": env_vars}
    if guard:
        runtime_env["worker_process_setup_hook"] = "loupe.pipeline.stages.ingest.ssrf.install_guard"
    ray.init(address=address, runtime_env=runtime_env, logging_level="WARNING")


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(
            f"usage: python -m {__spec__.name if __spec__ else 'img2dataset_worker'} ARGS.json",
            file=sys.stderr,
        )
        return 2
    with open(argv[1]) as f:
        kwargs = json.load(f)
    os.environ[PARENT_ENV] = str(os.getpid())  # spawned download processes die with this one
    if kwargs.get("distributor") == "ray":
        join_ray(os.environ[RAY_ENV], guard=os.environ.get(GUARD_ENV) == "1")
    import img2dataset

    img2dataset.download(**kwargs)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
