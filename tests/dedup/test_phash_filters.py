"""pHash neighbour search, DenseFusion resolution rule, CLIP-score filter and per-cluster selection."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from loupe.pipeline.errors import RecipeError
from loupe.pipeline.rundir import RunDir
from loupe.pipeline.stage import StageContext
from loupe.pipeline.stages.dedup.phash import near_duplicates, pack
from loupe.pipeline.stages.filters import ClipScoreFilter, ResolutionFilter
from loupe.pipeline.stages.select import select_per_cluster
from loupe.schemas.recipe import ClipScoreFilterConfig, ResolutionFilterConfig
from loupe.schemas.tables import EMBEDDINGS


def bits(*flip: int, n: int = 64) -> np.ndarray:
    b = np.zeros(n, bool)
    b[list(flip)] = True
    return b


def test_phash_only_kept_images_claim_later_ones():
    # a -2 bits- b -2 bits- c, a -4 bits- c; d far away; e identical to d
    codes = pack(np.stack([bits(), bits(0, 1), bits(0, 1, 2, 3), bits(*range(30)), bits(*range(30))]))
    dup, dist = near_duplicates(codes, 3)
    assert dup.tolist() == [-1, 0, -1, -1, 3]  # c is 4 from the kept a; b was removed, so c stays
    assert dist.tolist() == [-1, 2, -1, -1, 0]
    dup, _ = near_duplicates(codes, 4)
    assert dup.tolist() == [-1, 0, 0, -1, 3]


def test_phash_hash_sizes_not_multiple_of_8():
    codes = pack(np.stack([bits(n=25), bits(24, n=25), bits(*range(10), n=25)]))
    assert codes.shape == (3, 4)
    assert near_duplicates(codes, 1)[0].tolist() == [-1, 0, -1]


def test_phash_scales_past_quadratic_python():
    rng = np.random.default_rng(0)
    raw = rng.integers(0, 2, (20000, 64)).astype(bool)
    raw[10000:10100] = raw[:100]
    dup, _ = near_duplicates(pack(raw), 4)
    assert sorted(np.flatnonzero(dup >= 0).tolist()) == list(range(10000, 10100))


@pytest.mark.parametrize(
    ("w", "h", "cap", "reason"),
    [
        (448, 448, None, None),
        (447, 1000, None, "low_resolution"),
        (1000, 447, None, "low_resolution"),
        (2000, 448, None, None),
        (2000, 448, 3.0, "aspect_ratio"),
        (1300, 448, 3.0, None),
        (None, 500, None, "unknown_size"),
    ],
)
def test_resolution_filter_densefusion_rule(w, h, cap, reason, tmp_path):
    cfg = ResolutionFilterConfig(stage="resolution_filter", max_aspect_ratio=cap)
    assert cfg.min_short_edge == 448
    f = ResolutionFilter(cfg, StageContext(RunDir(tmp_path), tmp_path, "resolution_filter"))
    verdict = f.check({"uid": "u", "width": w, "height": h})
    assert (verdict[0] if verdict else None) == reason
    out = f(pa.table({"uid": ["u"], "width": pa.array([w], pa.int32()), "height": pa.array([h], pa.int32())}))
    assert out.drops.num_rows == (reason is not None)


def _embeddings_run(tmp_path, rows) -> StageContext:
    run = RunDir(tmp_path / "run")
    run.commit(
        "embed", "embeddings", pa.Table.from_pylist(rows, schema=EMBEDDINGS), None, [r["uid"] for r in rows]
    )
    return StageContext(run, tmp_path, "clip_score_filter")


def test_clip_score_filter(tmp_path):
    e0, e1 = [1.0, 0.0], [0.0, 1.0]
    s = [0.6, 0.8]  # cosine 0.6 with e0
    rows = [
        {"uid": "good", "model": "clip", "kind": "image", "vector": e0},
        {"uid": "good", "model": "clip", "kind": "text", "vector": e0},
        {"uid": "weak", "model": "clip", "kind": "image", "vector": e0},
        {"uid": "weak", "model": "clip", "kind": "text", "vector": s},
        {"uid": "bad", "model": "clip", "kind": "image", "vector": e0},
        {"uid": "bad", "model": "clip", "kind": "text", "vector": e1},
        {"uid": "notext", "model": "clip", "kind": "image", "vector": e0},
    ]
    ctx = _embeddings_run(tmp_path, rows)
    f = ClipScoreFilter(ClipScoreFilterConfig(stage="clip_score_filter", min_score=0.5), ctx)
    out = f(pa.table({"uid": ["good", "weak", "bad", "notext"]}))
    assert {r["uid"]: r["reason"] for r in out.drops.to_pylist()} == {
        "bad": "low_clip_score",
        "notext": "no_text",
    }
    strict = ClipScoreFilter(ClipScoreFilterConfig(stage="clip_score_filter", min_score=0.7), ctx)
    assert strict(pa.table({"uid": ["good", "weak"]})).drops["uid"].to_pylist() == ["weak"]  # 0.6 < 0.7


def test_clip_score_filter_needs_text_embeddings(tmp_path):
    ctx = _embeddings_run(tmp_path, [{"uid": "a", "model": "lite0", "kind": "image", "vector": [1.0, 0.0]}])
    f = ClipScoreFilter(ClipScoreFilterConfig(stage="clip_score_filter"), ctx)
    with pytest.raises(RecipeError, match="text: true"):
        f(pa.table({"uid": ["a"]}))


def test_select_per_cluster_quota_and_ties():
    labels = np.array([0, 0, 0, 1, 1, 2])
    score = np.array([0.9, 0.5, 0.9, 0.1, 0.2, 0.0])
    uids = ["b", "a", "a2", "c", "d", "e"]
    assert select_per_cluster(labels, score, uids, 2).tolist() == [True, False, True, True, True, True]
    assert select_per_cluster(labels, score, uids, 1).tolist() == [False, False, True, False, True, True]
    prior = np.array(
        [False, True, False, False, False, False]
    )  # selected by an earlier run: stays, fills quota
    assert select_per_cluster(labels, score, uids, 1, prior).tolist() == [
        False,
        True,
        False,
        False,
        True,
        True,
    ]


def test_select_stage_fails_clearly_without_embeddings(tmp_path):
    from loupe.pipeline.stages.select import Select
    from loupe.schemas.recipe import SelectConfig

    run = RunDir(tmp_path / "run")
    stage = Select(SelectConfig(stage="select"), StageContext(run, tmp_path, "select"))
    with pytest.raises(RecipeError, match="add an `embed` stage"):
        stage(pa.table({"uid": ["a"]}))
