from __future__ import annotations

import fcntl
import hashlib
import os
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from pgops.errors import IntegrityError
from pgops.pg import split_guc_list
from pgops.pipeline import READ_AHEAD, compressor, decompressor, pump
from pgops.proc import PIPE_SIZE, widen_pipe


@pytest.mark.parametrize("algorithm", ["zstd", "gzip", "none"])
def test_compress_then_decompress_round_trip(algorithm: str) -> None:
    data = [os.urandom(100_000) + b"x" * 200_000 for _ in range(5)]
    stored = bytearray()
    res = pump(iter(data), [compressor(algorithm, 1 if algorithm != "none" else 0, 2)], stored.extend)
    assert res.raw_size == sum(map(len, data)) and res.size == len(stored)
    assert res.sha256 == hashlib.sha256(stored).hexdigest()
    assert res.raw_sha256 == hashlib.sha256(b"".join(data)).hexdigest()
    assert res.tail == b"".join(data)[-64:]
    out = bytearray()
    pump(
        iter([bytes(stored[i : i + 7000]) for i in range(0, len(stored), 7000)]), [decompressor(algorithm)], out.extend
    )
    assert bytes(out) == b"".join(data)


@pytest.mark.parametrize("algorithm", ["zstd", "gzip"])
def test_corrupt_or_truncated_compressed_stream_is_an_integrity_error(algorithm: str) -> None:
    stored = bytearray()
    pump(iter([os.urandom(50_000) * 4]), [compressor(algorithm, 3, 1)], stored.extend)
    flipped = bytearray(stored)
    flipped[len(flipped) // 2] ^= 0xFF
    with pytest.raises(IntegrityError):
        pump(iter([bytes(flipped)]), [decompressor(algorithm)], lambda b: None)
    if algorithm == "gzip":
        with pytest.raises(IntegrityError, match="truncated"):
            pump(iter([bytes(stored[:-100])]), [decompressor(algorithm)], lambda b: None)


@pytest.mark.parametrize(
    ("value", "items"),
    [
        ('"$user", public', ["$user", "public"]),
        ('"MiXeD", public, "Sales Dept"', ["MiXeD", "public", "Sales Dept"]),
        ('"with ""quote"""', ['with "quote"']),
        ("a", ["a"]),
        ("", []),
    ],
)
def test_split_guc_list(value: str, items: list[str]) -> None:
    assert split_guc_list(value) == items


def test_encrypted_pump_round_trip_and_sink_errors_keep_their_type() -> None:
    import io

    import pyrage

    from pgops.crypto import Recipients
    from pgops.errors import ObjectExists
    from pgops.pipeline import pump_decrypt

    ident = pyrage.x25519.Identity.generate()
    recipients = Recipients((str(ident.to_public()),))
    data = [os.urandom(70_000) for _ in range(20)]
    stored = bytearray()
    res = pump(iter(data), [compressor("zstd", 3, 1)], stored.extend, encrypt=recipients)
    assert stored.startswith(b"age-encryption.org/v1\n")
    assert res.sha256 == hashlib.sha256(stored).hexdigest()
    plain = bytearray()
    back = pump_decrypt(
        io.BytesIO(bytes(stored)), [ident], [decompressor("zstd")], plain.extend, what="t", recipients=[]
    )
    assert bytes(plain) == b"".join(data) and back.raw_sha256 == res.sha256 and back.sha256 == res.raw_sha256

    def refusing_sink(_: bytes) -> None:
        raise ObjectExists("the key appeared meanwhile")

    with pytest.raises(ObjectExists, match="appeared meanwhile"):  # not pyrage's EncryptError
        pump(iter(data), [compressor("zstd", 3, 1)], refusing_sink, encrypt=recipients)


@pytest.mark.parametrize("algorithm", ["zstd", "gzip"])
def test_decompression_memory_is_bounded_by_output_pieces(algorithm: str) -> None:
    """A 1 GB run of padded rows compresses to ~1 MB or less; decompressing it must never hold it all at once."""
    from pgops.pipeline import OUTPUT_PIECE

    stored = bytearray()
    pump(
        iter([(b"x" * 200 + b"\n") * 5_000_000]),
        [compressor(algorithm, 3 if algorithm == "zstd" else 6, 1)],
        stored.extend,
    )
    biggest = [0]
    total = [0]

    def sink(piece: bytes) -> None:
        biggest[0] = max(biggest[0], len(piece))
        total[0] += len(piece)

    pump(iter([bytes(stored)]), [decompressor(algorithm)], sink)
    assert total[0] == 201 * 5_000_000
    assert biggest[0] <= OUTPUT_PIECE


_PEAK_SCRIPT = """
import gc, os, sys
from pgops.pipeline import compressor

def hwm_kib():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM"))

rows = b"".join(b"%d\\t1\\t0\\t%s\\n" % (i, os.urandom(10).hex().encode() if i % 4 == 0 else b" " * 84)
                for i in range(20000))
gc.collect()
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # the peak RSS starts again from here
base = hwm_kib()
z = compressor("zstd", int(sys.argv[1]), 2)
for _ in range(200):
    z.update(rows)
z.finish()
print(hwm_kib() - base)
"""


@pytest.mark.parametrize("level", [1, 3])
def test_two_zstd_workers_stay_within_a_small_memory_budget(level: int) -> None:
    """zstd's default job (four windows) made two workers cost about 47 MiB at level 3; one window per job keeps the
    peak about 14 MiB. Measured in a fresh interpreter, from a peak reset after the input is built."""
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-c", _PEAK_SCRIPT, str(level)], capture_output=True, text=True, check=True, timeout=120
    )
    grown_mib = int(out.stdout) / 1024
    assert grown_mib < 24, f"zstd level {level} with 2 workers grew the peak RSS by {grown_mib:.0f} MiB"


def _read_ahead_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "pgops-read-ahead"]


def _wait_until(cond: Callable[[], bool], seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.01)
    return cond()


def test_the_source_is_read_and_hashed_ahead_while_the_sink_is_busy_but_only_a_bounded_amount() -> None:
    """pg_dump must not wait while pgops compresses and writes: its pipe is read ahead in a thread of its own,
    at most READ_AHEAD chunks (4 MiB) ahead of the sink, so memory stays bounded."""
    produced: list[int] = []
    release = threading.Event()

    def source() -> Iterator[bytes]:
        for i in range(20):
            produced.append(i)
            yield bytes([i]) * 1000

    def sink(data: bytes) -> None:
        release.wait(10)

    result: list[Any] = []
    consumer = threading.Thread(target=lambda: result.append(pump(source(), [], sink)))
    consumer.start()
    # the sink holds its first chunk; the reader keeps going until the queue is full, then waits
    assert _wait_until(lambda: len(produced) >= READ_AHEAD + 1), produced
    time.sleep(0.2)
    assert len(produced) <= READ_AHEAD + 2, f"read {len(produced)} chunks ahead of a sink that took one"
    release.set()
    consumer.join(10)
    assert result[0].raw_size == 20_000
    assert result[0].raw_sha256 == hashlib.sha256(b"".join(bytes([i]) * 1000 for i in range(20))).hexdigest()


def test_a_failing_source_raises_its_own_error_and_a_failing_sink_stops_the_reader() -> None:
    class SourceBroke(Exception):
        pass

    def failing_source() -> Iterator[bytes]:
        yield b"a" * 1000
        raise SourceBroke("storage read failed")

    with pytest.raises(SourceBroke, match="storage read failed"):
        pump(failing_source(), [compressor("zstd", 1, 1)], lambda b: None)

    endless_reads = 0

    def endless() -> Iterator[bytes]:
        nonlocal endless_reads
        while True:
            endless_reads += 1
            yield b"b" * 1000

    def sink(data: bytes) -> None:
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        pump(endless(), [], sink)
    # the reader stops at its next chunk instead of draining an endless source in the background
    assert _wait_until(lambda: not _read_ahead_threads()), _read_ahead_threads()
    reads = endless_reads
    time.sleep(0.2)
    assert endless_reads == reads


def test_the_child_pipe_is_widened_so_pg_dump_can_run_ahead() -> None:
    child = subprocess.Popen(["sleep", "5"], stdout=subprocess.PIPE)
    try:
        assert child.stdout is not None
        widen_pipe(child.stdout)
        assert fcntl.fcntl(child.stdout.fileno(), fcntl.F_GETPIPE_SZ) == PIPE_SIZE
    finally:
        child.kill()
        child.wait()


def _write_behind_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "pgops-write-behind"]


@pytest.mark.parametrize("encrypted", [False, True])
def test_writing_behind_gives_the_same_bytes_and_checksums_from_a_thread_of_its_own(encrypted: bool) -> None:
    """restore --jobs decompresses while another thread hashes the plain dump and writes the spool."""
    import io

    import pyrage

    from pgops.crypto import Recipients
    from pgops.pipeline import pump_decrypt

    ident = pyrage.x25519.Identity.generate()
    data = [os.urandom(50_000) + b"p" * 300_000 for _ in range(12)]
    stored = bytearray()
    made = pump(
        iter(data),
        [compressor("zstd", 3, 2)],
        stored.extend,
        encrypt=Recipients((str(ident.to_public()),)) if encrypted else None,
    )
    for behind in (False, True):
        out = bytearray()
        writers: set[str] = set()

        def sink(piece: bytes, out: bytearray = out, writers: set[str] = writers) -> None:
            writers.add(threading.current_thread().name)
            out.extend(piece)

        if encrypted:
            got = pump_decrypt(
                io.BytesIO(bytes(stored)), [ident], [decompressor("zstd")], sink, what="t", recipients=[], behind=behind
            )
        else:
            chunks = [bytes(stored[i : i + 65536]) for i in range(0, len(stored), 65536)]
            got = pump(iter(chunks), [decompressor("zstd")], sink, behind=behind)
        assert bytes(out) == b"".join(data)
        assert (got.raw_size, got.raw_sha256, got.size, got.sha256) == (
            made.size,
            made.sha256,
            made.raw_size,
            made.raw_sha256,
        )
        assert writers == ({"pgops-write-behind"} if behind else {threading.current_thread().name})
    assert _wait_until(lambda: not _write_behind_threads())


def test_writing_behind_raises_the_sinks_error_as_itself_and_stops_on_the_producers() -> None:
    stored = bytearray()
    pump(iter([os.urandom(30_000) + b"q" * 3_000_000]), [compressor("zstd", 3, 1)], stored.extend)

    def full_disk(_: bytes) -> None:
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        pump(iter([bytes(stored)]), [decompressor("zstd")], full_disk, behind=True)
    flipped = bytearray(stored)
    flipped[len(flipped) // 2] ^= 0xFF
    written: list[int] = []
    with pytest.raises(IntegrityError):
        pump(iter([bytes(flipped)]), [decompressor("zstd")], lambda b: written.append(len(b)), behind=True)
    assert _wait_until(lambda: not _write_behind_threads()), _write_behind_threads()
