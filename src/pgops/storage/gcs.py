"""Google Cloud Storage (gs://bucket/prefix).

google-cloud-storage and google-auth are imported lazily (gcs_client.py), so importing pgops never loads a
cloud SDK. Metadata, listing and deletes go through the google-cloud-storage client; streamed uploads
(gcs_upload.py) and downloads speak the JSON API's media endpoints over the same authorized session, so
that we control chunking, retries, create-only preconditions and cancellation. Error mapping and retries
are in gcs_errors.py.

Every write carries ifGenerationMatch=0 (create-only), GCS_STORAGE_CLASS and GCS_KMS_KEY_NAME (CMEK), and a
CRC32C that the server checks; the CRC32C and size the server reports are compared with ours after every
upload. Reads are pinned to the generation they started with, resume after a dropped connection with a
Range request, and check the object's CRC32C when they reach its end.
"""

from __future__ import annotations

import datetime as dt
import logging
import secrets
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

from pgops.errors import ObjectLocked, ObjectNotFound, StorageError
from pgops.storage.base import ObjectInfo, WriteOptions, read_all, write_all
from pgops.storage.gcs_client import DEFAULT_ENDPOINT, TIMEOUT, build_client
from pgops.storage.gcs_download import GCSReader
from pgops.storage.gcs_errors import (
    GCSContext,
    http_status,
    is_retryable,
    retry_policy,
    translate,
)
from pgops.storage.gcs_upload import GCSWriter, WriterConfig, parse_time, upload_bytes
from pgops.storage.keys import validate_key, validate_prefix
from pgops.storage.url import StorageLocation

if TYPE_CHECKING:
    from pgops.storage.config import GCSConfig

log = logging.getLogger("pgops.storage.gcs")

T = TypeVar("T")

CHECK_DIR = ".pgops-check"  # check() writes and deletes one probe object under <prefix>/.pgops-check/
READ_BLOCK = 1024 * 1024


class GCSStorage:
    def __init__(self, location: StorageLocation, config: GCSConfig) -> None:
        client, session, spec = build_client(config)
        bucket, prefix = location.bucket, location.prefix
        self.bucket = bucket
        self.prefix = prefix
        self.url = location.url
        self.client = client
        self.session = session
        self.spec = spec
        self.api_endpoint = spec.endpoint_url.rstrip("/")
        endpoint = spec.endpoint_url if spec.endpoint_url != DEFAULT_ENDPOINT else "storage.googleapis.com"
        self.ctx = GCSContext(
            url=self.url,
            bucket=bucket,
            prefix=prefix,
            endpoint=endpoint,
            endpoint_setting=spec.endpoint_setting,
            credentials=spec.credentials,
            credentials_hint=spec.credentials_hint,
        )
        self.retry = retry_policy(spec.max_attempts)
        self.chunk_size = config.chunk_size
        self.storage_class = config.storage_class  # checked and upper-cased by config.gcs_config
        self.kms_key_name = config.kms_key_name
        self._bucket = client.bucket(bucket)

    def __repr__(self) -> str:
        return f"GCSStorage(url={self.url!r}, endpoint={self.ctx.endpoint!r}, credentials={self.ctx.credentials!r})"

    __str__ = __repr__

    # ---- helpers ----------------------------------------------------------------------------------

    def _call(self, op: str, key: str | None, fn: Callable[[], T], *, missing: str = "object") -> T:
        try:
            return self.retry.call(fn, f"{op} {key or self.bucket}")
        except Exception as e:
            raise translate(e, self.ctx, op, key, missing=missing) from e

    def stat(self, key: str) -> dict[str, Any] | None:
        """The object's JSON API resource (size, generation, crc32c, holds, ...), or None if absent."""
        name = self.prefix + key
        blob = self._call("get object metadata", key, lambda: self._bucket.get_blob(name, retry=None, timeout=TIMEOUT))
        if blob is None:
            return None
        retention = blob.retention
        return {
            "size": blob.size,
            "generation": blob.generation,
            "crc32c": blob.crc32c,
            "updated": blob.updated,
            "storageClass": blob.storage_class,
            "kmsKeyName": blob.kms_key_name,
            "temporaryHold": blob.temporary_hold,
            "eventBasedHold": blob.event_based_hold,
            "retentionExpirationTime": blob.retention_expiration_time,
            "retention": {"mode": retention.mode, "retainUntilTime": retention.retain_until_time},
        }

    def _stat_for_write(self, key: str) -> dict[str, Any] | None:
        """stat(), except that a refused read (403: e.g. roles/storage.objectCreator only, which may create
        but not read) counts as absent: ifGenerationMatch=0 still makes GCS refuse an overwrite."""
        try:
            return self.stat(key)
        except StorageError as e:
            cause = e.__cause__
            if cause is None or http_status(cause) != 403:
                raise
            log.debug("gcs metadata read refused (403); relying on ifGenerationMatch=0 key=%s", key)
            return None

    def _delete_generation(self, key: str, generation: int) -> None:
        blob = self._bucket.blob(self.prefix + key)
        self._call(
            "delete",
            key,
            lambda: blob.delete(if_generation_match=generation, retry=None, timeout=TIMEOUT),
        )

    def _writer_config(self) -> WriterConfig:
        return WriterConfig(
            session=self.session,
            ctx=self.ctx,
            api_endpoint=self.api_endpoint,
            chunk_size=self.chunk_size,
            retry=self.retry,
            storage_class=self.storage_class,
            kms_key_name=self.kms_key_name,
            stat=self._stat_for_write,
            delete_generation=self._delete_generation,
        )

    # ---- Storage ------------------------------------------------------------------------------------

    def open_writer(self, key: str, options: WriteOptions | None = None) -> GCSWriter:
        return GCSWriter(self._writer_config(), validate_key(key), options or WriteOptions())

    def open_reader(self, key: str) -> GCSReader:
        validate_key(key)
        meta = self.stat(key)
        if meta is None:
            raise ObjectNotFound(f"object {key!r} does not exist in {self.url}")
        return GCSReader(self.session, self.ctx, self.retry, self.api_endpoint, key=key, meta=meta)

    def put_bytes(self, key: str, data: bytes, options: WriteOptions | None = None) -> ObjectInfo:
        validate_key(key)
        options = options or WriteOptions()
        if len(data) <= self.chunk_size:
            return upload_bytes(self._writer_config(), key, data, options)
        return write_all(self, key, data, options)

    def get_bytes(self, key: str) -> bytes:
        return read_all(self, key)

    def exists(self, key: str) -> bool:
        return self.stat(validate_key(key)) is not None

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Objects under the storage prefix whose relative key starts with `prefix`.

        Skips "folder" placeholders (names ending in '/') and check()'s probe objects. A listing that
        fails part-way is resumed after the last name seen (GCS lists in lexicographic order).
        """
        full_prefix = self.prefix + validate_prefix(prefix)
        last: str | None = None
        attempt = 1
        while True:
            try:
                blobs = self.client.list_blobs(
                    self._bucket,
                    prefix=full_prefix,
                    start_offset=last,
                    fields="items(name,size,updated),nextPageToken",
                    retry=None,
                    timeout=TIMEOUT,
                )
                for blob in blobs:
                    name = str(blob.name)
                    if last is not None and name <= last:  # start_offset is inclusive
                        continue
                    last = name
                    key = name[len(self.prefix) :]
                    if not key or key.endswith("/") or key.startswith(CHECK_DIR + "/"):
                        continue
                    yield ObjectInfo(key=key, size=int(blob.size or 0), modified=blob.updated.astimezone(dt.UTC))
            except Exception as e:
                if not is_retryable(e) or attempt >= self.retry.attempts:
                    raise translate(e, self.ctx, "list", None, missing="bucket") from e
                self.retry.wait(attempt, f"list {full_prefix} after {last!r}", e)
                attempt += 1
            else:
                return

    def delete(self, key: str) -> None:
        """Delete one object; ObjectNotFound if absent, ObjectLocked if a hold or retention protects it.

        Protection is detected two ways. First, from the object's metadata: a temporary or event-based
        hold, a retention expiration time (the bucket's retention policy) or an object retention
        (retainUntilTime) in the future refuse the delete and nothing is deleted. Second, if GCS refuses
        the delete itself (403 retentionPolicyNotMet), that maps to ObjectLocked too.

        The delete is pinned to the generation inspected (ifGenerationMatch). In a bucket with object
        versioning or soft delete, the data stays as a noncurrent / soft-deleted generation until the
        bucket's lifecycle or soft-delete window removes it.
        """
        validate_key(key)
        meta = self.stat(key)
        if meta is None:
            raise ObjectNotFound(f"object {key!r} does not exist in {self.url}")
        target = self.ctx.target(key)
        for hold in ("temporaryHold", "eventBasedHold"):
            if meta.get(hold):
                kind = "temporary" if hold == "temporaryHold" else "event-based"
                raise ObjectLocked(f"{target} is under a {kind} hold; not deleted")
        now = dt.datetime.now(dt.UTC)
        until = parse_time(meta.get("retentionExpirationTime"))
        if until is not None and until > now:
            raise ObjectLocked(
                f"{target} is retained by the bucket's retention policy until {until:%Y-%m-%dT%H:%M:%SZ}"
            )
        retention = meta.get("retention") or {}
        until = parse_time(retention.get("retainUntilTime")) if isinstance(retention, dict) else None
        if until is not None and until > now:
            mode = retention.get("mode", "")
            raise ObjectLocked(f"{target} is retained ({mode}) until {until:%Y-%m-%dT%H:%M:%SZ}; not deleted")
        self._delete_generation(key, int(meta["generation"]))

    def check(self) -> None:
        """The bucket's metadata, then write and delete a probe object under <prefix>/.pgops-check/.

        The probe is written like a backup (create-only, CMEK, storage class), so a refused KMS key or
        storage class fails here. Without storage.buckets.get (e.g. roles/storage.objectAdmin only), a
        one-item listing proves the bucket exists instead. Each failure is one StorageError naming the
        setting to fix. A probe that a retention policy keeps is left in place (it is never listed).
        """
        try:
            self.retry.call(lambda: self._bucket.reload(retry=None, timeout=TIMEOUT), "get bucket")
        except Exception as e:
            if http_status(e) != 403:
                raise translate(e, self.ctx, "check (get bucket)", None, missing="bucket") from e
            self._call(
                "check (list objects)",
                None,
                lambda: list(
                    self.client.list_blobs(self._bucket, prefix=self.prefix, max_results=1, retry=None, timeout=TIMEOUT)
                ),
                missing="bucket",
            )
        probe = f"{CHECK_DIR}/{secrets.token_hex(8)}"
        info = self.put_bytes(probe, b"pgops storage check\n", WriteOptions(content_type="text/plain"))
        try:
            self.delete(probe)
        except ObjectLocked as e:
            log.warning("gcs check probe kept by a retention policy or hold key=%s detail=%s", info.key, e)

    def close(self) -> None:
        self.client.close()
