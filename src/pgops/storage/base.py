"""The storage interface. Every backend (local, S3, GCS) implements `Storage` and `ObjectWriter`.

Keys are relative to the prefix of the storage URL and always use "/" separators. A backend never
overwrites an existing key: `open_writer` / `put_bytes` raise `ObjectExists` instead.

Lifecycle of a streamed object:

    writer = storage.open_writer("db/2026.../dump.zst")
    try:
        for chunk in stream:
            writer.write(chunk)
        info = writer.commit()      # now, and only now, the object exists under its key
    except BaseException:
        writer.abort()              # idempotent; leaves nothing behind (no temp file, no multipart)
        raise

Memory: a writer buffers at most a small, bounded number of parts.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Iterator
from typing import Protocol, runtime_checkable


@dataclasses.dataclass(frozen=True)
class ObjectInfo:
    key: str  # relative to the storage prefix
    size: int
    modified: dt.datetime  # timezone-aware UTC


@dataclasses.dataclass(frozen=True)
class WriteOptions:
    """Per-object options; backends ignore what they do not support and say so in their docs."""

    content_type: str = "application/octet-stream"


@runtime_checkable
class ObjectReader(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...
    def close(self) -> None: ...


@runtime_checkable
class ObjectWriter(Protocol):
    key: str

    def write(self, data: bytes, /) -> None:
        """Append bytes. May block while a part uploads. Raises StorageError on failure."""

    def commit(self) -> ObjectInfo:
        """Make the object visible under its key, atomically. Raises ObjectExists if it appeared."""

    def abort(self) -> None:
        """Discard everything written so far. Idempotent, never raises for an already-aborted writer."""


@runtime_checkable
class Storage(Protocol):
    url: str  # the URL it was built from, without credentials

    def open_writer(self, key: str, options: WriteOptions | None = None) -> ObjectWriter: ...
    def open_reader(self, key: str) -> ObjectReader: ...
    def put_bytes(self, key: str, data: bytes, options: WriteOptions | None = None) -> ObjectInfo: ...
    def get_bytes(self, key: str) -> bytes: ...
    def exists(self, key: str) -> bool: ...
    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """All objects whose key starts with `prefix`, in no particular order."""
        ...

    def delete(self, key: str) -> None:
        """Delete one object. ObjectLocked if protected, ObjectNotFound if absent."""

    def check(self) -> None:
        """Fail fast, with one clear StorageError naming the setting, if the store is unusable:
        unreachable endpoint, wrong credentials, missing bucket, or no write permission."""

    def close(self) -> None: ...


def write_all(storage: Storage, key: str, data: bytes, options: WriteOptions | None = None) -> ObjectInfo:
    """put_bytes through the streaming writer: commit, or abort on any failure."""
    writer = storage.open_writer(key, options)
    try:
        writer.write(data)
        return writer.commit()
    except BaseException:
        writer.abort()
        raise


def read_all(storage: Storage, key: str) -> bytes:
    """get_bytes through the streaming reader."""
    reader = storage.open_reader(key)
    try:
        return reader.read()
    finally:
        reader.close()
