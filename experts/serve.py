"""A minimal OpenAI-compatible chat server over :class:`TransformersCaptioner` (stdlib only).

    python -m loupe.experts.serve --model PATH_OR_HUB_ID --port 8000      # model omitted: SmolLM2

Endpoints: ``GET /v1/models``, ``POST /v1/chat/completions`` (non-streaming, greedy, ``n=1``),
``GET /health``. Concurrent requests are gathered into one left-padded ``generate`` batch (up to
``--max-batch``), so a client with a thread pool gets real batching, as from vLLM. Meant for local
runs and tests; for throughput use vLLM or SGLang, which speak the same protocol.
With ``--port 0`` a free port is picked; the first stdout line is ``listening on http://HOST:PORT``.
"""

from __future__ import annotations

import argparse
import json
import queue
import sys
import threading
import time
import uuid
from concurrent.futures import Future
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from loupe.experts.captioner import Completion, TransformersCaptioner


class BadRequest(ValueError):
    def __init__(self, msg: str, status: int = 400):
        super().__init__(msg)
        self.status = status


def parse_chat(body: Any, served: str, default_max: int) -> tuple[list[dict[str, str]], int]:
    """Validate a chat-completions body -> (messages with string content, max_tokens)."""
    if not isinstance(body, dict):
        raise BadRequest("body must be a JSON object")
    if body.get("model") not in (None, served):
        raise BadRequest(f"model {body.get('model')!r} is not served here; served: {served!r}", 404)
    if body.get("stream"):
        raise BadRequest("stream=true is not supported by this server")
    if body.get("n", 1) != 1:
        raise BadRequest("only n=1 is supported")
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise BadRequest("messages must be a non-empty list")
    out = []
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant"):
            raise BadRequest(f"messages[{i}].role must be system, user or assistant")
        content = m.get("content")
        if isinstance(content, list):  # [{"type": "text", "text": ...}] parts; images are not supported
            if any(not isinstance(p, dict) or p.get("type") != "text" for p in content):
                raise BadRequest(f"messages[{i}].content: only text parts are supported (text-only model)")
            content = "".join(p.get("text", "") for p in content)
        if not isinstance(content, str):
            raise BadRequest(f"messages[{i}].content must be a string or a list of text parts")
        out.append({"role": m["role"], "content": content})
    max_tokens = body.get("max_completion_tokens") or body.get("max_tokens") or default_max
    if not isinstance(max_tokens, int) or max_tokens < 1:
        raise BadRequest(f"max_tokens must be a positive integer, got {max_tokens!r}")
    return out, max_tokens


class Batcher:
    """One worker thread; waiting requests with the same ``max_tokens`` share a ``generate`` call."""

    def __init__(self, model: TransformersCaptioner, max_batch: int):
        self.model = model
        self.max_batch = max_batch
        self.q: queue.Queue[tuple[list[dict], int, Future]] = queue.Queue()
        threading.Thread(target=self._loop, daemon=True, name="batcher").start()

    def submit(self, messages: list[dict], max_tokens: int) -> Future:
        fut: Future = Future()
        self.q.put((messages, max_tokens, fut))
        return fut

    def _loop(self) -> None:
        held: list = []
        while True:
            items = held or [self.q.get()]
            held = []
            while len(items) < self.max_batch:
                try:
                    items.append(self.q.get(timeout=0.01))
                except queue.Empty:
                    break
            key = items[0][1]
            batch = [it for it in items if it[1] == key]
            held = [it for it in items if it[1] != key]
            try:
                results = self.model.complete([m for m, _, _ in batch], key)
                for (_, _, fut), res in zip(batch, results):
                    fut.set_result(res)
            except Exception as e:
                self._one_by_one(batch, e)

    def _one_by_one(self, batch: list, batch_error: Exception) -> None:
        """After a failed batch, each request alone: one that still fails while others pass is that
        request's fault (400, e.g. too long), like vLLM's input errors; if all fail, the server's (500)."""
        errors = []
        for messages, max_tokens, fut in batch:
            try:
                fut.set_result(self.model.complete([messages], max_tokens)[0])
            except Exception as e:
                errors.append((fut, e))
        for fut, e in errors:
            alone = len(batch) > 1 and len(errors) < len(batch)
            fut.set_exception(BadRequest(f"{type(e).__name__}: {e}") if alone else e)


def make_handler(served: str, batcher: Batcher, default_max: int) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt: str, *args: Any) -> None:  # quiet; errors go back to the client
            pass

        def _send(self, status: int, obj: Any) -> None:
            data = json.dumps(obj).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _error(self, status: int, msg: str) -> None:
            self._send(status, {"error": {"message": msg, "type": "invalid_request_error", "code": status}})

        def do_GET(self) -> None:
            if self.path.rstrip("/") == "/v1/models":
                self._send(200, {"object": "list", "data": [
                    {"id": served, "object": "model", "created": 0, "owned_by": "loupe"}]})
            elif self.path == "/health":
                self._send(200, {"status": "ok"})
            else:
                self._error(404, f"no route GET {self.path}")

        def do_POST(self) -> None:
            if self.path.rstrip("/") != "/v1/chat/completions":
                return self._error(404, f"no route POST {self.path}")
            try:
                n = int(self.headers.get("Content-Length") or 0)
                messages, max_tokens = parse_chat(json.loads(self.rfile.read(n) or b"null"), served, default_max)
            except json.JSONDecodeError as e:
                return self._error(400, f"body is not JSON: {e}")
            except BadRequest as e:
                return self._error(e.status, str(e))
            try:
                c: Completion = batcher.submit(messages, max_tokens).result()
            except BadRequest as e:
                return self._error(e.status, str(e))
            except Exception as e:
                return self._error(500, f"{type(e).__name__}: {e}")
            self._send(200, {
                "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": served,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": c.text},
                             "finish_reason": c.finish_reason}],
                "usage": {"prompt_tokens": c.prompt_tokens, "completion_tokens": c.completion_tokens,
                          "total_tokens": c.prompt_tokens + c.completion_tokens},
            })

    return Handler


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m loupe.experts.serve", description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None, help="hub id, local folder or .gguf file; default: packaged SmolLM2")
    ap.add_argument("--served-model-name", default=None, help="id in /v1/models (default: --model)")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    ap.add_argument("--max-batch", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=320, help="default when a request has no max_tokens")
    ap.add_argument("--device", default="auto")
    a = ap.parse_args(argv)
    model = TransformersCaptioner(a.model, None, a.max_new_tokens, a.device, a.max_batch)
    served = a.served_model_name or a.model or "SmolLM2-135M-Instruct"
    server = ThreadingHTTPServer((a.host, a.port), make_handler(served, Batcher(model, a.max_batch), a.max_new_tokens))
    server.daemon_threads = True
    print(f"listening on http://{a.host}:{server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        sys.stdout.flush()


if __name__ == "__main__":
    main()
