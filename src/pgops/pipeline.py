"""Streaming stages: bytes flow source → compress → (encrypt) → hash/count → sink, in bounded chunks.

Nothing is spooled to disk. Memory is the chunk size plus the compressor's window plus what the storage
writer buffers (at most two parts for S3), plus up to READ_AHEAD chunks queued between the threads: the source
is read and hashed ahead in a thread of its own, and (for a spool file) the sink side writes behind in another.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import queue
import threading
import zlib
from collections.abc import Callable, Generator, Iterator
from typing import TYPE_CHECKING, Any, Protocol

from pgops.crypto import decrypt_stream, encrypt_stream
from pgops.errors import IntegrityError

if TYPE_CHECKING:
    from pgops.crypto import Recipients

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
        params = zstandard.ZstdCompressionParameters.from_level(
            level, threads=workers if workers > 1 else 0, write_checksum=1
        )
        if workers > 1:
            # zstd's workers each hold a job's input and output; its default job is four windows (8 MiB at level 3),
            # which cost about 45 MiB of peak RSS with two workers. One window (at least 2 MiB) costs about 14 MiB,
            # with the same ratio within 2% (tests/unit/test_pipeline.py holds the budget).
            params = zstandard.ZstdCompressionParameters.from_level(
                level, threads=workers, write_checksum=1, job_size=1 << max(21, params.window_log)
            )
        self._obj = zstandard.ZstdCompressor(compression_params=params).compressobj()

    def update(self, data: bytes) -> bytes:
        return self._obj.compress(data)

    def finish(self) -> bytes:
        return self._obj.flush()


# Dumps of padded rows compress 100x and more: one input chunk can inflate to hundreds of MiB at once.
# So the zstd decompressor pushes its output downstream in pieces of at most OUTPUT_PIECE bytes while
# it works (python-zstandard's stream_writer), instead of returning everything from one call.
OUTPUT_PIECE = 1024 * 1024


class _Emitter:
    def __init__(self, emit: Callable[[bytes], None]) -> None:
        self.emit = emit

    def write(self, data: bytes) -> int:
        self.emit(bytes(data))
        return len(data)


class ZstdDecompress:
    """A pushing stage: attach() gives it the downstream; update() returns nothing itself."""

    def __init__(self) -> None:
        import zstandard

        self._zstd = zstandard
        self._writer: Any = None

    def attach(self, emit: Callable[[bytes], None]) -> None:
        dctx = self._zstd.ZstdDecompressor()
        out: Any = _Emitter(emit)  # only write() is used; the stubs ask for a full IO[bytes]
        self._writer = dctx.stream_writer(out, write_size=OUTPUT_PIECE, closefd=False)

    def update(self, data: bytes) -> bytes:
        assert self._writer is not None, "ZstdDecompress must be attached to a pipeline"
        try:
            self._writer.write(data)
        except self._zstd.ZstdError as e:
            raise IntegrityError(f"the stored zstd stream is corrupt: {e}") from None
        return b""

    def finish(self) -> bytes:
        if self._writer is not None:
            self._writer.flush()
        return b""


class GzipCompress:
    def __init__(self, level: int) -> None:
        self._obj = zlib.compressobj(level, zlib.DEFLATED, 31)

    def update(self, data: bytes) -> bytes:
        return self._obj.compress(data)

    def finish(self) -> bytes:
        return self._obj.flush()


class GzipDecompress:
    """A pushing stage like ZstdDecompress: output leaves in pieces of at most OUTPUT_PIECE bytes."""

    def __init__(self) -> None:
        self._obj = zlib.decompressobj(31)
        self._emit: Callable[[bytes], None] | None = None

    def attach(self, emit: Callable[[bytes], None]) -> None:
        self._emit = emit

    def update(self, data: bytes) -> bytes:
        assert self._emit is not None, "GzipDecompress must be attached to a pipeline"
        try:
            while data:
                piece = self._obj.decompress(data, OUTPUT_PIECE)
                if piece:
                    self._emit(piece)
                data = self._obj.unconsumed_tail
        except zlib.error as e:
            raise IntegrityError(f"the stored gzip stream is corrupt: {e}") from None
        return b""

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


class _Source:
    """Meters the source side: sha256, size, and the first and last bytes."""

    def __init__(self) -> None:
        self.meter = Meter()
        self.head = b""
        self.tail = b""

    def see(self, data: bytes) -> bytes:
        if len(self.head) < 16:
            self.head += data[: 16 - len(self.head)]
        self.tail = (self.tail + data[-64:])[-64:]
        self.meter.update(data)
        return data

    def result(self, out: Meter) -> StreamResult:
        m = self.meter
        return StreamResult(m.size, m.sha256, out.size, out.sha256, self.head, self.tail)


READ_AHEAD = 4  # chunks read and hashed ahead of the consumer: at most 4 MiB more memory


class _End:
    pass


@dataclasses.dataclass(frozen=True)
class _Failed:
    error: BaseException


class _ReadAhead:
    """Reads and meters the source in a thread of its own, up to READ_AHEAD chunks ahead of the consumer.

    Reading the source (pg_dump's pipe, a stored object) and its sha256 then run beside compression, the
    output's sha256 and the writes, instead of taking turns with them in one thread: hashlib, zstd and
    file and pipe I/O release the GIL on large buffers. The producer (pg_dump) waits less on a full pipe.
    Errors of the source reach the consumer as themselves; progress is reported from the consumer's thread.
    """

    def __init__(self, chunks: Iterator[bytes], source: _Source) -> None:
        self._chunks, self._source = chunks, source
        self._q: queue.Queue[bytes | _End | _Failed] = queue.Queue(maxsize=READ_AHEAD)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pgops-read-ahead", daemon=True)
        self._thread.start()

    def _put(self, item: bytes | _End | _Failed) -> bool:
        while not self._stop.is_set():
            with contextlib.suppress(queue.Full):
                self._q.put(item, timeout=0.1)
                return True
        return False

    def _run(self) -> None:
        try:
            for chunk in self._chunks:
                self._source.see(chunk)
                if not self._put(chunk):
                    return
        except BaseException as e:  # noqa: BLE001 - handed to the consumer, which raises it as itself
            self._put(_Failed(e))
            return
        self._put(_End())

    def __iter__(self) -> Iterator[bytes]:
        while True:
            item = self._q.get()
            if isinstance(item, _End):
                self._thread.join()
                return
            if isinstance(item, _Failed):
                self._thread.join()
                raise item.error
            yield item

    def close(self) -> None:
        """Stop reading ahead (the consumer failed). The thread ends at its next chunk; the caller owns the
        source and closes it (or kills its producer), which also ends a read that is still waiting."""
        self._stop.set()


def _read_ahead(
    chunks: Iterator[bytes], source: _Source, progress: Callable[[int], None] | None
) -> Generator[bytes, None, None]:
    reader = _ReadAhead(chunks, source)
    done = 0
    try:
        for chunk in reader:
            done += len(chunk)
            if progress is not None:
                progress(done)
            yield chunk
    finally:
        reader.close()


class _WriteThrough:
    """The sink side, in the caller's thread: meters (sha256, size) and writes what the stages emit."""

    def __init__(self, sink: Callable[[bytes], object]) -> None:
        self.sink, self.meter = sink, Meter()

    def __call__(self, data: bytes) -> None:
        self.meter.update(data)
        self.sink(data)

    def close(self) -> None:
        """Everything is written (nothing to wait for here)."""

    def abandon(self) -> None:
        """The producer failed (nothing to stop here)."""


class _WriteBehind(_WriteThrough):
    """The sink side in a thread of its own, up to READ_AHEAD pieces behind the stages. Decompression then runs
    beside the plain dump's sha256 and the writes of a restore's spool instead of taking turns with them. A sink
    error reaches the producer at its next piece or at close(), as itself."""

    def __init__(self, sink: Callable[[bytes], object]) -> None:
        super().__init__(sink)
        self._q: queue.Queue[bytes | None] = queue.Queue(maxsize=READ_AHEAD)
        self._error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pgops-write-behind", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (data := self._q.get()) is not None:
            if self._error is not None or self._stop.is_set():
                continue  # drain, so that a producer blocked on a full queue is released
            try:
                super().__call__(data)
            except BaseException as e:  # noqa: BLE001 - handed to the producer, which raises it as itself
                self._error = e

    def __call__(self, data: bytes) -> None:
        if self._error is not None:
            raise self._error
        self._q.put(data)

    def close(self) -> None:
        """Wait until everything is written; raise the sink's error if it had one."""
        self._q.put(None)
        self._thread.join()
        if self._error is not None:
            raise self._error

    def abandon(self) -> None:
        """The producer failed: drop what is queued and end the thread."""
        self._stop.set()
        if self._thread.is_alive():
            self._q.put(None)
            self._thread.join()


def _output(sink: Callable[[bytes], object], behind: bool) -> _WriteThrough:
    return _WriteBehind(sink) if behind else _WriteThrough(sink)


class _Push:
    """Pushes bytes through stages into a sink (only non-empty pieces reach it)."""

    def __init__(self, stages: list[Transform], sink: Callable[[bytes], object]) -> None:
        self.stages, self.sink = stages, sink
        for i, stage in enumerate(stages):
            attach = getattr(stage, "attach", None)
            if attach is not None:  # a stage that pushes its own output downstream, piece by piece
                attach(lambda data, nxt=i + 1: self._emit(data, nxt))

    def _emit(self, data: bytes, start: int) -> None:
        for stage in self.stages[start:]:
            if not data:
                return
            data = stage.update(data)
        if data:
            self.sink(data)

    def feed(self, data: bytes) -> None:
        self._emit(data, 0)

    def finish(self) -> None:
        for i, stage in enumerate(self.stages):
            self._emit(stage.finish(), i + 1)


class _Pull:
    """A reader over push stages: read(n) returns what the stages emit for the next source chunks."""

    def __init__(self, chunks: Iterator[bytes], stages: list[Transform]) -> None:
        self.chunks = chunks
        self.buf = bytearray()
        self.pos = 0  # consumed prefix of buf; compacted lazily so small reads stay O(size)
        self.push = _Push(stages, self.buf.extend)
        self.done = False

    def read(self, size: int = -1) -> bytes:
        want = size if size > 0 else CHUNK
        while len(self.buf) - self.pos < want and not self.done:
            if self.pos:
                del self.buf[: self.pos]
                self.pos = 0
            chunk = next(self.chunks, None)
            if chunk is None:
                self.push.finish()
                self.done = True
            else:
                self.push.feed(chunk)
        data = bytes(self.buf[self.pos : self.pos + want])
        self.pos += len(data)
        return data


def pump(
    chunks: Iterator[bytes],
    stages: list[Transform],
    sink: Callable[[bytes], object],
    progress: Callable[[int], None] | None = None,
    *,
    encrypt: Recipients | None = None,
    behind: bool = False,
) -> StreamResult:
    """source chunks → stages → [age encryption] → sink, metering both ends. With `behind`, the sink side
    (the output's sha256 and the writes) runs in a thread of its own (for a sink that can be written from
    another thread, such as a file)."""
    source = _Source()
    metered = _read_ahead(chunks, source, progress)
    out = _output(sink, behind)
    try:
        if encrypt is None:
            push = _Push(stages, out)
            for data in metered:
                push.feed(data)
            push.finish()
        else:
            encrypt_stream(_Pull(metered, stages), _Push([], out).feed, encrypt)
        out.close()
        return source.result(out.meter)
    finally:
        metered.close()
        out.abandon()


class _MeteredReader:
    def __init__(self, reader: Readable, source: _Source, progress: Callable[[int], None] | None) -> None:
        self.reader, self.source, self.progress = reader, source, progress

    def read(self, size: int = -1) -> bytes:
        data = self.source.see(self.reader.read(size))
        if self.progress is not None:
            self.progress(self.source.meter.size)
        return data


def pump_decrypt(
    reader: Readable,
    identities: list[Any],
    stages: list[Transform],
    sink: Callable[[bytes], object],
    progress: Callable[[int], None] | None = None,
    *,
    what: str,
    recipients: list[str],
    behind: bool = False,
) -> StreamResult:
    """stored age stream → decryption → stages → sink, metering the stored bytes and the output (`behind`:
    as in pump)."""
    source = _Source()
    out = _output(sink, behind)
    try:
        push = _Push(stages, out)
        decrypt_stream(
            _MeteredReader(reader, source, progress), push.feed, identities, what=what, recipients=recipients
        )
        push.finish()
        out.close()
        return source.result(out.meter)
    finally:
        out.abandon()
