"""Load and validate recipes; compute the lineage hash that names the run directory."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from loupe.pipeline.errors import RecipeError
from loupe.schemas import recipe as R

# The lineage hash includes the code version's major.minor: outputs of an incompatible Loupe are
# never mixed into one run directory, while patch releases keep resuming the same run.
LINEAGE_VERSION = "0.1"

#: ``scheme://`` as ``loupe.pipeline.storage.is_uri`` reads it; kept here so that validating a recipe
#: does not import pyarrow (through the storage module): ``validate`` stays under 1 s
URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")

_SOURCE_MODELS = {
    "local_folder": R.LocalFolderSource,
    "url_list": R.UrlListSource,
    "smr": R.SmrSource,
    "finedetail": R.FineDetailSource,
}
_STAGE_MODELS = {
    m.model_fields["stage"].annotation.__args__[0]: m  # type: ignore[union-attr]
    for m in R.StageEntry.__origin__.__args__  # type: ignore[attr-defined]
}


@dataclass
class LoadedRecipe:
    recipe: R.Recipe
    path: Path
    raw: dict[str, Any]

    @property
    def dir(self) -> Path:
        return self.path.parent

    def resolve(self, p: str) -> Path:
        q = Path(p).expanduser()
        return q if q.is_absolute() else (self.dir / q).resolve()


def _loc_str(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def _clean_loc(loc: tuple, raw: dict) -> tuple[tuple, type[BaseModel] | None]:
    """Drop pydantic's union-tag segments (``stages[1].ocr.x`` -> ``stages[1].x``) and find the model."""
    out: list = []
    model: type[BaseModel] | None = R.Recipe
    i = 0
    while i < len(loc):
        part = loc[i]
        out.append(part)
        if part in ("stages", "sources") and i + 1 < len(loc) and isinstance(loc[i + 1], int):
            out.append(loc[i + 1])
            table = _STAGE_MODELS if part == "stages" else _SOURCE_MODELS
            tag = loc[i + 2] if i + 2 < len(loc) else None
            if tag in table:
                model = table[tag]
                i += 3
                continue
            entry = (
                (raw.get(part) or [None] * (loc[i + 1] + 1))[loc[i + 1]] if isinstance(raw, dict) else None
            )
            key = "stage" if part == "stages" else "type"
            model = table.get(entry.get(key)) if isinstance(entry, dict) else None
            i += 2
            continue
        i += 1
    return tuple(out), model


def format_validation_error(err: ValidationError, raw: dict, where: str) -> str:
    lines = []
    for e in err.errors():
        loc, model = _clean_loc(tuple(e["loc"]), raw)
        field = _loc_str(loc) or "recipe"
        kind = e["type"]
        value = e.get("input")
        if kind == "extra_forbidden":
            valid = ", ".join(sorted(model.model_fields)) if model else "see `loupe schema`"
            lines.append(f"{where}: {field}: unknown key {loc[-1]!r}; valid keys: {valid}")
        elif kind == "missing":
            lines.append(f"{where}: {field}: required field is missing")
        elif kind in ("union_tag_invalid", "union_tag_not_found"):
            key = "stage" if "stages" in loc else "type"
            names = R.STAGE_NAMES if key == "stage" else tuple(_SOURCE_MODELS)
            got = e.get("ctx", {}).get("tag", value if not isinstance(value, dict) else value.get(key))
            what = "stage" if key == "stage" else "source type"
            lines.append(f"{where}: {field}.{key}: unknown {what} {got!r}; valid: {', '.join(names)}")
        else:
            shown = json.dumps(value, default=str) if not isinstance(value, dict) else "{...}"
            if len(shown) > 80:
                shown = shown[:77] + "..."
            lines.append(f"{where}: {field}: {e['msg']} (got {shown})")
    return "\n".join(lines)


def parse_recipe(raw: Any, where: str = "recipe") -> R.Recipe:
    if not isinstance(raw, dict):
        raise RecipeError(f"{where}: the recipe must be a YAML mapping with name, sources, stages")
    try:
        return R.Recipe.model_validate(raw)
    except ValidationError as e:
        raise RecipeError(format_validation_error(e, raw, where)) from None


_SEGMENT = re.compile(r"([^.\[\]]+)|\[(-?\d+)\]")


def _path_segments(path: str, where: str) -> list[str | int]:
    segs: list[str | int] = []
    pos = 0
    for m in _SEGMENT.finditer(path):
        if path[pos : m.start()] not in ("", "."):
            break
        segs.append(m.group(1) if m.group(1) is not None else int(m.group(2)))
        pos = m.end()
    if pos != len(path) or not segs:
        raise RecipeError(
            f"{where}: {path!r} is not a dotted path like stages.ocr.min_score or stages[2].batch_size"
        )
    return segs


def apply_override(raw: dict, assignment: str) -> None:
    """Apply one ``--set key=value`` to a raw recipe mapping, in place.

    ``key`` is a dotted path into the recipe: ``name``, ``seed``, ``stages[2].batch_size``,
    ``sources[0].path``; a list of stages or sources may also be indexed by a stage name or source
    name (``stages.ocr.min_score``, ``sources.photos.path``) when that name is unique. ``value`` is
    read as YAML (``8``, ``0.5``, ``true``, ``[a, b]``, ``null``); the result is validated like the file.
    """
    where = f"--set {assignment}"
    if "=" not in assignment:
        raise RecipeError(f"{where}: expected key=value, e.g. --set stages.ocr.min_score=0.6")
    key, _, text = assignment.partition("=")
    segs = _path_segments(key.strip(), where)
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError as e:
        raise RecipeError(f"{where}: value is not valid YAML ({getattr(e, 'problem', e)})") from None
    node: Any = raw
    for i, seg in enumerate(segs):
        last = i == len(segs) - 1
        here = _loc_str(tuple(segs[:i])) or "recipe"
        if isinstance(node, list):
            if isinstance(seg, str):  # a stage or source named by its stage/name/type
                hits = [
                    j
                    for j, e in enumerate(node)
                    if isinstance(e, dict)
                    and seg in (e.get("stage"), e.get("name"), e.get("type"), e.get("dataset"))
                ]
                if len(hits) != 1:
                    names = [
                        e.get("stage") or e.get("name") or e.get("type") for e in node if isinstance(e, dict)
                    ]
                    what = "no entry" if not hits else f"{len(hits)} entries"
                    raise RecipeError(
                        f"{where}: {here} has {what} named {seg!r} (entries: {', '.join(map(str, names))}); "
                        f"use {here}[i]"
                    )
                seg = hits[0]
            if not -len(node) <= seg < len(node):
                raise RecipeError(f"{where}: {here}[{seg}] is out of range ({len(node)} entries)")
            if last:
                node[seg] = value
            else:
                node = node[seg]
        elif isinstance(node, dict):
            if isinstance(seg, int):
                raise RecipeError(f"{where}: {here} is a mapping, not a list")
            if last:
                node[seg] = value
            else:
                node = node.setdefault(seg, {})
        else:
            raise RecipeError(f"{where}: {here} is a value ({node!r}), it has no field {seg!r}")


class UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping (PyYAML keeps the last one
    silently, so a repeated ``min_score:`` would override the first without a word)."""


def _unique_mapping(loader: UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = loader.construct_object(key_node, deep=True)
        try:
            first = seen.setdefault(key, key_node.start_mark.line)
        except TypeError:  # an unhashable key: let SafeLoader report it
            continue
        if first != key_node.start_mark.line:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r} (first given at line {first + 1})", key_node.start_mark
            )
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)


def load_recipe(
    path: str | Path, check_paths: bool = True, overrides: list[str] | tuple[str, ...] = ()
) -> LoadedRecipe:
    """Read, override (``--set``) and validate a recipe file."""
    p = Path(path)
    if not p.exists():
        raise RecipeError(f"recipe file {str(path)!r} does not exist")
    try:
        raw = yaml.load(p.read_bytes().decode("utf-8"), Loader=UniqueKeyLoader)  # noqa: S506 (safe loader)
    except UnicodeDecodeError as e:
        raise RecipeError(f"{p.name}: not UTF-8 text (byte {e.start}: {e.reason})") from None
    except OSError as e:
        raise RecipeError(f"recipe file {str(path)!r} cannot be read: {e.strerror}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise RecipeError(f"{p.name}: not valid YAML{at}: {getattr(e, 'problem', e)}") from None
    if overrides and isinstance(raw, dict):
        for assignment in overrides:
            apply_override(raw, assignment)
    recipe = parse_recipe(raw, p.name + (" (with --set)" if overrides else ""))
    loaded = LoadedRecipe(recipe=recipe, path=p.resolve(), raw=raw)
    if check_paths:
        for i, src in enumerate(recipe.sources):
            if getattr(src, "path", None) is None:  # generated sources (finedetail) read no files
                continue
            target = loaded.resolve(src.path)
            if not target.exists():
                raise RecipeError(
                    f"{p.name}: sources[{i}].path: {src.path!r} does not exist (resolved to {target})"
                )
        out = recipe.output
        if not URI.match(out):
            root = loaded.resolve(out)
            for q in (root, root / recipe.name):
                if q.exists() and not q.is_dir():
                    raise RecipeError(f"{p.name}: output: {out!r} is not a folder ({q} is a file)")
    for i, st in enumerate(recipe.stages):
        if st.stage == "caption":
            from loupe.pipeline.stages.fuse.prompt import TEMPLATE_DIR

            valid = sorted(t.stem for t in TEMPLATE_DIR.glob("*.txt"))
            if st.prompt_template not in valid:
                raise RecipeError(
                    f"{p.name}: stages[{i}].prompt_template: {st.prompt_template!r} is not a template; "
                    f"valid: {', '.join(valid)}"
                )
    return loaded


def stage_ids(recipe: R.Recipe) -> list[str]:
    """Unique id per stage entry: its name, or name_2, name_3 ... for repeats."""
    seen: dict[str, int] = {}
    ids = []
    for s in recipe.stages:
        seen[s.stage] = seen.get(s.stage, 0) + 1
        ids.append(s.stage if seen[s.stage] == 1 else f"{s.stage}_{seen[s.stage]}")
    return ids


def _template_fingerprints(recipe: R.Recipe) -> dict[str, str]:
    out = {}
    for s in recipe.stages:
        if s.stage == "caption":
            try:
                from loupe.pipeline.stages.fuse.prompt import template_fingerprint

                out[s.prompt_template] = template_fingerprint(s.prompt_template)
            except (ImportError, FileNotFoundError, KeyError, ValueError):
                out[s.prompt_template] = "unknown"
    return out


#: stage fields that change how fast a stage runs, not what it writes: not part of its identity
EXECUTION_KNOBS = frozenset(
    {"batch_size", "resources", "concurrency", "workers", "device", "timeout_s", "max_retries"}
)


def _sha(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def stage_identities(loaded: LoadedRecipe) -> dict[str, str]:
    """``{stage id: identity}`` in run order, ``ingest`` first (see ``loupe.pipeline.reuse``).

    ingest: the recipe's top-level fields that shape the samples (sources and their resolved paths,
    seed, limits; not name, description, output or executor) and the code version. Each later stage:
    its own config minus :data:`EXECUTION_KNOBS` (plus its prompt template's fingerprint) and the
    identity of the stage before it, whose live samples it reads."""
    r = loaded.recipe
    # train/eval (`loupe pipeline`) come after curation: a new training budget reuses the curated run
    top = r.model_dump(
        mode="json", exclude={"stages", "executor", "description", "output", "name", "train", "eval"}
    )
    # generated sources (finedetail) read no files: their type stands in for a path
    paths = [str(loaded.resolve(s.path)) if getattr(s, "path", None) else s.type for s in r.sources]
    prev = _sha({"ingest": top, "paths": paths, "version": LINEAGE_VERSION})
    out = {"ingest": prev}
    templates = _template_fingerprints(r)
    for sid, cfg in zip(stage_ids(r), r.stages):
        own = cfg.model_dump(mode="json", exclude=set(EXECUTION_KNOBS & set(type(cfg).model_fields)))
        if cfg.stage == "caption":
            own["template_sha"] = templates.get(cfg.prompt_template)
        prev = _sha({"stage": sid, "config": own, "input": prev})
        out[sid] = prev
    return out


def lineage_hash(loaded: LoadedRecipe) -> str:
    """The run dir's name: the identity of the last stage, which chains every stage's identity before it
    (so it covers the recipe content minus execution knobs, prompt templates, resolved source paths and
    the code version)."""
    return list(stage_identities(loaded).values())[-1][:12]


def recipe_json_schema() -> dict:
    return R.Recipe.model_json_schema()
