"""A real HTTP image server on 127.0.0.1 for URL-ingest tests and the ingest benchmark.

Serves generated images (crops of scikit-image's bundled photos, JPEG and PNG) plus bad URLs:
``/404``, ``/notimage`` (an HTML body), ``/truncated.jpg`` (half a JPEG), ``/loop`` (redirects
to itself), ``/flaky/<name>`` (503 while ``server.failing`` is true), ``/redirect?to=<url>``,
``/slow/<name>`` (answers after ``server.delay`` seconds).
Every request's path is appended to ``server.log``.
"""

from __future__ import annotations

import io
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import numpy as np
from PIL import Image


def make_images(n: int, seed: int = 0) -> dict[str, bytes]:
    """``n`` encoded images named ``<i>.jpg`` / ``<i>.png``: random crops of skimage.data photos."""
    from skimage import data

    photos = [data.astronaut(), data.coffee(), data.chelsea(), np.stack([data.camera()] * 3, -1)]
    rng = np.random.default_rng(seed)
    out: dict[str, bytes] = {}
    for i in range(n):
        ph = photos[i % len(photos)]
        h, w = int(rng.integers(48, 160)), int(rng.integers(48, 160))
        y, x = int(rng.integers(0, ph.shape[0] - h)), int(rng.integers(0, ph.shape[1] - w))
        img = Image.fromarray(ph[y : y + h, x : x + w])
        buf = io.BytesIO()
        fmt = "PNG" if i % 3 == 0 else "JPEG"
        img.save(buf, format=fmt, **({} if fmt == "PNG" else {"quality": 85}))
        out[f"{i}.{'png' if fmt == 'PNG' else 'jpg'}"] = buf.getvalue()
    return out


def closed_port() -> int:
    """A localhost port nothing listens on (bound, then closed)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


@dataclass
class ImageServer:
    images: dict[str, bytes]
    failing: bool = False
    delay: float = 0.0
    log: list[str] = field(default_factory=list)
    _httpd: ThreadingHTTPServer | None = None

    @property
    def base(self) -> str:
        assert self._httpd is not None
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def url(self, path: str) -> str:
        return f"{self.base}/{path.lstrip('/')}"

    def start(self) -> ImageServer:
        server = self
        truncated = next(v for k, v in self.images.items() if k.endswith(".jpg"))
        truncated = truncated[: len(truncated) // 2]

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # quiet
                pass

            def _send(self, code: int, body: bytes = b"", ctype: str = "text/plain", **headers: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                for k, v in headers.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:  # noqa: N802 (http.server API)
                path = urlsplit(self.path).path
                server.log.append(self.path)
                name = path.rsplit("/", 1)[-1]
                if path.startswith("/img/") and name in server.images:
                    self._send(
                        200, server.images[name], "image/jpeg" if name.endswith("jpg") else "image/png"
                    )
                elif path.startswith("/flaky/") and name in server.images:
                    if server.failing:
                        self._send(503, b"try later")
                    else:
                        self._send(200, server.images[name], "image/png")
                elif path.startswith("/slow/") and name in server.images:
                    time.sleep(server.delay)
                    self._send(200, server.images[name], "image/png")
                elif path == "/notimage":
                    self._send(200, b"<html><body>not an image</body></html>", "text/html")
                elif path == "/truncated.jpg":
                    self._send(200, truncated, "image/jpeg")
                elif path == "/loop":
                    self._send(302, b"", Location=server.url("/loop"))
                elif path == "/redirect":
                    self._send(302, b"", Location=parse_qs(urlsplit(self.path).query)["to"][0])
                else:
                    self._send(404, b"not found")

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
