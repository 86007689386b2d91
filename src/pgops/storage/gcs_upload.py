"""Streaming, create-only GCS writes: one resumable upload session per object, fed by write().

Protocol (JSON API, https://cloud.google.com/storage/docs/performing-resumable-uploads), spoken directly over
the client's authorized requests session:

- open_writer() checks that the key is absent and starts the session at once (POST ...?uploadType=resumable
  &ifGenerationMatch=0[&kmsKeyName=K], metadata name/contentType/storageClass). Credentials, a missing bucket,
  a refused KMS key or storage class therefore fail before the first byte of the dump is read.
- write() buffers; each full chunk (GCS_CHUNK_SIZE, a multiple of 256 KiB) is PUT straight from the
  buffer with "Content-Range: bytes a-b/*" while the caller waits. Memory: one chunk plus the last
  write(). A 308 answer whose Range ends before our chunk does keeps the unpersisted rest for the next one.
- commit() sends the rest as the final request ("bytes a-b/TOTAL", or "bytes */TOTAL"), with
  "X-Goog-Hash: crc32c=..." so that GCS itself refuses a corrupted upload (400). Then the CRC32C and size
  that the server reports for the new object are compared with ours, computed over the bytes write() got;
  on a mismatch the new generation is deleted and IntegrityError raised (no manifest references it yet).
- Create-only: ifGenerationMatch=0 makes GCS refuse the finalize if the object exists (412 ->
  ObjectExists). The key is also checked just before the final request, for servers that do not enforce
  the precondition on resumable uploads (fake-gcs-server 1.54 does not).
- Retries: a failed chunk is sent again, same range, up to GCS_MAX_ATTEMPTS times with jittered backoff,
  as google-resumable-media does; GCS ignores bytes it already persisted. We do not issue the
  "bytes */*" status query: fake-gcs-server finalizes the object when it receives it. A server that
  appends a resent range twice is caught by the CRC32C check.
- abort(), and every failure, cancels the session (DELETE on the session URI: 499), so a half-written
  object is never listed: GCS never lists unfinalized sessions, and a cancelled one cannot be finished.
  If the cancel itself fails, the session expires after a week and is still never listed.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import json
import logging
import re
import secrets
from collections.abc import Callable
from typing import Any
from urllib.parse import quote, urlencode

from pgops.errors import IntegrityError, ObjectExists, StorageError
from pgops.storage.base import ObjectInfo, WriteOptions
from pgops.storage.gcs_client import TIMEOUT, untyped
from pgops.storage.gcs_errors import (
    GCSContext,
    GCSHTTPError,
    is_checksum_refusal,
    is_not_found,
    is_precondition_failed,
    sdk_errors,
    translate,
)
from pgops.storage.retry import RetryPolicy

log = logging.getLogger("pgops.storage.gcs")

_RANGE_RE = re.compile(r"^bytes=0-(\d+)$")


def parse_time(value: object) -> dt.datetime | None:
    """An RFC 3339 string (JSON API) or a datetime (google-cloud-storage) -> aware UTC datetime."""
    if not value:
        return None
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.UTC)
    try:
        return dt.datetime.fromisoformat(str(value).replace("Z", "+00:00")).astimezone(dt.UTC)
    except ValueError:
        return None


def crc32c_b64(checksum: Any) -> str:
    """google_crc32c.Checksum -> the base64 big-endian form GCS uses."""
    return base64.b64encode(checksum.digest()).decode()


@dataclasses.dataclass(frozen=True)
class WriterConfig:
    session: Any  # google.auth.transport.requests.AuthorizedSession
    ctx: GCSContext
    api_endpoint: str
    chunk_size: int
    retry: RetryPolicy
    storage_class: str
    kms_key_name: str
    stat: Callable[[str], dict[str, Any] | None]  # metadata of a key (relative), None if absent
    delete_generation: Callable[[str, int], None]  # delete exactly that generation of a key

    def upload_url(self, upload_type: str) -> str:
        params = {"uploadType": upload_type, "ifGenerationMatch": "0"}
        if self.kms_key_name:
            params["kmsKeyName"] = self.kms_key_name
        return f"{self.api_endpoint}/upload/storage/v1/b/{quote(self.ctx.bucket, safe='')}/o?{urlencode(params)}"

    def metadata(self, key: str, options: WriteOptions) -> dict[str, str]:
        meta = {"name": self.ctx.prefix + key, "contentType": options.content_type}
        if self.storage_class:
            meta["storageClass"] = self.storage_class
        return meta


def new_checksum() -> Any:
    import google_crc32c

    return untyped(google_crc32c).Checksum()


def exists_error(cfg: WriterConfig, key: str, *, during: bool) -> ObjectExists:
    if during:
        return ObjectExists(
            f"object {key!r} appeared in {cfg.ctx.url} while it was being written; "
            "backups never overwrite, so this upload was discarded"
        )
    return ObjectExists(f"object {key!r} already exists in {cfg.ctx.url}; backups never overwrite")


def ensure_absent(cfg: WriterConfig, key: str, *, during: bool = False) -> None:
    if cfg.stat(key) is not None:
        raise exists_error(cfg, key, during=during)


def verify_stored(cfg: WriterConfig, key: str, resource: dict[str, Any], size: int, crc: str) -> ObjectInfo:
    """Compare what the server stored with what we sent; on a mismatch delete that generation."""
    stored_size = int(resource.get("size", -1))
    stored_crc = str(resource.get("crc32c", ""))
    if stored_size == size and stored_crc == crc:
        modified = parse_time(resource.get("updated") or resource.get("timeCreated")) or dt.datetime.now(dt.UTC)
        return ObjectInfo(key=key, size=size, modified=modified)
    generation = int(resource.get("generation", 0) or 0)
    removed = "it was deleted (no manifest references it yet)"
    if generation:
        try:
            cfg.delete_generation(key, generation)
        except StorageError as e:
            removed = f"deleting it failed too ({e}); delete it by hand"
    else:
        removed = "the server did not report its generation, so it was not deleted; delete it by hand"
    what = f"CRC32C {stored_crc or '(none)'} and {stored_size} bytes"
    raise IntegrityError(
        f"{cfg.ctx.target(key)}: the store reports {what}, but we sent CRC32C {crc} and {size} bytes; {removed}"
    )


def _is_ours(cfg: WriterConfig, key: str, size: int, crc: str) -> dict[str, Any] | None:
    """After a refused retry: is the object now under `key` the one we just sent (lost response)?"""
    try:
        meta = cfg.stat(key)
    except StorageError:
        return None
    if meta is not None and int(meta.get("size", -1)) == size and meta.get("crc32c") == crc:
        return meta
    return None


def upload_bytes(cfg: WriterConfig, key: str, data: bytes, options: WriteOptions) -> ObjectInfo:
    """One multipart upload (metadata with crc32c + data): for objects that fit in one chunk.

    GCS validates the crc32c in the metadata and enforces ifGenerationMatch=0 (fake-gcs-server does the
    latter for this upload type too).
    """
    checksum = new_checksum()
    checksum.update(data)
    crc = crc32c_b64(checksum)
    meta = {**cfg.metadata(key, options), "crc32c": crc}
    boundary = "pgops-" + secrets.token_hex(16)
    while boundary.encode() in data:
        boundary = "pgops-" + secrets.token_hex(16)
    body = b"".join(
        [
            f"--{boundary}\r\nContent-Type: application/json; charset=UTF-8\r\n\r\n".encode(),
            json.dumps(meta).encode(),
            f"\r\n--{boundary}\r\nContent-Type: {options.content_type}\r\n\r\n".encode(),
            data,
            f"\r\n--{boundary}--\r\n".encode(),
        ]
    )
    headers = {"Content-Type": f'multipart/related; boundary="{boundary}"'}
    url = cfg.upload_url("multipart")
    attempts = 0

    def once() -> dict[str, Any]:
        nonlocal attempts
        attempts += 1
        resp = cfg.session.request("POST", url, data=body, headers=headers, timeout=TIMEOUT)
        if resp.status_code not in (200, 201):
            raise GCSHTTPError.from_response(resp)
        result: dict[str, Any] = resp.json()
        return result

    try:
        resource = cfg.retry.call(once, f"upload {cfg.ctx.prefix + key}")
    except Exception as e:
        if is_precondition_failed(e):
            mine = _is_ours(cfg, key, len(data), crc) if attempts > 1 else None
            if mine is None:
                raise exists_error(cfg, key, during=True) from None
            resource = mine
        elif is_checksum_refusal(e):
            raise IntegrityError(f"{cfg.ctx.target(key)}: GCS refused the upload, the CRC32C did not match") from None
        else:
            raise translate(e, cfg.ctx, "upload", key, missing="bucket") from e
    return verify_stored(cfg, key, resource, len(data), crc)


class GCSWriter:
    def __init__(self, cfg: WriterConfig, key: str, options: WriteOptions) -> None:
        self.key = key
        self._cfg = cfg
        self._options = options
        self._crc = new_checksum()
        self._size = 0  # bytes given to write()
        self._offset = 0  # bytes the server has acknowledged; _buf starts there
        self._buf = bytearray()
        self._session_url: str | None = None  # a bearer capability: never logged or shown
        self._chunks = 0
        self._state = "open"  # open | committed | aborting | aborted
        ensure_absent(cfg, key)
        self._initiate()

    def __repr__(self) -> str:
        return f"GCSWriter(key={self.key!r}, state={self._state}, chunks={self._chunks})"

    # ---- the session --------------------------------------------------------------------------------

    def _initiate(self) -> None:
        cfg = self._cfg
        url = cfg.upload_url("resumable")
        body = json.dumps(cfg.metadata(self.key, self._options))
        headers = {
            "Content-Type": "application/json; charset=UTF-8",
            "X-Upload-Content-Type": self._options.content_type,
        }

        def once() -> str:
            resp = cfg.session.request("POST", url, data=body, headers=headers, timeout=TIMEOUT)
            if resp.status_code not in (200, 201):
                raise GCSHTTPError.from_response(resp)
            location = resp.headers.get("Location", "")
            if not location:
                raise StorageError(f"{cfg.ctx.target(self.key)}: GCS started no resumable session (no Location)")
            return str(location)

        try:
            self._session_url = cfg.retry.call(once, f"start upload of {cfg.ctx.prefix + self.key}")
        except Exception as e:
            if is_precondition_failed(e):
                raise exists_error(cfg, self.key, during=False) from None
            raise translate(e, cfg.ctx, "start of the resumable upload", self.key, missing="bucket") from e

    def _put(self, payload: bytes | memoryview, start: int, total: int | None) -> tuple[int, dict[str, Any] | None]:
        """Send bytes [start, start+len) of the object. (bytes persisted, resource if finalized)."""
        cfg = self._cfg
        url = self._session_url
        assert url is not None
        end = start + len(payload) - 1
        if total is None:
            content_range = f"bytes {start}-{end}/*"
        elif payload:
            content_range = f"bytes {start}-{end}/{total}"
        else:
            content_range = f"bytes */{total}"
        headers = {"Content-Range": content_range}
        if total is not None:
            headers["X-Goog-Hash"] = f"crc32c={crc32c_b64(self._crc)}"
        attempts = 0

        def once() -> tuple[int, dict[str, Any] | None]:
            nonlocal attempts
            attempts += 1
            resp = cfg.session.request("PUT", url, data=payload, headers=headers, timeout=TIMEOUT)
            if resp.status_code in (200, 201):
                return total if total is not None else start + len(payload), resp.json()
            if resp.status_code == 308:
                m = _RANGE_RE.match(resp.headers.get("Range", ""))
                return (int(m.group(1)) + 1 if m else 0), None
            raise GCSHTTPError.from_response(resp)

        what = f"upload of {cfg.ctx.prefix + self.key} ({content_range})"
        try:
            return cfg.retry.call(once, what)
        except Exception as e:
            if total is not None and attempts > 1 and (is_not_found(e) or is_precondition_failed(e)):
                # A retry of the final request after a lost response: the session is gone because it
                # finished. Ours, if the object now there has our size and CRC32C.
                mine = _is_ours(cfg, self.key, total, crc32c_b64(self._crc))
                if mine is not None:
                    return total, mine
            if is_precondition_failed(e):
                raise exists_error(cfg, self.key, during=True) from None
            if is_checksum_refusal(e):
                raise IntegrityError(
                    f"{cfg.ctx.target(self.key)}: GCS refused the upload, the CRC32C did not match"
                ) from None
            if is_not_found(e):
                raise StorageError(
                    f"the resumable upload session of {cfg.ctx.target(self.key)} no longer exists "
                    "(cancelled, expired after a week, or the bucket was deleted)"
                ) from None
            raise translate(e, cfg.ctx, "upload", self.key, missing="bucket") from e

    def _send_chunk(self) -> None:
        """PUT the first chunk of the buffer, straight from it (a memoryview: no copy is made)."""
        size = self._cfg.chunk_size
        start = self._offset
        with memoryview(self._buf) as view:
            with view[:size] as payload:
                persisted, _ = self._put(payload, start, None)
            if not start < persisted <= start + size:
                raise StorageError(
                    f"{self._cfg.ctx.target(self.key)}: GCS reports {persisted} bytes persisted after a chunk "
                    f"of bytes {start}-{start + size - 1}; the upload cannot continue"
                )
            # Keep what was not persisted (normally nothing of the chunk) and what came after it.
            self._buf = bytearray(view[persisted - start :])
        self._offset = persisted
        self._chunks += 1

    # ---- the stream ---------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._state != "open":
            raise StorageError(f"writer for {self.key!r} is already {self._state}")

    def write(self, data: bytes, /) -> None:
        self._check_open()
        try:
            self._crc.update(data)
            self._size += len(data)
            self._buf += data
            while len(self._buf) >= self._cfg.chunk_size:
                self._send_chunk()
        except BaseException:
            self.abort()
            raise

    def commit(self) -> ObjectInfo:
        self._check_open()
        try:
            ensure_absent(self._cfg, self.key, during=True)
            final, self._buf = bytes(self._buf), bytearray()
            _, resource = self._put(final, self._offset, self._size)
            self._session_url = None  # finalized: nothing left to cancel
            assert resource is not None
            info = verify_stored(self._cfg, self.key, resource, self._size, crc32c_b64(self._crc))
        except BaseException:
            self.abort()
            raise
        self._state = "committed"
        return info

    def abort(self) -> None:
        """Cancel the resumable session. Idempotent; never raises (a failed cancel is logged)."""
        if self._state in ("committed", "aborted"):
            return
        self._state = "aborting"  # write() and commit() refuse from now on
        self._buf = bytearray()
        url, self._session_url = self._session_url, None
        if url is not None:
            cfg = self._cfg

            def once() -> None:
                resp = cfg.session.request("DELETE", url, timeout=TIMEOUT)
                # 499: cancelled. 404/410: already gone. Anything else is a failure worth retrying.
                if resp.status_code not in (499, 404, 410) and not 200 <= resp.status_code < 300:
                    raise GCSHTTPError.from_response(resp)

            try:
                cfg.retry.call(once, f"cancel upload of {cfg.ctx.prefix + self.key}")
            except sdk_errors() as e:
                log.error(
                    "gcs cancel of the resumable upload failed key=%s error=%s (the session is never listed and "
                    "expires after a week)",
                    cfg.ctx.prefix + self.key,
                    translate(e, cfg.ctx, "cancel of the resumable upload", self.key),
                )
        self._state = "aborted"
