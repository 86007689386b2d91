from __future__ import annotations

import hashlib
import os

import pytest

from pgops.errors import IntegrityError
from pgops.pg import split_guc_list
from pgops.pipeline import compressor, decompressor, pump


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
