"""The single-JSON exports (llava_json, llava_plain_json, mg_llava_boxes) on Ray: built by slices in
parallel as JSON-array fragments, joined by one streaming pass into ONE file byte-identical to the
local executor's (LLaVA's loader ``json.load``s one file), resume-safe.
"""

from __future__ import annotations

import json
import random
import shutil
import uuid

import pytest
from ray_helpers import private_ray

from loupe.pipeline.executors.local import run_local
from loupe.pipeline.executors.plan import make_plan
from loupe.pipeline.recipe import load_recipe
from loupe.pipeline.stages.export.formats import json_fragment, write_json_array
from loupe.pipeline.storage import open_storage

JSON_FILES = ["llava.json", "llava_plain.json", "mg_llava_boxes.json"]


# ------------------------------------------------------------------------------ fragments, no Ray
@pytest.mark.parametrize("indent", [None, 1])
@pytest.mark.parametrize("where", ["local", "memory"])
def test_fragments_joined_are_json_dumps_of_all_items_byte_for_byte(tmp_path, indent, where):
    rng = random.Random(0)
    items = [
        {"id": f"u{i}", "boxes": [[i, 2, 3, 4]] * (i % 3), "text": 'é ünï\n"q"' * (i % 2)} for i in range(23)
    ]
    root = str(tmp_path) if where == "local" else f"memory://t-{uuid.uuid4().hex[:8]}/run"
    out = open_storage(root)
    parts = out.child("_parts")
    for trial in range(4):
        cuts = sorted(rng.sample(range(1, len(items)), 5)) if trial else []
        slices = [items[a:b] for a, b in zip([0, *cuts], [*cuts, len(items)])]
        slices.insert(2, [])  # an empty slice writes no fragment
        names = []
        for k, sl in enumerate(slices):
            if sl:
                names.append(f"{k:05d}.json")
                parts.write_text(names[-1], json_fragment(sl, indent))
        write_json_array(out, "all.json", parts, names, indent)
        assert out.read_text("all.json") == json.dumps(items, ensure_ascii=False, indent=indent)
    write_json_array(out, "none.json", parts, [], indent)
    assert out.read_text("none.json") == json.dumps([], indent=indent) == "[]"


def test_a_failed_join_leaves_the_previous_file_whole(tmp_path):
    out = open_storage(tmp_path)
    out.write_text("llava.json", "[1]")
    out.child("_parts").write_text("00000.json", "2")
    with pytest.raises(FileNotFoundError):  # the second fragment is missing: the join fails midway
        write_json_array(out, "llava.json", out.child("_parts"), ["00000.json", "00001.json"], None)
    assert out.read_text("llava.json") == "[1]"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["_parts", "llava.json"]  # no temp file left


def test_join_on_s3_streams_a_large_file_as_one_object(tmp_path):
    """On a real S3 API (moto): 12 MB of fragments, more than one upload part, give one object with
    exactly json.dumps' bytes; a join that fails leaves no half object (on S3: no object)."""
    pytest.importorskip("moto", reason="pip install 'loupe[test]'")
    pytest.importorskip("flask", reason="moto's server mode needs flask: pip install 'moto[server]'")
    from s3_helpers import BUCKET, moto_s3

    items = [{"id": f"u{i:04d}", "text": "x" * 4000 + "é"} for i in range(3000)]  # ~12 MB
    with moto_s3():
        out = open_storage(f"s3://{BUCKET}/{uuid.uuid4().hex[:8]}")
        parts = out.child("_parts")
        names = [f"{k:05d}.json" for k in range(3)]
        for k, name in enumerate(names):
            parts.write_text(name, json_fragment(items[k * 1000 : (k + 1) * 1000], 1))
        write_json_array(out, "llava.json", parts, names, 1)
        assert out.read_text("llava.json") == json.dumps(items, ensure_ascii=False, indent=1)
        assert len(json.loads(out.read_text("llava.json"))) == 3000
        assert sorted(out.sizes("")) == ["llava.json"]  # one object, nothing else beside it
        with pytest.raises(Exception, match="cannot write"):
            write_json_array(out, "llava.json", parts, [*names, "00009.json"], 1)
        # pyarrow publishes a stream when it is closed, so the storage layer deletes the key: none
        assert not out.exists("llava.json")


# ------------------------------------------------------------------------------ local == Ray
RECIPE = """name: jx
output: runs
sources:
  - {{type: local_folder, name: demo, path: {images}}}
stages:
  - {{stage: detect, backend: haar}}
  - {{stage: caption, backend: composer}}
  - stage: export
    batch_size: 4
    formats: [llava_json, llava_plain_json, mg_llava_boxes, llama3_jsonl]
"""


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.timeout(420)
def test_ray_json_exports_equal_the_local_files_and_resume_after_a_kill(tmp_path, demo_images):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE.format(images=demo_images))
    local = make_plan(load_recipe(recipe), str(tmp_path / "local"))
    run_local(local, quiet=True)
    lexp = local.run.path / "export"
    live = len(local.run.live_uids())
    llava = json.loads((lexp / "llava.json").read_text())
    boxes = json.loads((lexp / "mg_llava_boxes.json").read_text())
    # facts the comparison rests on: several slices' worth of records, some with boxes, some with none
    assert len(llava) == len(boxes) == live > 12
    assert any(b["boxes"] for b in boxes) and not all(b["boxes"] for b in boxes)

    # the Ray run starts from a copy of the local run: only export (rerun_all) runs again
    shutil.copytree(tmp_path / "local", tmp_path / "ray")
    plan = make_plan(load_recipe(recipe), str(tmp_path / "ray"))
    rexp = plan.run.path / "export"
    for name in JSON_FILES + ["stats.json"]:
        (rexp / name).unlink()
    with private_ray(__name__):
        from loupe.pipeline.executors.ray import run_ray

        m = run_ray(plan, quiet=True)
        assert m["export"]["distributed"] and m["export"]["records"] == len(llava)
        _assert_same(rexp, lexp)
        assert not (rexp / "_parts").exists()

        # a driver killed after its slices wrote their fragments, before the join: stale fragments
        # (of more slices than this run has) and a half-written temp file are left behind
        parts = rexp / "_parts"
        parts.mkdir()
        for k in (0, 1, 40):
            (parts / f"{k:05d}.llava_json.json").write_text('{"id": "stale"}')
        (rexp / ".tmp-llava.json.deadbeef").write_text('[\n {"id": "half')
        (rexp / "llava.json").write_text("[]")  # and an older, smaller export in place
        run_ray(make_plan(load_recipe(recipe), str(tmp_path / "ray")), quiet=True)
        _assert_same(rexp, lexp)
        assert not parts.exists() and not list(rexp.glob(".tmp-*"))


def _assert_same(rexp, lexp) -> None:
    for name in [*JSON_FILES, "conversations.jsonl"]:
        assert (rexp / name).read_bytes() == (lexp / name).read_bytes(), name
    for name in JSON_FILES:
        items = json.loads((rexp / name).read_text())
        ids = [i["id"] for i in items]
        assert len(ids) == len(set(ids)), f"{name}: a record written twice"
    assert json.loads((rexp / "stats.json").read_text()) == json.loads((lexp / "stats.json").read_text())
