"""Streaming stages: bytes flow source → compress → (encrypt) → hash/count → sink, in bounded chunks.

Nothing is spooled to disk. Memory is the chunk size plus the compressor's window plus what the storage
writer buffers (at most two parts for S3).
"""

from __future__ import annotations

import dataclasses
import hashlib
import zlib
from collections.abc import Callable, Iterator
from typing import Protocol

from pgops.errors import IntegrityError

CHUNK = 1024 * 1024


class Transform(Protocol):
    def update(self, data: bytes, /) -> bytes: ...
    def finish(self) -> bytes: ...


class Identity:
    def update(self, data: bytes) -> bytes:
        return data

    def finish(self) -> bytes:
        return b""


class ZstdCompress:
    def __init__(self, level: int, threads: int) -> None:
        import os

        import zstandard

        workers = threads if threads > 0 else (os.cpu_count() or 1)
        # write_checksum: each frame carries a content checksum, so corruption is caught while decompressing.
        cctx = zstandard.ZstdCompressor(level=level, threads=workers if workers > 1 else 0, write_checksum=True)
        self._obj = cctx.compressobj()

    def update(self, data: bytes) -> bytes:
        return self._obj.compress(data)

    def finish(self) -> bytes:
        return self._obj.flush()


class ZstdDecompress:
    def __init__(self) -> None:
        import zstandard

        self._zstd = zstandard
        self._obj = zstandard.ZstdDecompressor().decompressobj()

    def update(self, data: bytes) -> bytes:
        try:
            return self._obj.decompress(data)
        except self._zstd.ZstdError as e:
            raise IntegrityError(f"the stored zstd stream is corrupt: {e}") from None

    def finish(self) -> bytes:
        return b""


class GzipCompress:
    def __init__(self, level: int) -> None:
        self._obj = zlib.compressobj(level, zlib.DEFLATED, 31)

    def update(self, data: bytes) -> bytes:
        return self._obj.compress(data)

    def finish(self) -> bytes:
        return self._obj.flush()


class GzipDecompress:
    def __init__(self) -> None:
        self._obj = zlib.decompressobj(31)

    def update(self, data: bytes) -> bytes:
        try:
            return self._obj.decompress(data)
        except zlib.error as e:
            raise IntegrityError(f"the stored gzip stream is corrupt: {e}") from None

    def finish(self) -> bytes:
        if not self._obj.eof:
            raise IntegrityError("the stored gzip stream is truncated")
        return self._obj.flush()


def compressor(algorithm: str, level: int, threads: int) -> Transform:
    if algorithm == "zstd":
        return ZstdCompress(level, threads)
    if algorithm == "gzip":
        return GzipCompress(level)
    return Identity()


def decompressor(algorithm: str) -> Transform:
    if algorithm == "zstd":
        return ZstdDecompress()
    if algorithm == "gzip":
        return GzipDecompress()
    return Identity()


EXTENSIONS = {"zstd": ".zst", "gzip": ".gz", "none": ""}


class Meter:
    """sha256 and byte count of whatever passes through."""

    def __init__(self) -> None:
        self._h = hashlib.sha256()
        self.size = 0

    def update(self, data: bytes) -> bytes:
        if data:
            self._h.update(data)
            self.size += len(data)
        return data

    def finish(self) -> bytes:
        return b""

    @property
    def sha256(self) -> str:
        return self._h.hexdigest()


@dataclasses.dataclass(frozen=True)
class StreamResult:
    raw_size: int  # bytes that came out of the source
    raw_sha256: str  # of the source bytes
    size: int  # bytes that went into the sink
    sha256: str  # of the sink bytes
    head: bytes  # the first bytes of the source, for format checks
    tail: bytes  # the last bytes of the source, for truncation checks


class Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


def read_chunks(stream: Readable, chunk: int = CHUNK) -> Iterator[bytes]:
    while True:
        data = stream.read(chunk)
        if not data:
            return
        yield data


def pump(
    chunks: Iterator[bytes],
    stages: list[Transform],
    sink: Callable[[bytes], object],
    progress: Callable[[int], None] | None = None,
) -> StreamResult:
    """Push every chunk through the stages into the sink, then flush the stages in order."""
    raw = Meter()
    out = Meter()
    head = b""
    tail = b""

    def emit(data: bytes, start: int) -> None:
        for stage in stages[start:]:
            if not data:
                return
            data = stage.update(data)
        if data:
            out.update(data)
            sink(data)

    for data in chunks:
        if len(head) < 16:
            head += data[: 16 - len(head)]
        tail = (tail + data[-64:])[-64:]
        raw.update(data)
        emit(data, 0)
        if progress is not None:
            progress(raw.size)
    for i, stage in enumerate(stages):
        emit(stage.finish(), i + 1)
    return StreamResult(
        raw_size=raw.size, raw_sha256=raw.sha256, size=out.size, sha256=out.sha256, head=head, tail=tail
    )
