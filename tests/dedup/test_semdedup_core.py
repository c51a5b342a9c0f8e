"""SemDeDup core: blocked implementation == the release's all-pairs code, eps sweep, blocks, variants."""

from __future__ import annotations

import numpy as np
import pytest

from loupe.pipeline.stages.dedup.semdedup import (
    pick_epsilon,
    representatives,
    semdedup,
    semdedup_clusters,
    semdedup_naive,
    spherical_kmeans,
)

EPS = [0.01, 0.02, 0.05, 0.1, 0.2, 0.3]


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def planted():
    """5000 unit vectors in 512-d around 40 topics (cosine to the topic ~0.6, between members of a
    topic ~0.36, like real embeddings) + 600 planted near-duplicates of the first 300, two each with
    noise norm 0.05-0.3: cosine to the source 0.958-0.999, to each other >= 0.917."""
    rng = np.random.default_rng(0)
    topics = unit(rng.standard_normal((40, 512)))
    base = unit(topics[rng.integers(0, 40, 5000)] + 1.3 * unit(rng.standard_normal((5000, 512))))
    src = np.repeat(np.arange(300), 2)
    noise = rng.standard_normal((600, 512)) * rng.uniform(0.05, 0.3, (600, 1)) / np.sqrt(512)
    x = unit(np.vstack([base, base[src] + noise]))
    return x, src


@pytest.fixture(scope="module")
def clustered(planted):
    x, _ = planted
    return semdedup(x, n_clusters=40, epsilons=EPS, block_size=128, kmeans_iters=10, seed=0)


def test_kept_set_equals_naive_all_pairs_per_cluster(planted, clustered):
    x, _ = planted
    naive = semdedup_naive(x, EPS, clustered.labels, clustered.similarity_to_centroid)
    for e in EPS:
        assert np.array_equal(clustered.removed[e], naive[e]), e
    # the planted copies are the only near-duplicates: at eps 0.2 every group keeps exactly one
    assert clustered.kept_count(0.2) == 5000


@pytest.mark.parametrize("keep", ["easy", "random"])
def test_other_orders_equal_naive(planted, clustered, keep):
    x, _ = planted
    r = semdedup_clusters(
        x, clustered.labels, clustered.similarity_to_centroid, EPS, keep, block_size=97, seed=7
    )
    naive = semdedup_naive(x, EPS, clustered.labels, clustered.similarity_to_centroid, keep=keep, seed=7)
    for e in EPS:
        assert np.array_equal(r.removed[e], naive[e]), (keep, e)


def test_same_groups_as_global_all_pairs(planted, clustered):
    """Without clustering (one global all-pairs pass) the same duplicate groups collapse: clustering
    only decides which member of a planted group survives, never how many."""
    x, src = planted
    glob = semdedup_naive(x, [0.2], labels=None)[0.2]
    group = np.r_[np.arange(5000), src]  # planted copy k belongs to group src[k]
    for removed in (glob, clustered.removed[0.2]):
        kept_groups = group[~removed]
        assert len(kept_groups) == 5000 and len(np.unique(kept_groups)) == 5000


def test_eps_sweep_is_monotone(clustered):
    counts = [clustered.kept_count(e) for e in EPS]
    assert counts == sorted(counts, reverse=True) and counts[0] > counts[-1]
    for a, b in zip(EPS, EPS[1:]):  # larger eps removes a superset
        assert np.all(clustered.removed[b] | ~clustered.removed[a])


def test_blocking_does_not_change_the_answer(planted, clustered):
    x, _ = planted
    args = (x, clustered.labels, clustered.similarity_to_centroid, EPS)
    unblocked = semdedup_clusters(*args, block_size=len(x))
    for b in (2, 7, 128):
        r = semdedup_clusters(*args, block_size=b)
        # the same dot products summed in another BLAS blocking: equal up to float32 rounding
        np.testing.assert_allclose(r.max_similarity, unblocked.max_similarity, atol=1e-6)
        assert np.array_equal(r.duplicate_of, unblocked.duplicate_of)
        for e in EPS:
            assert np.array_equal(r.removed[e], unblocked.removed[e])


def test_duplicate_of_is_earlier_member_with_max_similarity(planted, clustered):
    x, _ = planted
    r = clustered
    for j in np.flatnonzero(r.removed[0.1])[:50]:
        i = r.duplicate_of[j]
        assert r.labels[i] == r.labels[j]
        assert r.similarity_to_centroid[i] <= r.similarity_to_centroid[j]  # hard: farther comes first
        assert np.isclose(float(x[i] @ x[j]), r.max_similarity[j], atol=1e-5)


def test_paper_rule_counts_removed_members():
    """a~b, b~c, a!~c: the paper removes c (its M counts the removed b); greedy keeps c."""
    a = np.array([1.0, 0.0])
    b = np.array([np.cos(0.3), np.sin(0.3)])
    c = np.array([np.cos(0.6), np.sin(0.6)])
    x = unit(np.stack([a, b, c]))
    labels = np.zeros(3, np.int64)
    sim = np.array([0.1, 0.2, 0.3], np.float32)  # hard order: a, b, c
    eps = 1 - np.cos(0.45)  # threshold between cos(0.3) and cos(0.6)
    paper = semdedup_clusters(x, labels, sim, [eps])
    greedy = semdedup_clusters(x, labels, sim, [eps], variant="greedy", block_size=2)
    assert paper.removed[eps].tolist() == [False, True, True]
    assert greedy.removed[eps].tolist() == [False, True, False]


def test_kept_before_go_first_and_stay():
    """A resumed run: vectors kept earlier lead their cluster and are never removed."""
    x = unit(np.array([[1.0, 0.0], [1.0, 0.01], [1.0, 0.02]]))
    labels = np.zeros(3, np.int64)
    sim = np.array([0.9, 0.1, 0.5], np.float32)  # hard order would be 1, 2, 0
    plain = semdedup_clusters(x, labels, sim, [0.01])
    assert plain.removed[0.01].tolist() == [True, False, True]
    # the paper's M counts the removed 1 (nearest to 2); greedy compares with kept members only
    for variant, dup in (("paper", [0, 1]), ("greedy", [0, 0])):
        prior = np.array([True, False, False])
        r = semdedup_clusters(x, labels, sim, [0.01], variant=variant, kept_before=prior)
        assert r.removed[0.01].tolist() == [False, True, True] and r.duplicate_of.tolist()[1:] == dup


def test_greedy_removes_a_subset_and_blocks_agree(planted, clustered):
    x, _ = planted
    args = (x, clustered.labels, clustered.similarity_to_centroid, [0.05, 0.3])
    g = semdedup_clusters(*args, variant="greedy", block_size=64)
    g_one = semdedup_clusters(*args, variant="greedy", block_size=len(x))
    for e in (0.05, 0.3):
        assert np.array_equal(g.removed[e], g_one.removed[e])
        assert np.all(~g.removed[e] | clustered.removed[e])


def test_target_size_picks_nearest_eps(clustered):
    # 0.1, 0.2 and 0.3 all keep exactly the 5000 distinct vectors: the tie goes to the smallest eps
    assert pick_epsilon(clustered, 5000) == 0.1
    assert pick_epsilon(clustered, clustered.kept_count(0.02) + 3) == 0.02
    assert pick_epsilon(clustered, 10**9) == 0.01


def test_kmeans_caps_k_and_representatives():
    rng = np.random.default_rng(1)
    x = unit(rng.standard_normal((5, 8)))
    km = spherical_kmeans(x, 50, iters=5)
    assert len(km.centroids) == 5 and sorted(km.labels.tolist()) == [0, 1, 2, 3, 4]
    assert km.gpu is False  # faiss-cpu here
    labels = np.array([0, 0, 1, 1, 1])
    sim = np.array([0.5, 0.9, 0.2, 0.7, 0.7], np.float32)
    assert representatives(labels, sim, 3).tolist() == [1, 3, -1]


def test_bad_input_is_a_clear_error():
    with pytest.raises(ValueError, match="epsilons"):
        semdedup_clusters(np.eye(3), np.zeros(3), np.zeros(3), [1.5])
    with pytest.raises(ValueError, match="NaN"):
        semdedup_clusters(np.full((2, 2), np.nan), np.zeros(2), np.zeros(2), [0.1])
