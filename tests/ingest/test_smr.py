"""SMR source: every dataset adapter reads its native release layout (tiny fixtures written in it)."""

from __future__ import annotations

import hashlib
import json
import pickle
from pathlib import Path

import pyarrow as pa
import pytest
import yaml

from loupe.pipeline.errors import RecipeError
from loupe.pipeline.images import decode
from loupe.pipeline.stage import StageContext
from loupe.pipeline.stages.ingest.smr import ADAPTERS, Smr
from loupe.schemas.recipe import Recipe, SmrSource
from loupe.schemas.tables import DROPS, SAMPLES
from loupe.schemas.uid import record_uid

try:  # tests/ingest is a plain folder on sys.path (pytest's default "prepend" import mode)
    from smr_fixtures import BUILDERS, Expect
except ImportError:  # ... or a package, if someone adds an __init__.py
    from .smr_fixtures import BUILDERS, Expect

REPO = Path(__file__).resolve().parents[2]
DATASETS = sorted(BUILDERS)


def _source(tmp_path: Path, dataset: str, path: str, **kw) -> Smr:
    cfg = SmrSource(type="smr", dataset=dataset, path=path, **kw)
    return Smr(cfg, StageContext(run=None, recipe_dir=tmp_path, stage_name="ingest"))


def _read(src: Smr, skip: set[str] | None = None) -> tuple[pa.Table, pa.Table]:
    outs = list(src.read(skip or set()))
    rows = pa.concat_tables([o.rows for o in outs]) if outs else SAMPLES.empty_table()
    drops = pa.concat_tables([o.drops for o in outs]) if outs else DROPS.empty_table()
    return rows, drops


def _build(tmp_path: Path, dataset: str) -> tuple[Expect, Smr]:
    exp = BUILDERS[dataset](tmp_path)
    return exp, _source(tmp_path, exp.dataset, exp.path, split=exp.split)


def test_every_recipe_dataset_has_an_adapter_and_a_fixture():
    names = set(SmrSource.model_fields["dataset"].annotation.__args__)
    assert names == set(ADAPTERS) == set(BUILDERS)


@pytest.mark.parametrize("dataset", DATASETS)
def test_reads_native_layout(tmp_path, dataset):
    exp, src = _build(tmp_path, dataset)
    rows, drops = _read(src)
    assert rows.schema == SAMPLES and drops.schema == DROPS
    got = rows.to_pylist()
    assert [r["source_id"] for r in got] == exp.ids
    assert all(r["source"] == dataset for r in got)
    assert [r["uid"] for r in got] == [record_uid(dataset, i) for i in exp.ids]
    first = got[0]
    assert first["source_id"] == exp.first_id
    assert [(t["from"], t["value"]) for t in first["conversations"]] == exp.first_conversation
    assert (first["width"], first["height"]) == exp.first_size
    assert first["alt_text"] == exp.alt_text
    meta = json.loads(first["meta"])
    assert meta["dataset"] == dataset and meta["split"] == exp.split and meta["format"] == exp.first_format
    for r in got:
        img = decode(r["image"])  # stored bytes are a real image of the recorded size
        assert (img.width, img.height) == (r["width"], r["height"])
        assert r["sha256"] == hashlib.sha256(r["image"]).hexdigest()
        assert r["image_path"] and Path(r["image_path"]).exists()
        turns = r["conversations"]
        assert len(turns) >= 2 and len(turns) % 2 == 0
        assert [t["from"] for t in turns] == ["human", "gpt"] * (len(turns) // 2)
        assert all(t["value"].strip() for t in turns)
    by_reason = {}
    for d in drops.to_pylist():
        assert d["stage"] == "ingest"
        by_reason.setdefault(d["reason"], []).append(d)
    assert sorted(by_reason) == sorted(
        k for k, v in (("missing_image", exp.missing), ("decode_error", exp.corrupt)) if v
    )
    for reason, ids in (("missing_image", exp.missing), ("decode_error", exp.corrupt)):
        dropped = by_reason.get(reason, [])
        assert [d["uid"] for d in dropped] == [record_uid(dataset, i) for i in ids]
        assert all(d["detail"].startswith(f"{i}: ") for d, i in zip(dropped, ids))


@pytest.mark.parametrize("dataset", DATASETS)
def test_folder_that_is_not_the_dataset_is_a_recipe_error(tmp_path, dataset):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("not a dataset")
    split = "test" if dataset == "mathvision" else "train"
    with pytest.raises(RecipeError) as e:
        list(_source(tmp_path, dataset, "empty", split=split).read(set()))
    msg = str(e.value)
    assert msg.startswith(f"source {dataset!r} ({dataset}): path 'empty' (resolved to {tmp_path / 'empty'})")
    assert f"does not look like a {dataset} release: expected" in msg and "\n" not in msg


@pytest.mark.parametrize("dataset", ["chartqa", "geoqa3"])
def test_missing_folder_is_a_recipe_error(tmp_path, dataset):
    with pytest.raises(RecipeError, match=r"path 'nowhere' \(resolved to .*nowhere\) is not a folder"):
        list(_source(tmp_path, dataset, "nowhere", name="mine").read(set()))


def test_unknown_split_names_the_field_and_the_valid_ones(tmp_path):
    exp, _ = _build(tmp_path, "chartqa")
    with pytest.raises(RecipeError) as e:
        list(_source(tmp_path, "chartqa", exp.path, split="dev").read(set()))
    assert (
        str(e.value) == "source 'chartqa': split 'dev': chartqa has no split 'dev'; valid: train, val, test"
    )


def test_skip_rereads_nothing_already_ingested(tmp_path):
    exp, src = _build(tmp_path, "chartqa")
    rows, drops = _read(src)
    done = set(rows["uid"].to_pylist()) | set(drops["uid"].to_pylist())
    assert len(done) == 4
    again, again_drops = _read(src, skip=done)
    assert again.num_rows == 0 and again_drops.num_rows == 0
    # skipping one record leaves the others (and their drops) unchanged
    first = record_uid("chartqa", exp.first_id)
    part, part_drops = _read(src, skip={first})
    assert part["uid"].to_pylist() == [u for u in rows["uid"].to_pylist() if u != first]
    assert part_drops.select(["uid", "reason"]).to_pylist() == drops.select(["uid", "reason"]).to_pylist()


def test_uids_are_stable_and_follow_the_source_name(tmp_path):
    exp, src = _build(tmp_path, "tabmwp")
    a, _ = _read(src)
    b, _ = _read(src)
    assert a["uid"].to_pylist() == b["uid"].to_pylist()
    named, _ = _read(_source(tmp_path, "tabmwp", exp.path, name="tables"))
    assert named["source"].to_pylist() == ["tables", "tables"]
    assert named["uid"].to_pylist() == [record_uid("tables", i) for i in exp.ids]


def test_limit_counts_records(tmp_path):
    exp, _ = _build(tmp_path, "dvqa")
    rows, drops = _read(_source(tmp_path, "dvqa", exp.path, limit=1))
    assert rows["source_id"].to_pylist() == exp.ids[:1] and drops.num_rows == 0


def test_batches_hold_at_most_64_samples(tmp_path):
    root = tmp_path / "tabmwp"
    root.mkdir()
    problems = {str(i): {"question": f"What is {i}?", "answer": str(i), "table": "a | b"} for i in range(150)}
    (root / "problems_train.json").write_text(json.dumps(problems))
    # no table images at all: every record becomes a drop, and still no batch exceeds 64
    outs = list(_source(tmp_path, "tabmwp", "tabmwp").read(set()))
    sizes = [o.rows.num_rows + o.drops.num_rows for o in outs]
    assert sizes == [64, 64, 22]
    assert {d["reason"] for o in outs for d in o.drops.to_pylist()} == {"missing_image"}


def test_ai2d_splits_follow_the_test_id_file(tmp_path):
    exp, _ = _build(tmp_path, "ai2d")
    test, _ = _read(_source(tmp_path, "ai2d", exp.path, split="test"))
    assert test["source_id"].to_pylist() == ["images/2.png"]
    everything, drops = _read(_source(tmp_path, "ai2d", exp.path, split="all"))
    assert everything.num_rows == 4 and drops.num_rows == 2
    abc = everything.filter(pa.compute.equal(everything["source_id"], "abc_images/0.png")).to_pylist()[0]
    assert abc["conversations"][0]["value"].startswith("What is A in the diagram?\nA. ears")
    assert json.loads(abc["meta"])["category"] == "partsOfA"
    (tmp_path / exp.path / "ai2d" / "ai2d_test_ids.csv").unlink()
    with pytest.raises(RecipeError, match=r"split 'train': train/test need 'ai2d_test_ids.csv'"):
        _read(_source(tmp_path, "ai2d", exp.path))


def test_scienceqa_minival_images_come_from_the_problem_split(tmp_path):
    exp, _ = _build(tmp_path, "scienceqa")
    rows, _ = _read(_source(tmp_path, "scienceqa", exp.path, split="minival"))
    assert rows["source_id"].to_pylist() == ["9"]
    assert rows["image_path"][0].as_py().endswith("images/val/9/image.png")


def test_geoqa_diagrams_become_png_and_keep_native_fields(tmp_path):
    exp, src = _build(tmp_path, "geoqa3")
    rows, _ = _read(src)
    bgr = rows.to_pylist()[1]
    img = decode(bgr["image"])
    assert img.format == "PNG" and img.getpixel((0, 0)) == (0, 0, 255)  # OpenCV BGR blue -> RGB blue
    meta = json.loads(rows["meta"][0].as_py())
    assert meta["id"] == "1" and meta["answer"] == "B" and meta["problem_zh"] == "如图，求∠1的度数"


def test_geoqa_pickle_with_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    folder = tmp_path / "GeoQA3"
    folder.mkdir()
    (folder / "train.pk").write_bytes(pickle.dumps([{"id": 1, "x": Evil()}]))
    with pytest.raises(RecipeError, match=r"is not a GeoQA pickle: refusing global builtins.print"):
        list(_source(tmp_path, "geoqa3", "GeoQA3").read(set()))


def test_malformed_release_json_is_a_recipe_error(tmp_path):
    (tmp_path / "tabmwp").mkdir()
    (tmp_path / "tabmwp" / "problems_train.json").write_text("{broken")
    with pytest.raises(RecipeError, match=r"problems_train.json is not valid JSON"):
        list(_source(tmp_path, "tabmwp", "tabmwp").read(set()))


def test_smr_recipe_validates():
    raw = yaml.safe_load((REPO / "recipes" / "smr.yaml").read_text())
    recipe = Recipe.model_validate(raw)
    assert {s.type for s in recipe.sources} == {"smr"}
    datasets = [s.dataset for s in recipe.sources]
    assert sorted(datasets) == sorted(set(ADAPTERS) - {"release"}) and len(datasets) == 11  # all of SMR
    by_name = {s.dataset: s for s in recipe.sources}
    assert by_name["mathvision"].split == "train" and by_name["geometry3k"].split == "train"
    assert [s.stage for s in recipe.stages] == ["exact_dedup", "ocr", "caption", "export"]
    assert recipe.stages[1].backend == "rapidocr" and recipe.stages[2].backend == "composer"


def test_smr_source_runs_through_the_local_executor(tmp_path):
    from loupe.pipeline.executors.local import run_local
    from loupe.pipeline.executors.plan import make_plan
    from loupe.pipeline.query import query
    from loupe.pipeline.recipe import load_recipe

    BUILDERS["chartqa"](tmp_path)
    BUILDERS["tabmwp"](tmp_path)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "name: smr_small\noutput: runs\nsources:\n"
        "  - {type: smr, dataset: chartqa, path: chartqa}\n"
        "  - {type: smr, dataset: tabmwp, path: tabmwp, name: tabmwp}\n"
        "stages:\n  - stage: exact_dedup\n"
    )
    plan = make_plan(load_recipe(recipe))
    metrics = run_local(plan, quiet=True)
    assert metrics["ingest"]["rows_out"] == 4 and metrics["ingest"]["drops"] == 4
    got = query(
        plan.run, "SELECT source, count(*) n FROM samples GROUP BY source ORDER BY source"
    ).to_pylist()
    assert got == [{"source": "chartqa", "n": 2}, {"source": "tabmwp", "n": 2}]
    again = run_local(make_plan(load_recipe(recipe)), quiet=True)
    assert again["ingest"]["rows_in"] == 0 and again["ingest"]["skipped_done"] == 8


# ---------------------------------------------------------------- SMR as released (issue: fidelity)
def test_mathvision_train_leaves_testmini_out(tmp_path):
    exp, _ = _build(tmp_path, "mathvision")
    data = tmp_path / exp.path / "data"
    # testmini is a subset of test: its problems must never reach training
    mini_row = {"id": "6", "question": "Q", "options": ["A", "B"], "answer": "B", "image": "images/6.jpg"}
    (data / "testmini.jsonl").write_text(json.dumps(mini_row) + "\n")
    train, train_drops = _read(_source(tmp_path, "mathvision", exp.path))  # split: train is the default
    assert train["source_id"].to_pylist() == ["4", "39"]
    assert "6" not in train["source_id"].to_pylist() + [d["uid"] for d in train_drops.to_pylist()]
    test, _ = _read(_source(tmp_path, "mathvision", exp.path, split="test"))
    assert test["source_id"].to_pylist() == ["4", "6", "39"]  # evaluation reads it all
    mini, _ = _read(_source(tmp_path, "mathvision", exp.path, split="testmini"))
    assert mini["source_id"].to_pylist() == ["6"]
    (data / "testmini.jsonl").unlink()
    with pytest.raises(RecipeError, match=r"expected 'data/testmini.jsonl' beside data/test.jsonl"):
        _read(_source(tmp_path, "mathvision", exp.path))


def test_geometry3k_train_is_train_plus_val(tmp_path):
    exp, _ = _build(tmp_path, "geometry3k")
    only, _ = _read(_source(tmp_path, "geometry3k", exp.path, split="train_only"))
    val, _ = _read(_source(tmp_path, "geometry3k", exp.path, split="val"))
    assert only["source_id"].to_pylist() == ["2", "10"] and val["source_id"].to_pylist() == ["2101"]


def test_dvqa_keeps_template_id_and_answer_bbox(tmp_path):
    exp, src = _build(tmp_path, "dvqa")
    rows, _ = _read(src)
    q = json.loads(rows["meta"][0].as_py())["questions"]
    assert [(x["template_id"], x["answer_bbox"]) for x in q] == [("data", [10, 20, 30, 8]), ("structure", None)]


def test_geoqa3_in_the_layout_smr_distributes(tmp_path):
    base = tmp_path / "smr" / "GeoQA3"
    for pid, label in ((3, 1), (12, 0)):
        (base / "json").mkdir(parents=True, exist_ok=True)
        (base / "json" / f"{pid}.json").write_text(json.dumps(
            {"id": pid, "subject": "如图，求∠1", "choices": ["40°", "50°"], "label": label,
             "English_problem": f"Find angle {pid}.", "manual_program": ["g_minus"]}, ensure_ascii=False))
    from smr_fixtures import image
    image(base / "image" / "3.png", (30, 20))
    rows, drops = _read(_source(tmp_path, "geoqa3", "smr"))
    assert rows["source_id"].to_pylist() == ["3"] and drops["reason"].to_pylist() == ["missing_image"]
    conv = rows["conversations"][0].as_py()
    assert conv[0]["value"].startswith("Find angle 3.\nA. 40°\nB. 50°") and conv[1]["value"] == "B"
    assert json.loads(rows["meta"][0].as_py())["problem_zh"] == "如图，求∠1"


def test_geoqa_plus_in_internvls_layout(tmp_path):
    root = tmp_path / "smr"
    from smr_fixtures import image
    image(root / "geoqa+" / "images" / "1.png", (33, 22))
    recs = [{"id": 1, "image": "geoqa+/images/1.png",
             "conversations": [{"from": "human", "value": "<image>\nFind AB.\nA. 1\nB. 2"},
                               {"from": "gpt", "value": "AB = 2.\nAnswer: B"}]}]
    (root / "geoqa+.jsonl").write_text("\n".join(json.dumps(r) for r in recs))
    rows, _ = _read(_source(tmp_path, "geoqa_plus", "smr"))
    assert rows["source_id"].to_pylist() == ["1"]
    assert [t["value"] for t in rows["conversations"][0].as_py()] == ["Find AB.\nA. 1\nB. 2", "AB = 2.\nAnswer: B"]


def test_an_adapter_that_finds_nothing_is_an_error(tmp_path):
    (tmp_path / "dvqa" / "qa").mkdir(parents=True)
    (tmp_path / "dvqa" / "qa" / "train_qa.json").write_text("[]")
    with pytest.raises(RecipeError, match=r"\(dvqa\): path 'dvqa' .*: the dvqa adapter found no records \(split 'train'\)"):
        _read(_source(tmp_path, "dvqa", "dvqa"))


def test_answer_style_letter_is_llava_short_form(tmp_path):
    exp, _ = _build(tmp_path, "scienceqa")
    rows, _ = _read(_source(tmp_path, "scienceqa", exp.path, answer_style="letter"))
    q, a = rows["conversations"][0].as_py()
    assert q["value"].endswith("D. Oklahoma\nAnswer with the option's letter from the given choices directly.")
    assert a["value"] == "A"


def test_release_annotation_must_be_named_when_ambiguous(tmp_path):
    exp, _ = _build(tmp_path, "release")
    (tmp_path / exp.path / "other.json").write_text("[]")
    with pytest.raises(RecipeError, match=r"expected exactly one LLaVA-format '\*.json' inside it"):
        _read(_source(tmp_path, "release", exp.path))
    rows, _ = _read(_source(tmp_path, "release", exp.path, annotation="SMR.json"))
    assert rows["source_id"].to_pylist() == exp.ids
    assert json.loads(rows["meta"][1].as_py())["origin"] == "DVQA"
