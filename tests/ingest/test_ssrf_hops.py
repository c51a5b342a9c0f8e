"""SSRF guard on every hop, whatever the spelling: percent-encoded, IDNA, numeric and IPv6-embedded
hosts are judged as urllib will connect to them, and the server sees no request for a refused hop."""

from __future__ import annotations

import urllib.request
from urllib.error import URLError
from urllib.parse import quote, urlsplit

import pytest

from loupe.pipeline.stages.ingest import ssrf
from loupe.pipeline.stages.ingest.url_list import failure_reason

try:  # tests/ingest is a plain folder on sys.path (pytest's default "prepend" import mode)
    from url_server import ImageServer, make_images
except ImportError:
    from .url_server import ImageServer, make_images


@pytest.fixture
def server():
    srv = ImageServer(make_images(4)).start()
    yield srv
    srv.stop()


FULLWIDTH_LOCALHOST = "\uff4c\uff4f\uff43\uff41\uff4c\uff48\uff4f\uff53\uff54"


def _hops(port: int) -> list[str]:
    """Spellings of 127.0.0.1 (or of no valid host) that a redirect Location may carry."""
    return [
        f"http://%31%32%37.0.0.1:{port}/img/0.png",  # urllib's Request unquotes the host
        f"http://%6c%6f%63%61%6c%68%6f%73%74:{port}/img/0.png",  # "localhost", encoded
        f"http://{quote(FULLWIDTH_LOCALHOST)}:{port}/img/0.png",  # fullwidth, encoded: unquote, then IDNA
        f"http://2130706433:{port}/img/0.png",  # one integer
        f"http://0x7f.1:{port}/img/0.png",  # hex and short form
        f"http://[::ffff:127.0.0.1]:{port}/img/0.png",  # IPv4-mapped
        f"http://[::ffff:7f00:1]:{port}/img/0.png",
        f"http://[::127.0.0.1]:{port}/img/0.png",  # IPv4-compatible
        f"http://[2002:7f00:1::1]:{port}/img/0.png",  # 6to4 of 127.0.0.1
        f"http://[64:ff9b::7f00:1]:{port}/img/0.png",  # NAT64 of 127.0.0.1
        f"http://[64:ff9b:1::7f00:1]:{port}/img/0.png",  # local-use NAT64
        f"http://%ff%fe:{port}/img/0.png",  # undecodable host: refused, not passed on
        f"http://no-such-host.invalid:{port}/img/0.png",  # unresolvable on a redirect: refused
    ]


def test_redirect_hops_in_any_spelling_are_refused_before_a_request(server):
    port = urlsplit(server.base).port
    first_hop = server.url("/redirect")
    # "the public first hop": only the /redirect URL itself is allowed; every hop is judged normally
    guard = ssrf.GuardHandler(lambda u: None if u.startswith(first_hop) else ssrf.url_refusal(u))
    opener = urllib.request.build_opener(guard)
    for target in _hops(port):
        server.log.clear()
        with pytest.raises(URLError) as e:
            opener.open(server.url(f"/redirect?to={quote(target, safe='')}"), timeout=5)
        reason = failure_reason("failed_to_download", str(e.value))
        assert reason in ("ssrf_refused", "dns_error"), (target, str(e.value))
        assert [urlsplit(p).path for p in server.log] == ["/redirect"], (target, server.log)


def test_unguarded_urllib_does_reach_the_encoded_host(server):
    """The attack is real: without the decode step, urllib follows the encoded hop to 127.0.0.1."""
    port = urlsplit(server.base).port
    target = f"http://%31%32%37.0.0.1:{port}/img/0.png"
    with urllib.request.build_opener().open(
        server.url(f"/redirect?to={quote(target, safe='')}"), timeout=5
    ) as r:
        assert r.read() == server.images["0.png"]
    assert "/img/0.png" in [urlsplit(p).path for p in server.log]
    # the old check, reading the host as written, saw only a name that does not resolve
    assert ssrf.url_refusal(target)[0] == "ssrf_refused"


def test_connection_peer_is_checked_before_anything_is_sent(server):
    """DNS rebinding: even when the URL check passes, the address the socket reached is judged."""
    opener = ssrf.guarded_opener(refuse=lambda u: None)  # URL check bypassed on purpose
    with pytest.raises(URLError, match="ssrf_refused: 127.0.0.1 connected to 127.0.0.1"):
        opener.open(server.url("/img/0.png"), timeout=5)
    assert server.log == []
    # https goes through the same check, before the TLS handshake
    with pytest.raises(URLError, match="ssrf_refused: 127.0.0.1 connected to 127.0.0.1"):
        opener.open(server.url("/img/0.png").replace("http://", "https://"), timeout=5)
    assert server.log == []


@pytest.mark.parametrize(
    "addr",
    [
        "::ffff:10.0.0.1",
        "2002:a00:1::",
        "2002:a9fe:a9fe::",
        "64:ff9b::a9fe:a9fe",
        "64:ff9b:1::c0a8:101",
        "::10.0.0.1",
    ],
)
def test_ipv6_embedding_a_private_ipv4_is_refused(addr):
    assert "embedded in" in ssrf.address_refusal(addr)


@pytest.mark.parametrize("addr", ["2002:808:808::1", "64:ff9b::808:808", "2606:4700:4700::1111"])
def test_ipv6_embedding_a_public_ipv4_passes(addr):
    assert ssrf.address_refusal(addr) is None
