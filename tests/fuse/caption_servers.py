"""Real local HTTP servers for the caption tests (127.0.0.1 only)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


@contextmanager
def serve_process(model: str | None, *extra: str, timeout: float = 300) -> Iterator[str]:
    """``python -m loupe.experts.serve`` as a real process on a free port; yields its /v1 base URL."""
    cmd = [sys.executable, "-m", "loupe.experts.serve", "--port", "0", *extra]
    if model:
        cmd += ["--model", model]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = ""
        deadline = time.time() + timeout
        while time.time() < deadline:
            line = proc.stdout.readline()
            if line.startswith("listening on ") or proc.poll() is not None:
                break
        if not line.startswith("listening on "):
            proc.kill()
            raise RuntimeError(f"server did not start: {line!r} {proc.stderr.read()[-3000:]}")
        yield line.split()[-1] + "/v1"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


class ScriptedServer:
    """An OpenAI-compatible stub whose answers follow a script, to test the client's retry logic.

    ``script`` maps a marker found in the prompt to a list of HTTP statuses answered in turn (the last
    one repeats); 200 answers ``"caption for <prompt>"``. Requests are counted per marker.
    """

    def __init__(
        self, script: dict[str, list[int]], retry_after: str | None = None, answers: dict[str, str] | None = None
    ):
        self.script = script
        self.answers = answers or {}  # marker in the prompt -> the caption answered instead
        self.retry_after = retry_after
        self.calls: dict[str, int] = {}
        self.lock = threading.Lock()
        outer = self

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def _send(self, code: int, obj) -> None:
                data = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                if code == 429 and outer.retry_after:
                    self.send_header("Retry-After", outer.retry_after)
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                self._send(200, {"object": "list", "data": [{"id": "stub", "object": "model"}]})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                prompt = body["messages"][0]["content"]
                marker = next((m for m in outer.script if m in prompt), None)
                with outer.lock:
                    n = outer.calls[marker] = outer.calls.get(marker, 0) + 1
                codes = outer.script.get(marker, [200])
                code = codes[min(n, len(codes)) - 1]
                if code != 200:
                    return self._send(code, {"error": {"message": f"scripted {code}"}})
                content = next((a for m, a in outer.answers.items() if m in prompt), f"caption for {prompt}")
                self._send(200, {"choices": [{"index": 0, "message": {"role": "assistant", "content": content}}]})

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __enter__(self) -> ScriptedServer:
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
