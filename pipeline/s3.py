"""What S3 needs beyond ``pyarrow.fs``: a first contact that fails fast, and a writer lease taken
with conditional writes.

* :func:`probe` — the first request of a run to an ``s3://`` store goes through a twin of its
  ``S3FileSystem`` with a short connect timeout and one retry, so an unreachable endpoint is a
  one-line error naming it within a few seconds, not 10-20 s of SDK retries. The filesystem the run
  then uses keeps pyarrow's retry strategy (transient errors during a long run are retried).
* :class:`ConditionalLease` — ``pyarrow.fs`` cannot send ``If-None-Match`` / ``If-Match``, so the
  lease object is read and written through a botocore client built from the *same* options as the
  pyarrow filesystem (endpoint, region, credentials). S3 conditional writes (AWS User Guide,
  "Add preconditions to S3 operations with conditional requests"): ``PutObject`` with
  ``If-None-Match: *`` creates a key only if it is absent (Aug 2024), ``If-Match: <etag>`` replaces
  or deletes it only if it is unchanged (Nov 2024; deletes 2025); a loser gets ``412 Precondition
  Failed`` (``409 ConditionalRequestConflict`` when two requests overlap). Needs ``boto3``
  (``pip install 'loupe[remote]'``); without it, or with ``LOUPE_S3_CONDITIONAL_WRITES=0`` (an
  S3-compatible server that ignores the headers), :meth:`ObjectStorage.writer_lock
  <loupe.pipeline.storage.ObjectStorage.writer_lock>` keeps its write-then-read-back protocol.
"""

from __future__ import annotations

import json
import os
import threading
from typing import Any

import pyarrow.fs as pafs

from loupe.pipeline.errors import LoupeError

#: the probe's limits: connect within this many seconds, answer within REQUEST, at most 2 attempts
PROBE_CONNECT_S = 3.0
PROBE_REQUEST_S = 10.0
PROBE_ATTEMPTS = 2
_NETWORK = ("NETWORK_CONNECTION", "curlCode", "Could not connect", "Timeout", "timed out", "resolve host")
_reached: set[tuple[str, str]] = set()  # (endpoint, bucket) already probed in this process
_clients: dict[str, Any] = {}
_clients_lock = threading.Lock()


def first_line(e: BaseException) -> str:
    """The first line of an error's message (SDK errors run to many lines), at most 300 characters."""
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:300]


def s3_options(fs: pafs.S3FileSystem) -> dict[str, Any]:
    """The keyword arguments ``fs`` was built with (after pyarrow read the URI query and the
    environment, e.g. ``AWS_ENDPOINT_URL`` lands in ``endpoint_override``)."""
    return dict(fs.__reduce__()[1][0])


def endpoint_url(opts: dict[str, Any]) -> str | None:
    """``scheme://host:port`` of a custom endpoint, None for AWS itself."""
    ep = opts.get("endpoint_override") or ""
    if not ep:
        return None
    return ep if "://" in ep else f"{opts.get('scheme') or 'https'}://{ep}"


def describe_endpoint(opts: dict[str, Any]) -> str:
    return endpoint_url(opts) or f"AWS S3 (region {opts.get('region') or 'from the environment'})"


def probe(fs: pafs.FileSystem, path: str, where: str, field: str) -> None:
    """Reach ``path`` once through a fail-fast twin of ``fs``; a :class:`LoupeError` naming the
    endpoint when it cannot be reached (or refuses the request). No-op for other filesystems."""
    if not isinstance(fs, pafs.S3FileSystem):
        return
    opts = s3_options(fs)
    seen = (describe_endpoint(opts), path.split("/", 1)[0])
    if seen in _reached:
        return
    fast = pafs.S3FileSystem(
        **{
            **opts,
            "connect_timeout": PROBE_CONNECT_S,
            "request_timeout": PROBE_REQUEST_S,
            "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=PROBE_ATTEMPTS),
        }
    )
    try:
        fast.get_file_info(path)
    except OSError as e:
        msg = first_line(e)
        if any(s in msg for s in _NETWORK):
            raise LoupeError(
                f"{field}: {where}: cannot reach the S3 endpoint {seen[0]} ({msg}); check that it is up, "
                "and AWS_ENDPOINT_URL or ?endpoint_override=host:port&scheme=http on the URI"
            ) from None
        raise LoupeError(
            f"{field}: {where}: the S3 endpoint {seen[0]} refused the first request: {msg}"
        ) from None
    _reached.add(seen)


def conditional_writes_enabled() -> bool:
    return os.environ.get("LOUPE_S3_CONDITIONAL_WRITES", "1").strip().lower() not in ("0", "false", "no")


class ConditionalLease:
    """One lease object on S3, written only with preconditions. Every method answers what happened
    (True/False, or the object and its ETag) instead of raising on a lost race."""

    def __init__(self, client: Any, bucket: str, key: str, where: str):
        self.client, self.bucket, self.key, self.where = client, bucket, key, where
        from botocore.exceptions import BotoCoreError, ClientError

        self._client_error, self._boto_error = ClientError, BotoCoreError

    @classmethod
    def for_key(cls, fs: pafs.FileSystem, key: str, where: str) -> ConditionalLease | None:
        """The lease at ``key`` (``bucket/path`` inside ``fs``), or None when conditional writes are
        off, ``fs`` is not S3, boto3 is missing, or the filesystem assumes a role (not mirrored)."""
        if not conditional_writes_enabled() or not isinstance(fs, pafs.S3FileSystem):
            return None
        try:
            import boto3
            from botocore import UNSIGNED
            from botocore.config import Config
        except ImportError:
            return None
        opts = s3_options(fs)
        if opts.get("role_arn") or (opts.get("proxy_options") or {}).get("host"):
            return None
        ep = endpoint_url(opts)
        cfg: dict[str, Any] = {
            "connect_timeout": PROBE_CONNECT_S,
            "read_timeout": 20,
            "retries": {"mode": "standard", "max_attempts": 3},
        }
        if ep and not opts.get("force_virtual_addressing"):
            cfg["s3"] = {"addressing_style": "path"}  # pyarrow's default with an endpoint override
        if opts.get("anonymous"):
            cfg["signature_version"] = UNSIGNED
        kw: dict[str, Any] = {
            "region_name": opts.get("region") or None,
            "endpoint_url": ep,
            "config": Config(**cfg),
        }
        if opts.get("access_key"):
            kw.update(
                aws_access_key_id=opts["access_key"],
                aws_secret_access_key=opts.get("secret_key"),
                aws_session_token=opts.get("session_token") or None,
            )
        if opts.get("tls_ca_file_path"):
            kw["verify"] = opts["tls_ca_file_path"]
        bucket, _, path = key.partition("/")
        ident = json.dumps({k: v for k, v in kw.items() if k != "config"} | cfg, sort_keys=True, default=str)
        with _clients_lock:  # one client per configuration and process (clients are thread-safe)
            if ident not in _clients:
                _clients[ident] = boto3.session.Session().client("s3", **kw)
        return cls(_clients[ident], bucket, path, where)

    def _code(self, e: Exception) -> str:
        return (
            str(getattr(e, "response", {}).get("Error", {}).get("Code", ""))
            if isinstance(e, self._client_error)
            else ""
        )

    def _status(self, e: Exception) -> int:
        return int(getattr(e, "response", {}).get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)

    def _fail(self, what: str, e: Exception) -> LoupeError:
        hint = ""
        if self._status(e) in (400, 501):
            hint = (
                "; if this S3-compatible server lacks conditional writes, set LOUPE_S3_CONDITIONAL_WRITES=0"
            )
        return LoupeError(f"run dir {self.where}: cannot {what} the writer lease: {first_line(e)}{hint}")

    def _put(self, body: bytes, what: str, **cond: str) -> str | None:
        """The new ETag, or None when the precondition failed (412) or another request won (409)."""
        try:
            r = self.client.put_object(Bucket=self.bucket, Key=self.key, Body=body, **cond)
        except (self._client_error, self._boto_error) as e:
            if self._status(e) in (409, 412):
                return None
            raise self._fail(what, e) from None
        return r["ETag"]

    def create(self, body: bytes) -> str | None:
        """Write the lease if no lease exists (``If-None-Match: *``): its ETag, or None."""
        return self._put(body, "take", IfNoneMatch="*")

    def replace(self, body: bytes, etag: str) -> str | None:
        """Overwrite the lease if it is still the version ``etag`` (``If-Match``): the new ETag, or None."""
        return self._put(body, "renew", IfMatch=etag)

    def read(self) -> tuple[dict[str, Any], str] | None:
        """``(lease, etag)``, None if there is none; an unreadable lease reads as ``{}`` (stale)."""
        try:
            r = self.client.get_object(Bucket=self.bucket, Key=self.key)
            body = r["Body"].read()
        except (self._client_error, self._boto_error) as e:
            if self._code(e) in ("NoSuchKey", "404") or self._status(e) == 404:
                return None
            raise self._fail("read", e) from None
        try:
            lease = json.loads(body)
        except ValueError:
            lease = {}
        return (lease if isinstance(lease, dict) else {}), r["ETag"]

    def delete(self, etag: str, token: str) -> None:
        """Delete the lease if it is still the version ``etag``; a server without conditional deletes
        gets a plain delete once the lease read back still carries ``token``."""
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self.key, IfMatch=etag)
        except (self._client_error, self._boto_error) as e:
            if self._status(e) in (404, 409, 412):
                return  # gone, or another run's lease now: not ours to delete
            if isinstance(e, self._client_error) and self._status(e) not in (400, 501):
                raise self._fail("release", e) from None
            found = self.read()
            if found is not None and found[0].get("token") == token:
                self.client.delete_object(Bucket=self.bucket, Key=self.key)
