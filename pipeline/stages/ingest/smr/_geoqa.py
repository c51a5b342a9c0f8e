"""Shared reader of the GeoQA family's pickle files (GeoQA3 and GeoQA+).

Both releases ship each split as a pickled list of problem dicts with the diagram embedded as a
numpy array. The official readers (chen-judge/GeoQA ``utils.py`` ``SeqReader._read``;
chen-judge/UniGeo ``Geoformer/src/geo_data.py``) use the keys ``id``, ``image`` (a 2-D grayscale
``uint8`` array: they copy it into 3 channels), ``choices`` (four answer strings), ``label`` (index
of the correct choice), ``English_problem`` (the English text; the Chinese original is in
``problem`` / tokenised in ``token_list``), ``manual_program``, ``numbers``, ``choice_nums``
and ``formal_point``.

Pickles can run code when loaded, so this reader only accepts what these files contain: built-in
containers and numpy arrays/scalars; any other global makes the file a LayoutError.
"""

from __future__ import annotations

import io
import pickle
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from loupe.pipeline.stages.ingest.smr.base import (
    LayoutError,
    SmrRecord,
    conversation,
    letter,
    mc_prompt,
    text,
)

# module, name -> allowed; numpy 1.x pickles name numpy.core, numpy 2.x numpy._core
_ALLOWED = {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"),
    ("collections", "OrderedDict"),
}


class _NumpyOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(f"refusing global {module}.{name}")
        if module == "numpy.core.multiarray":  # numpy 2 moved it; avoid the deprecation shim
            module = "numpy._core.multiarray" if hasattr(np, "_core") else module
        return super().find_class(module, name)


def load_problems(path: Path) -> list[dict]:
    try:
        with path.open("rb") as f:
            data = _NumpyOnlyUnpickler(f, encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, AttributeError, ImportError, TypeError) as e:
        raise LayoutError(f"{path} is not a GeoQA pickle: {e}") from None
    if not isinstance(data, list):
        raise LayoutError(f"{path} should hold a pickled list of problems")
    return [p for p in data if isinstance(p, dict)]


def diagram_png(array: Any) -> bytes | None:
    """The embedded diagram as PNG bytes (lossless); None when it is not an image array."""
    if not isinstance(array, np.ndarray) or array.ndim not in (2, 3) or array.size == 0:
        return None
    a = array
    if a.dtype != np.uint8:
        a = np.clip(a, 0, 255).astype(np.uint8)
    if a.ndim == 3:
        if a.shape[2] == 1:
            a = a[:, :, 0]
        elif a.shape[2] == 3:
            a = a[:, :, ::-1]  # the releases were written with OpenCV: BGR -> RGB
        else:
            return None
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(a)).save(buf, format="PNG")
    return buf.getvalue()


def question_text(p: dict) -> str:
    return text(p.get("English_problem")) or text(p.get("problem")) or "".join(p.get("token_list") or [])


def iter_pickle(path: Path, split: str) -> Iterator[SmrRecord]:
    counts: dict[str, int] = {}
    for p in load_problems(path):
        pid = text(p.get("id"))
        choices = [text(c) for c in p.get("choices") or []]
        label = p.get("label")
        if not pid or not isinstance(label, (int, np.integer)) or not 0 <= int(label) < len(choices):
            continue
        # augmented training files (GeoQA+ back-translation) repeat an id with new wording:
        # number the repeats so each stays its own record
        counts[pid] = counts.get(pid, 0) + 1
        record_id = f"{split}/{pid}" + (f"#{counts[pid]}" if counts[pid] > 1 else "")
        png = diagram_png(p.get("image"))
        yield SmrRecord(
            record_id=record_id,
            image_path=path if png is not None else None,  # None: no diagram -> missing_image drop
            image_bytes=png,
            conversations=conversation([(mc_prompt(question_text(p), choices), letter(int(label)))]),
            meta={
                "id": pid,
                "answer": letter(int(label)),
                "choices": choices,
                "problem_zh": text(p.get("problem")) or None,
                "subject": p.get("subject"),
                "manual_program": p.get("manual_program"),
                "formal_point": p.get("formal_point"),
                "image_in": path.name,
            },
        )
