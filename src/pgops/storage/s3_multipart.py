"""Streaming, create-only S3 writes: one multipart upload per object, at most one part in flight.

Bytes are buffered into a part. When a part is full it is handed to ONE background thread, and the next
part fills while it uploads; before a further part is handed over, the previous upload must have
finished. Memory is therefore about two parts: the buffer itself is handed over, never copied. A stream
that ends before its first part is full is sent with a single PutObject instead.

Part sizes follow `part_size_for`: S3_PART_SIZE for parts 1-1000, doubling every 1000 parts, capped at
5 GiB. With the default 8 MiB the 10,000 parts hold ~7.8 TiB, more than S3's 5 TiB object limit, so
an unknown-size stream is bounded by S3 itself, never by the part count. (With the 5 MiB minimum they
hold ~4.88 TiB.)

Create-only: a HEAD before the first byte refuses an existing key. With S3_CONDITIONAL_WRITES the store
enforces it at the end too (If-None-Match: * on PutObject and CompleteMultipartUpload, 412 ->
ObjectExists); without it a second HEAD just before commit narrows the race.

Every failure, and abort(), aborts the multipart upload, so no incomplete upload is left behind. If the
response to CreateMultipartUpload itself is lost and botocore retries it, S3 may keep an upload we never
saw; a bucket lifecycle rule (AbortIncompleteMultipartUpload) is the backstop for that.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import hashlib
import logging
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, cast

from pgops.errors import ObjectExists, StorageError
from pgops.storage.base import ObjectInfo, WriteOptions
from pgops.storage.retry import RetryPolicy
from pgops.storage.s3_errors import (
    S3Context,
    error_code,
    http_status,
    is_not_found,
    is_precondition_failed,
    sdk_errors,
    translate,
)

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import CompletedPartTypeDef, HeadObjectOutputTypeDef

log = logging.getLogger("pgops.storage.s3")

MiB = 1024**2
GiB = 1024**3
MIN_PART_SIZE = 5 * MiB
MAX_PART_SIZE = 5 * GiB
MAX_PARTS = 10_000
DOUBLE_EVERY = 1000


def part_size_for(part_number: int, base: int) -> int:
    """Size of part `part_number` (1-based): `base`, doubled every 1000 parts, capped at 5 GiB."""
    if not 1 <= part_number <= MAX_PARTS:
        raise ValueError(f"part number {part_number} is outside 1..{MAX_PARTS}")
    if not MIN_PART_SIZE <= base <= MAX_PART_SIZE:
        raise ValueError(f"base part size {base} is outside {MIN_PART_SIZE}..{MAX_PART_SIZE}")
    return min(base << ((part_number - 1) // DOUBLE_EVERY), MAX_PART_SIZE)


def _md5(data: bytes | bytearray) -> bytes:
    return hashlib.md5(data, usedforsecurity=False).digest()


@dataclasses.dataclass(frozen=True)
class WriterConfig:
    client: S3Client
    ctx: S3Context
    part_size: int
    retry: RetryPolicy
    conditional_writes: bool
    extra_args: dict[str, str]  # StorageClass, ServerSideEncryption, SSEKMSKeyId: sent on every write


class S3Writer:
    def __init__(self, cfg: WriterConfig, key: str, options: WriteOptions) -> None:
        self.key = key
        self._cfg = cfg
        self._client = cfg.client
        self._bucket = cfg.ctx.bucket
        self._full_key = cfg.ctx.prefix + key
        self._content_type = options.content_type
        self._buf = bytearray()
        self._size = 0
        self._upload_id: str | None = None
        self._md5s: list[bytes] = []  # per part, in order
        self._parts: list[CompletedPartTypeDef] = []
        self._pool: ThreadPoolExecutor | None = None
        self._inflight: Future[None] | None = None
        self._cancel = threading.Event()
        self._state = "open"  # open | committed | aborting | aborted
        self.ensure_absent()

    def __repr__(self) -> str:
        return f"S3Writer(key={self.key!r}, state={self._state}, parts={len(self._md5s)})"

    # ---- create-only ------------------------------------------------------------------------------

    def _head(self) -> HeadObjectOutputTypeDef:
        return self._cfg.retry.call(
            lambda: self._client.head_object(Bucket=self._bucket, Key=self._full_key), f"HeadObject {self._full_key}"
        )

    def ensure_absent(self) -> None:
        try:
            self._head()
        except Exception as e:
            if is_not_found(e):
                return
            if http_status(e) == 403 and self._cfg.conditional_writes:
                # Without s3:ListBucket a HEAD of a missing key is 403, not 404. If-None-Match still
                # protects the write, and a real permission problem fails the first write clearly.
                log.debug("s3 head before write was refused (403); relying on If-None-Match key=%s", self.key)
                return
            raise translate(e, self._cfg.ctx, "HeadObject", self.key) from e
        raise ObjectExists(f"object {self.key!r} already exists in {self._cfg.ctx.url}; backups never overwrite")

    def _exists_error(self) -> ObjectExists:
        return ObjectExists(
            f"object {self.key!r} appeared in {self._cfg.ctx.url} while it was being written; "
            "backups never overwrite, so this upload was discarded"
        )

    def _is_ours(self, etag: str) -> bool:
        """After a 412 on a retried request: is the existing object the one we just wrote?"""
        try:
            head = self._head()
        except sdk_errors():
            return False
        return str(head.get("ETag", "")).strip('"') == etag

    # ---- the stream -------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._state != "open":
            raise StorageError(f"writer for {self.key!r} is already {self._state}")

    def write(self, data: bytes, /) -> None:
        self._check_open()
        try:
            self._buf += data
            self._size += len(data)
            while len(self._buf) >= part_size_for(len(self._md5s) + 1, self._cfg.part_size):
                self._wait_inflight()  # first, so that at most two parts are in memory
                size = part_size_for(len(self._md5s) + 1, self._cfg.part_size)
                # The full buffer itself becomes the part, with no copy of it: only the tail past the part's end
                # (less than one write) is copied into the next buffer, and the part is cut there in place.
                part = self._buf
                self._buf = part[size:]
                del part[size:]
                self._submit(part)
        except BaseException:
            self.abort()
            raise

    def _submit(self, part: bytearray) -> None:
        self._wait_inflight()
        if len(self._md5s) >= MAX_PARTS:
            raise StorageError(f"{self._cfg.ctx.target(self.key)}: the stream exceeds {MAX_PARTS} parts")
        if self._upload_id is None:
            self._create_upload()
        md5 = _md5(part)
        self._md5s.append(md5)
        number = len(self._md5s)
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pgops-s3-part")
        self._inflight = self._pool.submit(self._upload_part, number, part, md5)

    def _create_upload(self) -> None:
        try:
            resp = self._cfg.retry.call(
                lambda: self._client.create_multipart_upload(
                    Bucket=self._bucket, Key=self._full_key, ContentType=self._content_type, **self._extra()
                ),
                f"CreateMultipartUpload {self._full_key}",
                self._cancel,
            )
        except Exception as e:
            raise translate(e, self._cfg.ctx, "CreateMultipartUpload", self.key) from e
        self._upload_id = resp["UploadId"]

    def _extra(self) -> dict[str, Any]:
        return dict(self._cfg.extra_args)

    def _upload_part(self, number: int, body: bytearray, md5: bytes) -> None:
        """Runs in the background thread; retried by our policy (botocore sends each request once)."""
        upload_id = self._upload_id
        assert upload_id is not None

        def once() -> str:
            resp = self._client.upload_part(
                Bucket=self._bucket,
                Key=self._full_key,
                UploadId=upload_id,
                PartNumber=number,
                Body=cast("bytes", body),  # botocore takes a bytearray as a blob (its stubs say bytes): no copy
                ContentMD5=base64.b64encode(md5).decode(),
                ContentLength=len(body),
            )
            return resp["ETag"]

        etag = self._cfg.retry.call(once, f"UploadPart {number} of {self._full_key}", self._cancel)
        self._parts.append({"ETag": etag, "PartNumber": number})

    def _wait_inflight(self) -> None:
        fut, self._inflight = self._inflight, None
        if fut is None:
            return
        exc = fut.exception()
        if exc is not None:
            raise translate(exc, self._cfg.ctx, f"UploadPart {len(self._parts) + 1}", self.key) from exc

    # ---- the end ----------------------------------------------------------------------------------

    def commit(self) -> ObjectInfo:
        self._check_open()
        try:
            if self._upload_id is None and self._inflight is None:
                self._put_single(self._buf)
            else:
                if self._buf:
                    part, self._buf = self._buf, bytearray()
                    self._submit(part)
                self._wait_inflight()
                self._complete()
            info = self._stat()
        except BaseException:
            self.abort()
            raise
        self._state = "committed"
        self._shutdown_pool()
        return info

    def _put_single(self, data: bytearray) -> None:
        if not self._cfg.conditional_writes:
            self.ensure_absent()
        md5 = _md5(data)
        kwargs: dict[str, Any] = {
            "Bucket": self._bucket,
            "Key": self._full_key,
            "Body": cast("bytes", data),  # a bytearray, as in _upload_part
            "ContentMD5": base64.b64encode(md5).decode(),
            "ContentType": self._content_type,
            **self._extra(),
        }
        if self._cfg.conditional_writes:
            kwargs["IfNoneMatch"] = "*"
        try:
            self._cfg.retry.call(lambda: self._client.put_object(**kwargs), f"PutObject {self._full_key}")
        except Exception as e:
            if is_precondition_failed(e):
                if self._is_ours(md5.hex()):  # our first attempt landed, its response was lost
                    return
                raise self._exists_error() from None
            raise translate(e, self._cfg.ctx, "PutObject", self.key) from e

    def _complete(self) -> None:
        if not self._cfg.conditional_writes:
            self.ensure_absent()
        assert self._upload_id is not None
        parts = sorted(self._parts, key=lambda p: p["PartNumber"])
        if [p["PartNumber"] for p in parts] != list(range(1, len(self._md5s) + 1)):
            raise StorageError(f"{self._cfg.ctx.target(self.key)}: internal error, parts are missing")
        expected_etag = f"{_md5(b''.join(self._md5s)).hex()}-{len(self._md5s)}"
        kwargs: dict[str, Any] = {
            "Bucket": self._bucket,
            "Key": self._full_key,
            "UploadId": self._upload_id,
            "MultipartUpload": {"Parts": parts},
        }
        if self._cfg.conditional_writes:
            kwargs["IfNoneMatch"] = "*"
        try:
            self._cfg.retry.call(
                lambda: self._client.complete_multipart_upload(**kwargs),
                f"CompleteMultipartUpload {self._full_key}",
            )
        except Exception as e:
            # A retry after a lost response sees 412 (our own object now exists) or NoSuchUpload.
            if (is_precondition_failed(e) or error_code(e) == "NoSuchUpload") and self._is_ours(expected_etag):
                self._upload_id = None
                return
            if is_precondition_failed(e):
                raise self._exists_error() from None
            raise translate(e, self._cfg.ctx, "CompleteMultipartUpload", self.key) from e
        self._upload_id = None  # completed: nothing left to abort

    def _stat(self) -> ObjectInfo:
        try:
            head = self._head()
        except Exception as e:
            raise translate(e, self._cfg.ctx, "HeadObject", self.key) from e
        size = int(head["ContentLength"])
        if size != self._size:
            raise StorageError(
                f"{self._cfg.ctx.target(self.key)}: stored size {size} differs from the {self._size} bytes written"
            )
        return ObjectInfo(key=self.key, size=size, modified=head["LastModified"].astimezone(dt.UTC))

    def abort(self) -> None:
        """Stop the background upload, then abort the multipart upload. Idempotent; never raises.

        If it is interrupted (a second Ctrl-C while joining the upload thread), calling it again finishes
        the job. If the store cannot be reached, the upload id is logged (a lifecycle rule cleans up).
        """
        if self._state in ("committed", "aborted"):
            return
        self._state = "aborting"  # write() and commit() refuse from now on
        self._cancel.set()
        self._shutdown_pool()
        self._inflight = None
        self._buf = bytearray()
        upload_id = self._upload_id
        if upload_id is not None:

            def once() -> None:
                self._client.abort_multipart_upload(Bucket=self._bucket, Key=self._full_key, UploadId=upload_id)

            try:
                self._cfg.retry.call(once, f"AbortMultipartUpload {self._full_key}")
            except sdk_errors() as e:
                if error_code(e) != "NoSuchUpload":
                    log.error(
                        "s3 abort of multipart upload failed key=%s upload_id=%s error=%s",
                        self._full_key,
                        upload_id,
                        translate(e, self._cfg.ctx, "AbortMultipartUpload", self.key),
                    )
            self._upload_id = None
        self._state = "aborted"

    def _shutdown_pool(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
