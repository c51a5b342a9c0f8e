"""SSRF guard for URL ingest: refuse URLs whose host resolves to a non-public address.

A URL table is untrusted input: a row pointing at ``http://169.254.169.254/latest/meta-data/`` or at
an intranet host would make the downloader fetch it from inside our network and store the answer
as an "image". By default every URL is checked *before* it is handed to img2dataset; the refused
ones become ``drops/`` rows with reason ``ssrf_refused`` and are never fetched.

Redirects: img2dataset downloads with ``urllib.request.urlopen``, which follows redirects itself.
The img2dataset worker (:mod:`loupe.pipeline.stages.ingest.img2dataset_worker`) installs
:class:`GuardHandler` as the global urllib opener in every download process, so each request of a
redirect chain is checked again and a public URL that redirects to a private one fails with an
``ssrf_refused`` error message.

The host is judged the way urllib will connect to it (:func:`connect_host`): urllib's ``Request``
percent-decodes the host (``http://%31%32%37.0.0.1/`` connects to 127.0.0.1), Python's socket layer
IDNA-encodes a Unicode host (fullwidth ``ｌｏｃａｌｈｏｓｔ`` becomes ``localhost``), and the resolver
accepts numeric spellings (``2130706433``, ``0x7f.1``); the guard applies the same three steps, then
checks **every** resolved address, including IPv4 embedded in IPv6 (IPv4-mapped ``::ffff:a.b.c.d``,
IPv4-compatible ``::a.b.c.d``, 6to4 ``2002::/16``, Teredo, NAT64 ``64:ff9b::/96`` and
``64:ff9b:1::/48``). A host that cannot be decoded or resolved inside the download process is
refused, not passed on. Then, because a DNS-rebinding host may answer the connect-time lookup
differently, the guarded opener also checks the address each connection actually reached
(``getpeername``) before a byte of the request is sent (:class:`GuardedHTTPConnection`).

What remains (documented in docs/reliability.md): an HTTP proxy configured in the environment is
the peer the check sees; egress rules at the network level are still the complete answer.
"""

from __future__ import annotations

import functools
import http.client
import ipaddress
import socket
import urllib.request
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from urllib.error import URLError
from urllib.parse import unquote, urlsplit

#: cloud metadata endpoints named explicitly (both are also non-global ranges, checked anyway):
#: AWS/GCP/Azure 169.254.169.254, AWS IPv6 IMDS fd00:ec2::254, Alibaba 100.100.100.200
METADATA = frozenset(ipaddress.ip_address(a) for a in ("169.254.169.254", "fd00:ec2::254", "100.100.100.200"))
SCHEMES = ("http", "https")
REFUSED = "ssrf_refused"


NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))
_V4COMPAT = ipaddress.ip_network("::/96")


def embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries (mapped, compatible, 6to4, Teredo client, NAT64)."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip.teredo is not None:
        return ip.teredo[1]
    if any(ip in net for net in NAT64):
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip in _V4COMPAT and int(ip) > 1:  # ::a.b.c.d (not :: or ::1, judged as IPv6 below)
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def address_refusal(addr: str) -> str | None:
    """Why an IP address may not be fetched, or None when it is a public unicast address."""
    ip = ipaddress.ip_address(addr.split("%", 1)[0])  # drop an IPv6 zone id
    if isinstance(ip, ipaddress.IPv6Address):
        v4 = embedded_ipv4(ip)
        if v4 is not None:
            why = address_refusal(str(v4))
            return f"{why} embedded in {ip}" if why else None
    if ip in METADATA:
        return "cloud metadata address"
    for kind in ("loopback", "private", "link_local", "multicast", "reserved", "unspecified"):
        if getattr(ip, f"is_{kind}"):
            return f"{kind.replace('_', '-')} address"
    if not ip.is_global:  # e.g. 100.64.0.0/10 carrier-grade NAT, documentation ranges
        return "non-global address"
    return None


@functools.lru_cache(maxsize=65536)
def lookup(host: str) -> tuple[str, ...] | str:
    """The host's addresses, or the resolver's error message (failures are cached too)."""
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError) as e:
        return str(e) or type(e).__name__
    return tuple(sorted({info[4][0] for info in infos}))


def prefetch(hosts: Iterable[str], workers: int = 32) -> None:
    """Resolve many hosts in parallel (a LAION part has ~10^5 hosts; one at a time is too slow)."""
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        list(pool.map(lookup, set(hosts)))


def connect_host(url: str) -> str:
    """The host name urllib will connect to for ``url``: percent-decoded (``urllib.request.Request``
    unquotes the host), lower-cased, IDNA-encoded as the socket layer does. Raises ValueError when
    the URL or its host cannot be parsed or encoded."""
    parts = urlsplit(url)
    host = parts.hostname
    if not host:
        return ""
    host = unquote(host, errors="strict").strip().lower()
    if not host or any(c in host for c in "/\\@ \t\r\n\x00"):
        raise ValueError(f"host {host!r} is not a host name")
    try:
        ipaddress.ip_address(host.split("%", 1)[0])
        return host
    except ValueError:
        pass
    try:
        return host.encode("idna").decode("ascii")
    except UnicodeError as e:
        raise ValueError(f"host {host!r} is not a valid (IDNA) name: {e}") from None


def url_refusal(url: str) -> tuple[str, str] | None:
    """``(reason, detail)`` when ``url`` must not be fetched, else None.

    Reasons: ``invalid_url`` (not http/https or no host), ``dns_error`` (the host does not resolve),
    ``ssrf_refused`` (some address of the host is not public: a host with one private address among
    public ones is refused too, since the connection may use any of them).
    """
    try:
        parts = urlsplit(url)
        host = connect_host(url)
    except (ValueError, UnicodeError) as e:
        return "invalid_url", f"{url!r}: {e}"
    if parts.scheme.lower() not in SCHEMES or not host:
        return "invalid_url", f"{url!r}: need an http(s) URL with a host"
    addrs = lookup(host)
    if isinstance(addrs, str):
        return "dns_error", f"{host}: {addrs}"
    shown = host if host == parts.hostname else f"{parts.hostname} (= {host})"
    for addr in addrs:
        why = address_refusal(addr)
        if why:
            return REFUSED, f"{shown} resolves to {addr} ({why}); set allow_private_urls: true to allow"
    return None


class GuardHandler(urllib.request.BaseHandler):
    """urllib pre-processor that checks every request of an opener, redirect hops included."""

    handler_order = 100  # before the protocol handlers open a connection

    def __init__(self, refuse: Callable[[str], tuple[str, str] | None] = url_refusal):
        self.refuse = refuse

    def _check(self, req: urllib.request.Request) -> urllib.request.Request:
        verdict = self.refuse(req.full_url)
        # every refusal stops the request: a private address, a redirect to ftp:// (urllib follows
        # http -> ftp), and a host that does not decode or resolve here (never passed on unjudged)
        if verdict is not None:
            kind = "dns_error" if verdict[0] == "dns_error" else REFUSED
            raise URLError(f"{kind}: {verdict[1]}")
        return req

    http_request = _check
    https_request = _check
    ftp_request = _check


def _guarded_create_connection(check: Callable[[str], str | None]):
    def create(address, *args, **kwargs):
        sock = socket.create_connection(address, *args, **kwargs)
        peer = sock.getpeername()[0]
        why = check(peer)
        if why:
            sock.close()
            raise URLError(f"{REFUSED}: {address[0]} connected to {peer} ({why}); nothing was sent")
        return sock

    return create


class GuardedHTTPConnection(http.client.HTTPConnection):
    """Checks the address the socket actually reached before the request is written (DNS rebinding)."""

    peer_check: Callable[[str], str | None] = staticmethod(address_refusal)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._create_connection = _guarded_create_connection(self.peer_check)


class GuardedHTTPSConnection(http.client.HTTPSConnection):
    peer_check: Callable[[str], str | None] = staticmethod(address_refusal)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._create_connection = _guarded_create_connection(self.peer_check)


class GuardedHTTPHandler(urllib.request.HTTPHandler):
    def http_open(self, req):
        return self.do_open(GuardedHTTPConnection, req)


class GuardedHTTPSHandler(urllib.request.HTTPSHandler):
    def https_open(self, req):
        kwargs = {"context": self._context}
        if hasattr(self, "_check_hostname"):  # Python < 3.12
            kwargs["check_hostname"] = self._check_hostname
        return self.do_open(GuardedHTTPSConnection, req, **kwargs)


def guarded_opener(
    refuse: Callable[[str], tuple[str, str] | None] = url_refusal,
) -> urllib.request.OpenerDirector:
    """An opener that judges every request's URL (redirect hops included) and every connection's peer."""
    return urllib.request.build_opener(GuardHandler(refuse), GuardedHTTPHandler, GuardedHTTPSHandler)


def install_guard(refuse: Callable[[str], tuple[str, str] | None] = url_refusal) -> None:
    """Make ``urllib.request.urlopen`` (what img2dataset calls) check every request in this process."""
    urllib.request.install_opener(guarded_opener(refuse))
