"""S3 and S3-compatible stores (s3://bucket/prefix).

boto3 is imported lazily (s3_client.py), so importing pgops never loads a cloud SDK. Streaming writes
are multipart uploads (s3_multipart.py); error mapping and retries are in s3_errors.py.

Every write carries S3_STORAGE_CLASS and S3_SSE / S3_SSE_KMS_KEY_ID, and a Content-MD5 (which Object
Lock buckets require, and which makes the store verify every part). Reads resume after a dropped
connection with a Range request pinned to the object's ETag.
"""

from __future__ import annotations

import datetime as dt
import secrets
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

from pgops.errors import ObjectLocked, StorageError
from pgops.storage.base import ObjectInfo, WriteOptions, read_all, write_all
from pgops.storage.keys import validate_key, validate_prefix
from pgops.storage.retry import RetryPolicy, backoff_delay
from pgops.storage.s3_client import build_client
from pgops.storage.s3_errors import (
    S3Context,
    http_status,
    is_not_found,
    is_precondition_failed,
    is_retryable,
    retry_policy,
    sdk_errors,
    translate,
)
from pgops.storage.s3_multipart import S3Writer, WriterConfig
from pgops.storage.url import StorageLocation

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import GetObjectOutputTypeDef

    from pgops.storage.config import S3Config

T = TypeVar("T")

CHECK_DIR = ".pgops-check"  # check() writes and deletes one probe object under <prefix>/.pgops-check/


class _Truncated(Exception):
    """The body ended before Content-Length bytes arrived."""


class S3Reader:
    """get_object's streaming body; on a dropped connection it resumes from the current offset."""

    def __init__(self, client: S3Client, ctx: S3Context, key: str, retry: RetryPolicy) -> None:
        self._client, self._ctx, self._key, self._retry = client, ctx, key, retry
        self._pos = 0
        self._etag = ""
        resp = self._get(0)
        self._etag = str(resp["ETag"])
        self._length = int(resp["ContentLength"])
        self._body = resp["Body"]
        self._closed = False

    def _get(self, start: int) -> GetObjectOutputTypeDef:
        kwargs: dict[str, Any] = {"Bucket": self._ctx.bucket, "Key": self._ctx.prefix + self._key}
        if start:
            kwargs["Range"] = f"bytes={start}-"
            kwargs["IfMatch"] = self._etag
        try:
            return self._retry.call(lambda: self._client.get_object(**kwargs), f"GetObject {self._key}")
        except Exception as e:
            if start and is_precondition_failed(e):
                raise StorageError(f"{self._ctx.target(self._key)} changed while it was being read") from None
            raise translate(e, self._ctx, "GetObject", self._key) from e

    def read(self, size: int = -1, /) -> bytes:
        if self._closed:
            raise StorageError(f"reader for {self._key!r} is closed")
        attempt = 1
        while True:
            if self._pos >= self._length or size == 0:
                return b""
            try:
                data = self._body.read(None if size < 0 else size)
                if not data:
                    raise _Truncated
            except Exception as e:
                if not (isinstance(e, _Truncated) or is_retryable(e)) or attempt >= self._retry.attempts:
                    if isinstance(e, _Truncated):
                        raise StorageError(
                            f"{self._ctx.target(self._key)} ended after {self._pos} of {self._length} bytes; "
                            "check PGOPS_S3_ENDPOINT_URL and the network"
                        ) from None
                    raise translate(e, self._ctx, "GetObject (reading)", self._key) from e
                self._body.close()
                threading.Event().wait(backoff_delay(attempt, self._retry.base_delay, self._retry.max_delay))
                self._body = self._get(self._pos)["Body"]
                attempt += 1
                continue
            self._pos += len(data)
            return data

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._body.close()


class S3Storage:
    def __init__(self, location: StorageLocation, config: S3Config) -> None:
        client, spec = build_client(config)
        bucket, prefix = location.bucket, location.prefix
        self.bucket = bucket
        self.prefix = prefix
        self.url = location.url
        self.client = client
        self.spec = spec
        endpoint = spec.endpoint_url or f"the AWS endpoint for region {spec.region}"
        self.ctx = S3Context(url=self.url, bucket=bucket, prefix=prefix, endpoint=endpoint)
        self.retry = retry_policy(spec.max_attempts)
        extra: dict[str, str] = {}
        if config.storage_class:
            extra["StorageClass"] = config.storage_class
        if config.sse == "aes256":
            extra["ServerSideEncryption"] = "AES256"
        elif config.sse == "aws:kms":
            extra["ServerSideEncryption"] = "aws:kms"
            if config.sse_kms_key_id:
                extra["SSEKMSKeyId"] = config.sse_kms_key_id
        self.write_args = extra
        self.conditional_writes = config.conditional_writes
        self.part_size = config.part_size

    def __repr__(self) -> str:
        return f"S3Storage(url={self.url!r}, endpoint={self.ctx.endpoint!r})"

    __str__ = __repr__

    # ---- helpers ----------------------------------------------------------------------------------

    def _call(self, op: str, key: str | None, fn: Callable[[], T]) -> T:
        try:
            return self.retry.call(fn, f"{op} {key or self.bucket}")
        except Exception as e:
            raise translate(e, self.ctx, op, key) from e

    def _writer_config(self) -> WriterConfig:
        return WriterConfig(
            client=self.client,
            ctx=self.ctx,
            part_size=self.part_size,
            retry=self.retry,
            conditional_writes=self.conditional_writes,
            extra_args=self.write_args,
        )

    # ---- Storage ------------------------------------------------------------------------------------

    def open_writer(self, key: str, options: WriteOptions | None = None) -> S3Writer:
        return S3Writer(self._writer_config(), validate_key(key), options or WriteOptions())

    def open_reader(self, key: str) -> S3Reader:
        return S3Reader(self.client, self.ctx, validate_key(key), self.retry)

    def put_bytes(self, key: str, data: bytes, options: WriteOptions | None = None) -> ObjectInfo:
        return write_all(self, key, data, options)

    def get_bytes(self, key: str) -> bytes:
        return read_all(self, key)

    def exists(self, key: str) -> bool:
        full = self.prefix + validate_key(key)
        try:
            self.retry.call(lambda: self.client.head_object(Bucket=self.bucket, Key=full), f"HeadObject {key}")
        except Exception as e:
            if is_not_found(e):
                return False
            raise translate(e, self.ctx, "HeadObject", key) from e
        return True

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Objects under the storage prefix whose relative key starts with `prefix`.

        Skips "directory" placeholder keys (ending in '/') and check()'s probe objects.
        """
        full_prefix = self.prefix + validate_prefix(prefix)
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": full_prefix}
        while True:  # one page per request, each retried on its own
            page = self._call("ListObjectsV2", None, lambda: self.client.list_objects_v2(**kwargs))
            for obj in page.get("Contents", []):
                key = obj["Key"][len(self.prefix) :]
                if not key or key.endswith("/") or key.startswith(CHECK_DIR + "/"):
                    continue
                yield ObjectInfo(key=key, size=int(obj["Size"]), modified=obj["LastModified"].astimezone(dt.UTC))
            token = page.get("NextContinuationToken") if page.get("IsTruncated") else None
            if not token:
                return
            kwargs["ContinuationToken"] = token

    def delete(self, key: str) -> None:
        """Delete one object; ObjectNotFound if absent, ObjectLocked if Object Lock protects it.

        Object Lock is detected two ways. First, a HEAD: if it reports a legal hold ON, or a retention
        mode whose retain-until date is in the future, we refuse with ObjectLocked and delete nothing
        (S3 returns these fields only with s3:GetObjectRetention / s3:GetObjectLegalHold). Second, if
        the store refuses the delete itself, the error is mapped by `s3_errors.is_lock_refusal`
        (code ObjectLocked, or AccessDenied/InvalidRequest whose message mentions object lock,
        retention or legal hold).

        Object Lock implies a versioned bucket. There, and in any versioned bucket, this plain delete
        (no VersionId) only adds a delete marker: the object disappears from listings, but its data
        stays as a noncurrent version until a lifecycle rule or a version-specific delete removes it.
        """
        full = self.prefix + validate_key(key)
        head = self._call("HeadObject", key, lambda: self.client.head_object(Bucket=self.bucket, Key=full))
        if head.get("ObjectLockLegalHoldStatus") == "ON":
            raise ObjectLocked(f"{self.ctx.target(key)} is under an Object Lock legal hold; not deleted")
        mode, until = head.get("ObjectLockMode"), head.get("ObjectLockRetainUntilDate")
        if mode and until is not None and until > dt.datetime.now(dt.UTC):
            raise ObjectLocked(
                f"{self.ctx.target(key)} is retained by Object Lock ({mode}) until "
                f"{until.astimezone(dt.UTC):%Y-%m-%dT%H:%M:%SZ}; not deleted"
            )
        self._call("DeleteObject", key, lambda: self.client.delete_object(Bucket=self.bucket, Key=full))

    def check(self) -> None:
        """HeadBucket, then write and delete a probe object under <prefix>/.pgops-check/.

        Each failure becomes one StorageError naming the setting to fix. In a versioned bucket the
        probe's delete leaves a (tiny) noncurrent version behind, see delete().
        """
        try:
            self.retry.call(lambda: self.client.head_bucket(Bucket=self.bucket), f"HeadBucket {self.bucket}")
        except sdk_errors() as e:
            if http_status(e) != 403:
                raise translate(e, self.ctx, "check (HeadBucket)", None) from None
            # A HEAD response has no body, so 403 does not say why: ask again with a request that does.
            try:
                self.retry.call(
                    lambda: self.client.list_objects_v2(Bucket=self.bucket, Prefix=self.prefix, MaxKeys=1),
                    f"ListObjectsV2 {self.bucket}",
                )
            except sdk_errors() as e2:
                raise translate(e2, self.ctx, "check (ListObjectsV2)", None) from None
            raise translate(e, self.ctx, "check (HeadBucket)", None) from None
        probe = f"{CHECK_DIR}/{secrets.token_hex(8)}"
        self.put_bytes(probe, b"pgops storage check\n", WriteOptions(content_type="text/plain"))
        full = self.prefix + probe
        self._call("DeleteObject", probe, lambda: self.client.delete_object(Bucket=self.bucket, Key=full))

    def close(self) -> None:
        self.client.close()
