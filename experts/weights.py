"""Where an expert's weights come from: a model shipped in a package, a local path, or a hub id.

Nothing here downloads at import or test time. A hub id is resolved from the local Hugging Face
cache whenever the hub is offline (``HF_HUB_OFFLINE=1``, the test setting) and otherwise only
through the owning library's own loader, which the expert calls; a missing model always ends in
:class:`~loupe.schemas.errors.ModelUnavailable` saying what to install or download.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from pathlib import Path

from loupe.schemas.errors import ModelUnavailable

_TRUE = {"1", "true", "yes", "on"}


def hub_offline() -> bool:
    """True when the Hugging Face hub must not be contacted (HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE)."""
    return any(
        os.environ.get(k, "").strip().lower() in _TRUE for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def require_package(module: str, pip_name: str, why: str) -> None:
    """Fail with an install hint when ``module`` cannot be imported (checked without importing it)."""
    if importlib.util.find_spec(module) is None:
        raise ModelUnavailable(f"{why} needs the Python package {pip_name!r}: pip install {pip_name}")


def packaged_file(module: str, relpath: str, pip_name: str) -> Path:
    """A weights file shipped inside an installed package (e.g. rapidocr's PP-OCR ONNX models)."""
    require_package(module, pip_name, f"the packaged model {relpath!r}")
    spec = importlib.util.find_spec(module)
    roots = list(spec.submodule_search_locations or []) if spec else []
    if not roots and spec and spec.origin:
        roots = [str(Path(spec.origin).parent)]
    for root in roots:
        p = Path(root) / relpath
        if p.is_file():
            return p
    raise ModelUnavailable(
        f"{relpath!r} is missing from the installed package {pip_name!r} (looked in {roots}); "
        f"reinstall it: pip install --force-reinstall {pip_name}"
    )


def looks_like_hub_id(spec: str) -> bool:
    """``org/name`` (optionally ``hf-hub:org/name``) that is not an existing path."""
    s = spec.removeprefix("hf-hub:")
    parts = s.split("/")
    return len(parts) == 2 and all(parts) and not s.startswith((".", "~")) and not Path(spec).exists()


def local_path(spec: str, base: Path | None = None) -> Path | None:
    """``spec`` as an existing file or folder (relative to ``base`` when given), else None."""
    p = Path(spec).expanduser()
    if not p.is_absolute() and base is not None and (base / p).exists():
        return base / p
    return p if p.exists() else None


def hub_snapshot(repo_id: str, what: str, allow_patterns: list[str] | None = None) -> Path:
    """Folder of a hub model already in the local Hugging Face cache; never downloads."""
    require_package("huggingface_hub", "huggingface_hub", what)
    from huggingface_hub import snapshot_download

    repo_id = repo_id.removeprefix("hf-hub:")
    try:
        return Path(snapshot_download(repo_id, local_files_only=True, allow_patterns=allow_patterns))
    except Exception as e:  # LocalEntryNotFoundError, OfflineModeIsEnabled, ...
        raise ModelUnavailable(
            f"{what}: hub model {repo_id!r} is not in the local Hugging Face cache and the hub is offline "
            f"here. Download it once where there is network (`hf download {repo_id}`) and copy the cache "
            f"(~/.cache/huggingface/hub), or set the recipe field to a local path. ({type(e).__name__})"
        ) from e


def resolve_weights(spec: str, what: str, base: Path | None = None) -> str:
    """A recipe model field -> what the backend's loader should get.

    Local paths come back absolute; hub ids come back unchanged when the hub may be contacted, and as
    the cached snapshot folder when it is offline (so the loader never tries the network).
    """
    p = local_path(spec, base)
    if p is not None:
        return str(p.resolve())
    if looks_like_hub_id(spec) and hub_offline():
        return str(hub_snapshot(spec, what))
    return spec


def pick_device(device: str) -> str:
    """``auto`` -> ``cuda`` when this worker sees a GPU, else ``cpu``. Called in ``__init__`` on the
    worker, never at import, so a CPU driver does not decide for GPU actors (see STYLE.md)."""
    if device != "auto":
        if device.startswith("cuda"):
            import torch

            if not torch.cuda.is_available():
                raise ModelUnavailable(
                    f"device={device!r} but no CUDA GPU is visible; use device: auto or cpu"
                )
        return device
    try:
        import torch
    except ImportError:
        return "cpu"
    return "cuda" if torch.cuda.is_available() else "cpu"


def usable_cpus() -> int:
    """CPUs this process may run on (the affinity mask where the OS has one, e.g. under taskset or Ray)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)
