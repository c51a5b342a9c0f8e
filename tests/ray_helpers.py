"""Ray helpers for tests, in a plain module: ``from conftest import ...`` is ambiguous once a test
package (tests/train) has a conftest of its own."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def private_ray(test_module: str) -> Iterator[object]:
    """A private in-process Ray (2 CPUs) in a short temp dir, torn down afterwards.

    ``test_module`` (the caller's ``__name__``) is pickled by value: Ray workers cannot import test files.
    """
    import ray
    import ray.cloudpickle

    from loupe.pipeline.executors.ray import connect

    # Ray's unix socket paths must stay under 107 characters: a short private temp dir
    d = tempfile.mkdtemp(prefix="lray", dir="/tmp")
    saved = {k: os.environ.get(k) for k in ("RAY_TMPDIR", "RAY_ADDRESS")}
    os.environ["RAY_TMPDIR"] = d
    os.environ.pop("RAY_ADDRESS", None)
    ray.cloudpickle.register_pickle_by_value(sys.modules[test_module])
    try:
        connect(None, quiet=True, num_cpus=2)
        yield ray
    finally:
        ray.shutdown()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        shutil.rmtree(d, ignore_errors=True)
