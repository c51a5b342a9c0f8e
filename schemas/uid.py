"""Stable sample ids: hex sha256 of where a sample came from."""

from __future__ import annotations

import hashlib


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def url_uid(source: str, url: str) -> str:
    """uid of a downloaded sample: sha256 of source name + url."""
    return sha256_hex(f"{source}\0{url}".encode())


def local_uid(source: str, relpath: str, content_sha256: str) -> str:
    """uid of a local file: sha256 of source name + relative path + the bytes' sha256.

    The path is part of the id on purpose: two files with identical bytes are two samples,
    so exact dedup can keep one and record the other in ``drops/`` instead of silently
    merging them.
    """
    return sha256_hex(f"{source}\0{relpath}\0{content_sha256}".encode())


def record_uid(source: str, record_id: str) -> str:
    """uid of a dataset record (SMR adapters): sha256 of source name + the record's native id."""
    return sha256_hex(f"{source}\0{record_id}".encode())
