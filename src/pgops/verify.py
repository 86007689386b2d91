"""`pgops verify`: prove that backups can be read and restored, without trusting anything but the bytes.

Quick mode streams each object through its sha256 check (and age decryption, when an identity is given),
then lets `pg_restore --file=/dev/null` parse the whole archive, TOC and every data block. That is
stricter than `pg_restore --list`, which stops after the TOC. Nothing touches the disk but a pipe.

--restore-test restores into a scratch database (on PGOPS_PG_CONNINFO's server, by default the local
one), checks that every table in the manifest exists with a row count near the manifest's estimate,
runs pg_amcheck where it is installed, drops the scratch database and records the restore time.

A verified backup gets a `verified-<UTC time>-<mode>.json` object next to its manifest; `status`,
metrics and retention (the newest verified backup is always kept) read those. That record is the only
thing verify writes, so a drill host may restore-test another server's target (`--target`) without
claiming it: the scratch database is on the drill host's own server.

Without PGOPS_AGE_IDENTITY_FILE an encrypted backup can only be checked against the sha256 of its stored
bytes (mode `sha256`); a --restore-test of one is refused (MissingIdentity, exit 2), never passed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import secrets
import socket
import subprocess
import time
from typing import Any

from pgops.catalog import Catalog, verification_key
from pgops.errors import ConfigError, IntegrityError, MissingIdentity, PgOpsError, PostgresError
from pgops.log import q
from pgops.manifest import KIND_DATABASE, REASON_SAFETY, Manifest, iso, utcnow
from pgops.pg import PgConn, create_database_sql, drop_scratch, find_bindir, server_info
from pgops.proc import capture, running
from pgops.readback import (
    PipeSink,
    download_verified,
    download_verified_sha_only,
    identities_for,
    is_encrypted,
    pg_restore_argv,
    restore_streaming,
)
from pgops.sanity import check_tables
from pgops.settings import Settings
from pgops.storage.base import Storage, WriteOptions

log = logging.getLogger(__name__)

SCRIPT_END = b"dump complete"


@dataclasses.dataclass(frozen=True)
class VerifyResult:
    manifest: Manifest
    mode: str
    ok: bool
    seconds: float
    error: str = ""
    restore_seconds: float | None = None
    tables_checked: int = 0
    amcheck: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.manifest.id,
            "database": self.manifest.database,
            "mode": self.mode,
            "ok": self.ok,
            "seconds": round(self.seconds, 3),
            "error": self.error,
            "restore_seconds": None if self.restore_seconds is None else round(self.restore_seconds, 3),
            "tables_checked": self.tables_checked,
            "amcheck": self.amcheck,
        }


@dataclasses.dataclass
class VerifyReport:
    results: list[VerifyResult] = dataclasses.field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.results)


def select(catalog: Catalog, *, backup_id: str | None, database: str | None, everything: bool) -> list[Manifest]:
    """By id; or every good backup; or (default) the newest good backup of each database and of globals
    that is not a safety copy (restores take those only by id, so they are no drill's subject)."""
    found = [m for m in catalog.manifests if database is None or m.database == database]
    if backup_id is not None:
        return [m for m in found if m.id == backup_id]
    if everything:
        return found
    newest: dict[tuple[str, str | None], Manifest] = {}
    for m in found:  # newest first
        if m.reason != REASON_SAFETY:
            newest.setdefault((m.kind, m.database), m)
    return list(newest.values())


def quick_check(settings: Settings, storage: Storage, m: Manifest, identities: list[Any] | None) -> None:
    """sha256 (and decryption), then a full parse of the archive by pg_restore, streamed."""
    obj = m.objects[0]
    if m.kind != KIND_DATABASE:
        tail = bytearray()

        def keep_tail(data: bytes) -> None:
            tail.extend(data[-64:])
            del tail[:-64]

        download_verified(storage, m, obj, keep_tail, identities=identities)
        if SCRIPT_END not in tail:
            raise IntegrityError(f"{obj.key}: the globals script does not end with its 'dump complete' marker")
        return
    bindir = find_bindir(settings.pg_bindir, None)
    argv = [str(bindir / "pg_restore"), "--format=custom", "--file=/dev/null"]
    with running(argv, env=PgConn.from_settings(settings).child_env(), stdin=subprocess.PIPE) as child:
        assert child.proc.stdin is not None
        sink = PipeSink(child.proc.stdin)
        try:
            download_verified(storage, m, obj, sink, identities=identities)
        finally:
            sink.close()
        rc = child.wait()
    if rc != 0:
        lines = child.stderr_text.splitlines()
        raise IntegrityError(f"{obj.key}: pg_restore cannot parse the archive: {lines[-1] if lines else rc}")


def restore_drill(
    settings: Settings, storage: Storage, m: Manifest, identities: list[Any] | None
) -> tuple[float, int, bool]:
    """Restore into a scratch database, check it, drop it. Returns (restore seconds, tables checked, amcheck)."""
    conn = PgConn.from_settings(settings)
    with conn.connect("postgres") as c:
        bindir = find_bindir(settings.pg_bindir, server_info(c).major)
        scratch = f"pgops_verify_{secrets.token_hex(4)}"
        c.execute(create_database_sql(scratch, m.database_properties, None))
    try:
        t0 = time.monotonic()
        argv = pg_restore_argv(bindir, conn, scratch, no_owner=True, no_acl=True)
        restore_streaming(storage, m, argv, conn.child_env(), progress=None, identities=identities)
        restore_seconds = time.monotonic() - t0
        tables = check_tables(conn, scratch, m)
        amcheck = (bindir / "pg_amcheck").exists()
        if amcheck:
            argv = [str(bindir / "pg_amcheck"), "--install-missing", "--heapallindexed", "--no-password"]
            argv += ["--database", scratch]
            rc, out, err = capture(argv, env=conn.libpq_env())
            if rc != 0:
                # pg_amcheck names the object on one line and the problem on the next (then DETAIL and the query).
                lines = [line.strip() for line in (out + err).splitlines() if line.strip()]
                raise IntegrityError(
                    f"pg_amcheck found problems in the restore of {m.id} (exit {rc}): {' '.join(lines[:2])}"
                    + (f" ({len(lines) - 2} more lines)" if len(lines) > 2 else "")
                )
        return restore_seconds, tables, amcheck
    finally:
        drop_scratch(conn, scratch)


def _record(storage: Storage, result: VerifyResult) -> None:
    key = verification_key(result.manifest, utcnow(), result.mode)
    # The only object verify ever writes, next to the manifest it verified; a drill host restore-testing
    # another server's target (--target) writes this and nothing else there, and claims nothing.
    body = dict(result.to_json(), verified_at=iso(utcnow()), verified_by=socket.gethostname())
    with contextlib.suppress(PgOpsError):  # a second verify within the same second: the first record stands
        storage.put_bytes(key, json.dumps(body, indent=2).encode(), WriteOptions(content_type="application/json"))


def _refuse_restore_test_without_key(settings: Settings, chosen: list[Manifest], restore_test: bool) -> None:
    """A restore test that cannot decrypt would only check sha256: that is no restore test, so it fails
    before anything is done (and the CLI records a failed restore-test attempt for these databases)."""
    locked = [m for m in chosen if restore_test and m.kind == KIND_DATABASE and is_encrypted(m)]
    if locked:
        raise MissingIdentity(
            f"PGOPS_AGE_IDENTITY_FILE is not set, and {len(locked)} backup(s) of target {settings.target!r} to "
            f"restore-test are encrypted with age (first: {locked[0].id}, database {locked[0].database!r}); a "
            "restore test needs the private key: set PGOPS_AGE_IDENTITY_FILE (or --identity-file), or run the "
            "restore test where the key is (a drill host); nothing was restored",
            [m.database for m in locked],
        )


def run_verify(
    settings: Settings,
    storage: Storage,
    *,
    backup_id: str | None = None,
    database: str | None = None,
    everything: bool = False,
    restore_test: bool = False,
) -> VerifyReport:
    catalog = Catalog.load(storage, settings.target)
    chosen = select(catalog, backup_id=backup_id, database=database, everything=everything)
    if not chosen:
        from pgops.errors import BackupNotFound

        raise BackupNotFound(f"no complete backup to verify for target {settings.target!r}")
    if not settings.age_identity_file:
        _refuse_restore_test_without_key(settings, chosen, restore_test)
        if any(is_encrypted(m) for m in chosen):
            log.warning("event=verify_without_key detail=%s", q("encrypted backups are checked by sha256 only"))
    report = VerifyReport()
    for m in chosen:
        t0 = time.monotonic()
        mode = "restore" if restore_test and m.kind == KIND_DATABASE else "quick"
        try:
            identities = identities_for(settings, storage, m) if settings.age_identity_file else None
            if is_encrypted(m) and identities is None:
                mode = "sha256"
                download_verified_sha_only(storage, m)
            elif mode == "restore":
                restore_seconds, tables, amcheck = restore_drill(settings, storage, m, identities)
                result = VerifyResult(m, mode, True, time.monotonic() - t0, "", restore_seconds, tables, amcheck)
                report.results.append(result)
                _record(storage, result)
                log.info(
                    "event=verify_ok id=%s database=%s mode=restore restore_seconds=%.2f tables=%d amcheck=%s",
                    m.id,
                    q(m.database),
                    restore_seconds,
                    tables,
                    amcheck,
                )
                continue
            else:
                quick_check(settings, storage, m, identities)
        except (IntegrityError, PostgresError, ConfigError) as e:
            report.results.append(VerifyResult(m, mode, False, time.monotonic() - t0, str(e)))
            log.error("event=verify_failed id=%s database=%s error=%s", m.id, q(m.database or "@globals"), q(e))
            continue
        result = VerifyResult(m, mode, True, time.monotonic() - t0)
        report.results.append(result)
        _record(storage, result)
        log.info(
            "event=verify_ok id=%s database=%s mode=quick seconds=%.2f",
            m.id,
            q(m.database or "@globals"),
            result.seconds,
        )
    return report
