"""Exact, pHash and SemDeDup on real photos with planted duplicates, run through the local executor.

20 distinct scikit-image photos + 3 byte-identical copies, 3 resized JPEG re-encodes, 3 crops of
2.5 % per edge (tests/dedup/fixtures.py). Measured on this set: pHash (64 bits) puts re-encodes at
0 bits, these crops at 4-6 bits and distinct photos >= 20 bits apart; EfficientNet-Lite0 cosine is
>= 0.77 between an image and its planted copy and <= 0.49 between distinct photos.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from loupe.pipeline.cli import app
from loupe.pipeline.executors.local import run_local
from loupe.pipeline.executors.plan import make_plan
from loupe.pipeline.query import query
from loupe.pipeline.recipe import load_recipe

from .fixtures import write_planted

SEMDEDUP_EPS = 0.25  # between 1 - 0.77 (weakest planted copy) and 1 - 0.49 (closest distinct pair)


def original(name: str) -> str:
    return name.split("_copy")[0].split("_resized")[0].split("_cropped")[0].split(".")[0] + ".png"


def run_recipe(root: Path, stages: str, name: str):
    (root / f"{name}.yaml").write_text(
        f"name: {name}\noutput: runs\nsources:\n  - type: local_folder\n    name: photos\n    path: photos\n"
        f"stages:\n{stages}"
    )
    plan = make_plan(load_recipe(root / f"{name}.yaml"))
    metrics = run_local(plan, quiet=True)
    names = {
        r["uid"]: r["source_id"] for r in query(plan.run, "SELECT uid, source_id FROM samples").to_pylist()
    }
    return plan.run, metrics, names


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    root = tmp_path_factory.mktemp("dedup")
    kinds = write_planted(root / "photos")
    return root, kinds


def drops_of(run, names, stage):
    rows = query(run, f"SELECT uid, reason, duplicate_of FROM drops WHERE stage = '{stage}'").to_pylist()
    return {names[r["uid"]]: (r["reason"], names.get(r["duplicate_of"])) for r in rows}


def test_exact_then_phash_remove_exactly_the_planted(photos):
    root, kinds = photos
    run, metrics, names = run_recipe(
        root, "  - stage: exact_dedup\n  - stage: phash_dedup\n    max_distance: 6\n", "hashes"
    )
    exact = drops_of(run, names, "exact_dedup")
    assert set(exact) == kinds["identical"]
    assert all(r == ("exact_duplicate", original(n)) for n, r in exact.items())
    near = drops_of(run, names, "phash_dedup")
    assert set(near) == kinds["resized"] | kinds["cropped"]
    assert all(r == ("near_duplicate", original(n)) for n, r in near.items())
    assert metrics["phash_dedup"]["near_duplicates"] == 6
    live = query(run, "SELECT count(*) AS n FROM live").to_pylist()[0]["n"]
    assert live == len(kinds["distinct"])
    rows = query(
        run, "SELECT min(similarity) AS s FROM dedup WHERE method = 'phash' AND NOT kept"
    ).to_pylist()
    assert rows[0]["s"] >= 1 - 6 / 64


def test_phash_threshold_is_respected(photos):
    """At max_distance 0 only the byte-level-equal hashes (the re-encodes) go; the crops stay."""
    root, kinds = photos
    run, _, names = run_recipe(
        root, "  - stage: exact_dedup\n  - stage: phash_dedup\n    max_distance: 0\n", "h0"
    )
    assert set(drops_of(run, names, "phash_dedup")) == kinds["resized"]


@pytest.fixture(scope="module")
def semantic_run(photos):
    root, kinds = photos
    stages = (
        "  - stage: embed\n    batch_size: 8\n"
        f"  - stage: semdedup\n    n_clusters: 4\n    epsilon: {SEMDEDUP_EPS}\n    epsilons: [0.01, 0.05, 0.5]\n"
        "  - stage: select\n    clusters: kmeans\n    n_clusters: 5\n    per_cluster: 2\n"
    )
    return (*run_recipe(root, stages, "semantic"), kinds)


@pytest.mark.slow
def test_semdedup_removes_planted_keeps_every_distinct_photo(semantic_run):
    run, metrics, names, kinds = semantic_run
    dropped = drops_of(run, names, "semdedup")
    planted = kinds["identical"] | kinds["resized"] | kinds["cropped"]
    assert len(dropped) == len(planted) == 9
    assert all(reason == "semantic_duplicate" for reason, _ in dropped.values())
    # one survivor per photo: each removed file duplicates a kept file of the same photo
    assert all(original(n) == original(dup) and dup not in dropped for n, (_, dup) in dropped.items())
    survivors = {original(n) for n in names.values() if n not in dropped}
    assert survivors == kinds["distinct"]
    m = metrics["semdedup"]
    assert m["epsilon"] == SEMDEDUP_EPS and m["kept_eps_0.25"] == 20
    assert m["kept_eps_0.01"] >= m["kept_eps_0.05"] >= m["kept_eps_0.25"] >= m["kept_eps_0.5"]
    assert m["kept_eps_0.01"] > 20  # re-encodes and crops are not within 0.01
    assert m["missing_embedding"] == 0 and m["embedding_model"] == "efficientnet-lite0-imagenet"


@pytest.mark.slow
def test_select_and_clusters_are_queryable(semantic_run):
    run, metrics, names, _ = semantic_run
    clusters = query(run, "SELECT * FROM clusters ORDER BY method, cluster").to_pylist()
    sem = [c for c in clusters if c["method"] == "semdedup"]
    sel = [c for c in clusters if c["method"] == "select"]
    assert sum(c["size"] for c in sem) == 29 and len(sem) == 4
    assert sum(c["size"] for c in sel) == 20 and len(sel) == 5
    # the representative is the member nearest the centroid, and a member of that cluster
    rep_ok = query(
        run,
        "SELECT c.cluster, d.cluster AS member_cluster, d.similarity = (SELECT max(similarity) FROM dedup d2 "
        "WHERE d2.method = 'select' AND d2.cluster = c.cluster) AS nearest "
        "FROM clusters c JOIN dedup d ON d.uid = c.representative AND d.method = 'select' WHERE c.method = 'select'",
    ).to_pylist()
    assert len(rep_ok) == 5 and all(r["member_cluster"] == r["cluster"] and r["nearest"] for r in rep_ok)
    kept = query(
        run, "SELECT cluster, count(*) AS n FROM dedup WHERE method = 'select' AND kept GROUP BY 1"
    ).to_pylist()
    assert all(r["n"] == min(2, next(c["size"] for c in sel if c["cluster"] == r["cluster"])) for r in kept)
    not_selected = query(run, "SELECT count(*) AS n FROM drops WHERE reason = 'not_selected'").to_pylist()[0][
        "n"
    ]
    assert (
        not_selected == 20 - sum(r["n"] for r in kept) and metrics["select"]["selected"] == 20 - not_selected
    )
    # every removed sample has a drops row naming stage and reason
    orphans = query(
        run, "SELECT count(*) AS n FROM dedup d WHERE NOT kept AND uid NOT IN (SELECT uid FROM drops)"
    ).to_pylist()
    assert orphans[0]["n"] == 0
    # and the CLI shows the clusters view
    res = CliRunner().invoke(
        app,
        [
            "query",
            str(run.path),
            "SELECT method, count(*) AS n FROM clusters GROUP BY 1 ORDER BY 1",
            "-f",
            "json",
        ],
    )
    assert res.exit_code == 0, res.output
    assert [json.loads(line) for line in res.output.splitlines()] == [
        {"method": "select", "n": 5},
        {"method": "semdedup", "n": 4},
    ]


@pytest.mark.slow
def test_rerun_resumes_without_duplicating_clusters(semantic_run):
    run, _, _, _ = semantic_run
    before = query(run, "SELECT count(*) AS n FROM clusters").to_pylist()[0]["n"]
    plan = make_plan(load_recipe(run.path.parents[2] / "semantic.yaml"))
    assert plan.run.path == run.path
    metrics = run_local(plan, quiet=True)
    assert metrics["semdedup"]["rows_in"] == 0 and metrics["select"]["rows_in"] == 0
    assert query(run, "SELECT count(*) AS n FROM clusters").to_pylist()[0]["n"] == before


@pytest.mark.slow
def test_resumed_run_dedups_new_files_against_earlier_kept(tmp_path):
    """Run on the 20 distinct photos, then add the 9 planted copies and rerun the same run dir:
    pHash and SemDeDup remove only new files, each as a duplicate of an earlier kept photo."""
    kinds = write_planted(tmp_path / "all")
    (tmp_path / "photos").mkdir()
    for n in kinds["distinct"]:
        (tmp_path / "photos" / n).write_bytes((tmp_path / "all" / n).read_bytes())
    stages = (
        "  - stage: phash_dedup\n    max_distance: 0\n"  # identical copies + re-encodes; crops pass on
        f"  - stage: embed\n    batch_size: 8\n  - stage: semdedup\n    n_clusters: 4\n    epsilon: {SEMDEDUP_EPS}\n"
    )
    run, first, names = run_recipe(tmp_path, stages, "grow")
    assert first["semdedup"]["kept_eps_0.25"] == 20 and first["phash_dedup"]["near_duplicates"] == 0
    clusters_before = query(run, "SELECT max(cluster) AS m FROM clusters").to_pylist()[0]["m"]
    for n in kinds["identical"] | kinds["resized"] | kinds["cropped"]:
        (tmp_path / "photos" / n).write_bytes((tmp_path / "all" / n).read_bytes())
    run2, second, names = run_recipe(tmp_path, stages, "grow")
    assert run2.path == run.path and second["semdedup"]["compared_with_earlier"] == 20
    # pHash at distance 0: identical copies and re-encodes (both hash equal) go, as duplicates of old files
    near = drops_of(run, names, "phash_dedup")
    assert set(near) == kinds["identical"] | kinds["resized"]
    semantic = drops_of(run, names, "semdedup")
    assert set(semantic) == kinds["cropped"]
    assert all(dup == original(n) for n, (_, dup) in {**near, **semantic}.items())
    assert query(run, "SELECT count(*) AS n FROM live").to_pylist()[0]["n"] == 20
    assert query(run, "SELECT min(cluster) AS m FROM clusters").to_pylist()[0]["m"] >= 0
    new_ids = query(
        run, "SELECT count(*) AS n FROM clusters WHERE cluster > ?".replace("?", str(clusters_before))
    )
    assert new_ids.to_pylist()[0]["n"] > 0  # the second run's clusters got fresh ids
