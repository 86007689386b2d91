"""Streamed, resumable, generation-pinned downloads for the GCS backend (JSON API media endpoint)."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from pgops.errors import IntegrityError, ObjectNotFound, StorageError
from pgops.storage.gcs_client import TIMEOUT
from pgops.storage.gcs_errors import GCSContext, GCSHTTPError, is_not_found, is_retryable, translate
from pgops.storage.gcs_upload import crc32c_b64, new_checksum
from pgops.storage.retry import RetryPolicy


class _Truncated(Exception):
    """The body ended before the object's size was reached."""


class GCSReader:
    """A streamed download pinned to one generation; resumes with a Range request after a dropped
    connection, and checks the object's CRC32C once all of it has been read."""

    def __init__(
        self, session: Any, ctx: GCSContext, retry: RetryPolicy, api_endpoint: str, *, key: str, meta: dict[str, Any]
    ) -> None:
        self._session, self._ctx, self._retry, self._api = session, ctx, retry, api_endpoint
        self._key = key
        self._generation = int(meta["generation"])
        self._length = int(meta.get("size", 0))
        self._expected_crc = str(meta.get("crc32c", ""))
        self._crc = new_checksum()
        self._pos = 0
        self._closed = False
        self._resp: Any = self._open(0) if self._length else None

    def _open(self, start: int) -> Any:
        ctx = self._ctx
        url = (
            f"{self._api}/download/storage/v1/b/{quote(ctx.bucket, safe='')}/o/"
            f"{quote(ctx.prefix + self._key, safe='')}?alt=media&generation={self._generation}"
        )
        headers = {"Accept-Encoding": "identity"}
        if start:
            headers["Range"] = f"bytes={start}-"

        def once() -> Any:
            resp = self._session.request("GET", url, headers=headers, stream=True, timeout=TIMEOUT)
            if resp.status_code not in (200, 206):
                err = GCSHTTPError.from_response(resp)
                resp.close()
                raise err
            return resp

        try:
            return self._retry.call(once, f"download {ctx.prefix + self._key}")
        except Exception as e:
            if is_not_found(e):
                if start:
                    raise StorageError(f"{ctx.target(self._key)} changed while it was being read") from None
                raise ObjectNotFound(f"object {self._key!r} does not exist in {ctx.url}") from None
            raise translate(e, ctx, "download", self._key) from e

    def read(self, size: int = -1, /) -> bytes:
        if self._closed:
            raise StorageError(f"reader for {self._key!r} is closed")
        attempt = 1
        while True:
            if self._pos >= self._length or size == 0:
                return b""
            want = self._length - self._pos if size < 0 else min(size, self._length - self._pos)
            try:
                data: bytes = self._resp.raw.read(want, decode_content=False)
                if not data:
                    raise _Truncated
            except Exception as e:
                if not (isinstance(e, _Truncated) or is_retryable(e)) or attempt >= self._retry.attempts:
                    if isinstance(e, _Truncated):
                        raise StorageError(
                            f"{self._ctx.target(self._key)} ended after {self._pos} of {self._length} bytes; "
                            f"{self._ctx.endpoint_hint}"
                        ) from None
                    raise translate(e, self._ctx, "download (reading)", self._key) from e
                self._resp.close()
                self._retry.wait(attempt, f"download {self._ctx.prefix + self._key} at {self._pos}", e)
                self._resp = self._open(self._pos)
                attempt += 1
                continue
            self._pos += len(data)
            self._crc.update(data)
            if self._pos >= self._length:
                self._check_crc()
            return data

    def _check_crc(self) -> None:
        got = crc32c_b64(self._crc)
        if self._expected_crc and got != self._expected_crc:
            raise IntegrityError(
                f"{self._ctx.target(self._key)}: the bytes read have CRC32C {got}, "
                f"the store reports {self._expected_crc}"
            )

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            if self._resp is not None:
                self._resp.close()
