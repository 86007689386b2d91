"""Reading a backup back: verified download (sha256 of the stored bytes and of the plain dump, decryption,
decompression), the identities that open an encrypted backup, and streaming into pg_restore.

Below the commands: restore and verify both stand on this module, neither imports the other.
"""

from __future__ import annotations

import contextlib
import io
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from pgops.crypto import load_identities
from pgops.errors import ConfigError, IntegrityError
from pgops.manifest import Manifest, StoredObject
from pgops.pg import PgConn
from pgops.pipeline import Meter, decompressor, pump, pump_decrypt, read_chunks
from pgops.proc import running
from pgops.settings import Settings
from pgops.storage.base import Storage

Progress = Callable[[int], None]


def is_encrypted(m: Manifest) -> bool:
    return str(m.encryption.get("algorithm", "none")) != "none"


def identities_for(settings: Settings, storage: Storage, m: Manifest) -> list[Any] | None:
    """For an encrypted backup: the identities, proven to open it (on its first 64 KiB) before any
    database is created. None for a plain backup."""
    if not is_encrypted(m):
        return None
    if m.encryption.get("algorithm") != "age":
        raise ConfigError(f"backup {m.id} uses encryption {m.encryption.get('algorithm')!r}, which pgops cannot read")
    identities: list[Any] = load_identities(settings, m.id)
    obj = m.objects[0]
    reader = storage.open_reader(obj.key)
    try:
        head = reader.read(64 * 1024)
    finally:
        reader.close()
    with contextlib.suppress(IntegrityError):  # a 64 KiB prefix is truncated by design; a wrong key is not
        pump_decrypt(
            io.BytesIO(head),
            identities,
            [],
            lambda _: None,
            what=f"backup {m.id}",
            recipients=list(m.encryption.get("recipients", [])),
        )
    return identities


def download_verified(
    storage: Storage,
    m: Manifest,
    obj: StoredObject,
    sink: Callable[[bytes], object],
    *,
    progress: Progress | None = None,
    identities: list[Any] | None = None,
    behind: bool = False,
) -> None:
    """Stream an object through sha256, decryption and decompression into `sink` (`behind`: the plain dump's
    sha256 and the sink run in a thread of their own, beside decompression; for a sink such as a file).

    IntegrityError if the stored bytes or the plain dump do not match the manifest."""
    stages = [decompressor(m.compression["algorithm"])]
    reader = storage.open_reader(obj.key)
    try:
        if is_encrypted(m):
            if identities is None:
                raise ConfigError(f"backup {m.id} is encrypted; set PGOPS_AGE_IDENTITY_FILE")
            result = pump_decrypt(
                reader,
                identities,
                stages,
                sink,
                progress,
                what=f"{obj.key}",
                recipients=list(m.encryption.get("recipients", [])),
                behind=behind,
            )
        else:
            result = pump(read_chunks(reader), stages, sink, progress, behind=behind)
    finally:
        reader.close()
    if result.raw_size != obj.size or result.raw_sha256 != obj.sha256:
        raise IntegrityError(
            f"{obj.key}: stored object does not match the manifest (size {result.raw_size} vs {obj.size}, "
            f"sha256 {result.raw_sha256[:12]}… vs {obj.sha256[:12]}…)"
        )
    if result.size != obj.raw_size or result.sha256 != obj.raw_sha256:
        raise IntegrityError(f"{obj.key}: the decoded dump does not match the manifest's plain checksum")


class PipeSink:
    """Writes into pg_restore's stdin. If pg_restore exits early, keeps consuming (so the hash still
    covers every byte) and lets the exit status tell what went wrong."""

    def __init__(self, stream: IO[bytes]) -> None:
        self.stream = stream
        self.broken = False

    def __call__(self, data: bytes) -> None:
        if self.broken:
            return
        try:
            self.stream.write(data)
        except BrokenPipeError:
            self.broken = True

    def close(self) -> None:
        with contextlib.suppress(BrokenPipeError):
            self.stream.close()


def pg_restore_argv(bindir: Path, conn: PgConn, db: str, *, no_owner: bool, no_acl: bool) -> list[str]:
    argv = [str(bindir / "pg_restore"), "--exit-on-error", "--no-password", "--dbname", conn.for_db(db)]
    if no_owner:
        argv.append("--no-owner")
    if no_acl:
        argv.append("--no-acl")
    return argv


def restore_streaming(
    storage: Storage,
    m: Manifest,
    argv: list[str],
    env: dict[str, str],
    *,
    progress: Progress | None,
    identities: list[Any] | None,
) -> None:
    obj = m.object("dump")
    with running([*argv, "--format=custom"], env=env, stdin=subprocess.PIPE) as child:
        assert child.proc.stdin is not None
        sink = PipeSink(child.proc.stdin)
        try:
            download_verified(storage, m, obj, sink, progress=progress, identities=identities)
        finally:
            sink.close()
        child.check(f"pg_restore of backup {m.id}")


def download_verified_sha_only(storage: Storage, m: Manifest) -> None:
    """Without a key, an encrypted object can still be checked against the sha256 of its stored bytes."""
    obj = m.objects[0]
    meter = Meter()
    reader = storage.open_reader(obj.key)
    try:
        for chunk in read_chunks(reader):
            meter.update(chunk)
    finally:
        reader.close()
    if meter.size != obj.size or meter.sha256 != obj.sha256:
        raise IntegrityError(f"{obj.key}: stored object does not match the manifest (sha256/size)")
