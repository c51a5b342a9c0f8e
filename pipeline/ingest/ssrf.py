"""SSRF guard for URL ingest: refuse URLs whose host resolves to a non-public address.

A URL table is untrusted input: a row pointing at ``http://169.254.169.254/latest/meta-data/`` or at
an intranet host would make the downloader fetch it from inside our network and store the answer
as an "image". By default every URL is checked *before* it is handed to img2dataset; the refused
ones become ``drops/`` rows with reason ``ssrf_refused`` and are never fetched.

Redirects: img2dataset downloads with ``urllib.request.urlopen``, which follows redirects itself.
The img2dataset worker (:mod:`loupe.pipeline.ingest.img2dataset_worker`) installs
:class:`GuardHandler` as the global urllib opener in every download process, so each request of a
redirect chain is checked again and a public URL that redirects to a private one fails with an
``ssrf_refused`` error message.

Limits (documented, not solved here): the guard resolves the host, then urllib resolves it again
to connect, so a DNS-rebinding host that answers differently to the two lookups can still reach a
private address; only network-level egress rules (a proxy or firewall that refuses private ranges)
close that gap.
"""

from __future__ import annotations

import functools
import ipaddress
import socket
import urllib.request
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from urllib.error import URLError
from urllib.parse import urlsplit

#: cloud metadata endpoints named explicitly (both are also non-global ranges, checked anyway):
#: AWS/GCP/Azure 169.254.169.254, AWS IPv6 IMDS fd00:ec2::254, Alibaba 100.100.100.200
METADATA = frozenset(ipaddress.ip_address(a) for a in ("169.254.169.254", "fd00:ec2::254", "100.100.100.200"))
SCHEMES = ("http", "https")
REFUSED = "ssrf_refused"


def address_refusal(addr: str) -> str | None:
    """Why an IP address may not be fetched, or None when it is a public unicast address."""
    ip = ipaddress.ip_address(addr.split("%", 1)[0])  # drop an IPv6 zone id
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
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


def url_refusal(url: str) -> tuple[str, str] | None:
    """``(reason, detail)`` when ``url`` must not be fetched, else None.

    Reasons: ``invalid_url`` (not http/https or no host), ``dns_error`` (the host does not resolve),
    ``ssrf_refused`` (some address of the host is not public: a host with one private address among
    public ones is refused too, since the connection may use any of them).
    """
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError as e:
        return "invalid_url", f"{url!r}: {e}"
    if parts.scheme.lower() not in SCHEMES or not host:
        return "invalid_url", f"{url!r}: need an http(s) URL with a host"
    addrs = lookup(host)
    if isinstance(addrs, str):
        return "dns_error", f"{host}: {addrs}"
    for addr in addrs:
        why = address_refusal(addr)
        if why:
            return REFUSED, f"{host} resolves to {addr} ({why}); set allow_private_urls: true to allow"
    return None


class GuardHandler(urllib.request.BaseHandler):
    """urllib pre-processor that checks every request of an opener, redirect hops included."""

    handler_order = 100  # before the protocol handlers open a connection

    def __init__(self, refuse: Callable[[str], tuple[str, str] | None] = url_refusal):
        self.refuse = refuse

    def _check(self, req: urllib.request.Request) -> urllib.request.Request:
        verdict = self.refuse(req.full_url)
        # an unresolvable host is left to urllib (it reports its own error); a redirect to ftp://
        # (urllib follows http -> ftp) is refused like a private host
        if verdict is not None and verdict[0] != "dns_error":
            raise URLError(f"{REFUSED}: {verdict[1]}")
        return req

    http_request = _check
    https_request = _check
    ftp_request = _check


def install_guard(refuse: Callable[[str], tuple[str, str] | None] = url_refusal) -> None:
    """Make ``urllib.request.urlopen`` (what img2dataset calls) check every request in this process."""
    urllib.request.install_opener(urllib.request.build_opener(GuardHandler(refuse)))
