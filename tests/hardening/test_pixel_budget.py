"""Bounded decode: pixel bombs are refused from the header, big JPEGs decode reduced, a batch's decoded
pixels are bounded, and the small decode fixes (16-bit greyscale, stable error details)."""

from __future__ import annotations

import io
import struct
import subprocess
import sys
import time
import zlib

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from loupe.pipeline.executors.oom import PIXEL_SPLITS, call_bounded, pixel_chunks
from loupe.pipeline.images import DecodeError, ImageTooLarge, decode
from loupe.pipeline.stage import StageOutput

from .common import fast_recipe

#: the whole `loupe run` (Python, pyarrow, duckdb, PIL) with six 400 Mpx bombs in its input
RSS_LIMIT_MB = 700


def png_bomb(side: int = 20000) -> bytes:
    """A ~50 KB valid PNG declaring side x side pixels (1-bit, all black): 1.2 GB once decoded to RGB.
    Written chunk by chunk (PNG spec: IHDR, zlib-compressed filtered rows in IDAT, IEND)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\x00" * (1 + (side + 7) // 8)  # filter type 0, then the packed 1-bit pixels
    z = zlib.compressobj(9)
    idat = b"".join(z.compress(row) for _ in range(side)) + z.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)  # 1-bit greyscale
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def bomb() -> bytes:
    return png_bomb()


def test_bomb_refused_from_the_header_before_decoding(bomb):
    assert len(bomb) < 100_000
    assert Image.open(io.BytesIO(bomb)).size == (20000, 20000)  # a real PNG header
    t0 = time.perf_counter()
    with pytest.raises(ImageTooLarge, match=r"20000x20000 = 400 Mpx is over the pixel budget of 90 Mpx") as e:
        decode(bomb)
    assert time.perf_counter() - t0 < 0.5 and e.value.reason == "image_too_large"
    # a recipe may raise the budget; a smaller image under it decodes
    small = io.BytesIO()
    Image.new("RGB", (300, 200), (10, 20, 30)).save(small, format="PNG")
    assert decode(small.getvalue(), max_pixels=60_000).size == (300, 200)
    with pytest.raises(ImageTooLarge):
        decode(small.getvalue(), max_pixels=59_999)


def test_pixel_bomb_run_stays_under_rss_limit(tmp_path, bomb):
    recipe = fast_recipe(tmp_path)
    for i in range(6):
        (tmp_path / "images" / f"bomb_{i}.png").write_bytes(bomb)
    # The peak is read inside the child (VmHWM of its own address space): wait4's ru_maxrss also counts
    # the forked pytest process before exec, which is GBs late in a full test session.
    hwm = tmp_path / "vmhwm"
    probe = (
        "import atexit, runpy, sys\n"
        "def _hwm():\n"
        "    line = [x for x in open('/proc/self/status') if x.startswith('VmHWM')][0]\n"
        f"    open({str(hwm)!r}, 'w').write(line.split()[1])\n"
        "atexit.register(_hwm)\n"
        f"sys.argv = ['loupe', 'run', {str(recipe)!r}, '-q']\n"
        "runpy.run_module('loupe.pipeline.cli', run_name='__main__')\n"
    )
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True)
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    rss_mb = int(hwm.read_text()) / 1024
    print(f"max RSS of `loupe run` with six 20000x20000 PNG bombs: {rss_mb:.0f} MB")
    assert rss_mb < RSS_LIMIT_MB, rss_mb
    from loupe.pipeline.query import query, resolve_run

    rows = query(
        resolve_run(tmp_path / "runs" / "fast"),
        "SELECT reason, detail FROM drops WHERE reason = 'image_too_large'",
    )
    assert rows.num_rows == 6 and all("bomb_" in d for d in rows["detail"].to_pylist())


def test_large_jpeg_decodes_reduced_when_a_smaller_side_is_enough():
    buf = io.BytesIO()
    Image.new("RGB", (6000, 4000), (200, 100, 50)).save(buf, format="JPEG", quality=80)
    full = decode(buf.getvalue())
    small = decode(buf.getvalue(), max_side=1024)
    assert full.size == (6000, 4000)
    assert small.size == (3000, 2000) and small.format == "JPEG"  # 1/2 scale keeps both sides >= 1024
    png = io.BytesIO()
    Image.new("RGB", (5000, 3000), (1, 2, 3)).save(png, format="PNG")
    assert max(decode(png.getvalue(), max_side=1000).size) <= 1000 * 2


class _Recorder:
    """A stage that records the decoded pixels of every batch it is handed."""

    name = "rec"

    def __init__(self):
        self.calls: list[tuple[int, list[str]]] = []

    def __call__(self, batch: pa.Table) -> StageOutput:
        self.calls.append(
            (
                sum(w * h for w, h in zip(batch["width"].to_pylist(), batch["height"].to_pylist()))
                if "width" in batch.column_names
                else -1,
                batch.column_names,
            )
        )
        return StageOutput(rows=None, drops=None)


def test_batch_decoded_pixels_are_bounded():
    sizes = [(9000, 9000)] * 6 + [(100, 100)] * 4  # six 81 Mpx images would be 1.5 GB RGB in one batch
    batch = pa.table(
        {"uid": [str(i) for i in range(10)], "width": [w for w, _ in sizes], "height": [h for _, h in sizes]}
    )
    chunks = pixel_chunks(batch, 200_000_000)
    assert [c.num_rows for c in chunks] == [2, 2, 6]
    rec = _Recorder()
    out = call_bounded(
        rec, batch.append_column("image", pa.array([b""] * 10)), 200_000_000, keep=("uid", "image")
    )
    assert out.metrics[PIXEL_SPLITS] == 1 and len(rec.calls) == 3
    assert all(cols == ["uid", "image"] for _, cols in rec.calls)  # width/height were only for the split


def test_sixteen_bit_greyscale_scales_to_eight_bits():
    a = np.array([[0, 257 * 128, 65535, 30000]], dtype=np.uint16)
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    assert Image.open(io.BytesIO(buf.getvalue())).mode.startswith("I;16")
    img = decode(buf.getvalue())
    assert img.mode == "RGB"
    assert [img.getpixel((x, 0))[0] for x in range(4)] == [0, 128, 255, round(30000 * 255 / 65535)]


def test_decode_error_details_are_stable():
    msgs = set()
    for _ in range(3):
        with pytest.raises(DecodeError) as e:
            decode(b"definitely not an image")
        msgs.add(str(e.value))
    assert len(msgs) == 1 and "0x" not in msgs.pop()


def test_avif_exports_as_avif():
    from loupe.pipeline.stages.export.stage import image_ext

    buf = io.BytesIO()
    Image.new("RGB", (32, 24), (1, 2, 3)).save(buf, format="AVIF")
    assert image_ext(buf.getvalue()) == ".avif"
    assert decode(buf.getvalue()).size == (32, 24)
