"""`pgops restore`: from a manifest back into a database, never touching an existing one by surprise.

Every restore goes into a fresh scratch database (pgops_restore_<random>) first. The stored bytes are
hashed as they stream; only when pg_restore succeeded *and* size and sha256 match the manifest is the
scratch database renamed to its final name. On any failure the scratch database is dropped, so the
target name either does not exist yet or still holds the untouched original.

With --replace, a safety backup of the existing database is taken first, and the swap renames the
original aside (<name>_pgops_old_<time>) and the scratch database into place in one transaction.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import errno
import io
import logging
import os
import re
import secrets
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from pgops.backup import RunContext, backup_database
from pgops.catalog import Catalog
from pgops.crypto import load_identities
from pgops.errors import ConfigError, IntegrityError, PostgresError, RestoreRefused, StorageError
from pgops.log import q
from pgops.manifest import REASON_SAFETY, Manifest, StoredObject, utcnow
from pgops.pg import (
    PgConn,
    apply_database_properties,
    create_database_sql,
    database_exists,
    drop_scratch,
    find_bindir,
    role_exists,
    server_info,
    terminate_connections,
)
from pgops.pipeline import decompressor, pump, pump_decrypt, read_chunks
from pgops.proc import running
from pgops.sanity import check_tables
from pgops.settings import Settings
from pgops.storage.base import Storage

log = logging.getLogger(__name__)

Progress = Callable[[int], None]
MAX_GLOBALS_BYTES = 256 * 1024 * 1024
_ALREADY_EXISTS = re.compile(r'ERROR:\s+role ".*" already exists')


@dataclasses.dataclass(frozen=True)
class RestoreRequest:
    database: str  # the database name recorded in the backup
    target_db: str | None = None  # default: <database>_<backup time>
    backup_id: str | None = None
    before: dt.datetime | None = None
    source_target: str | None = None  # whose backups (PGOPS_TARGET of the backed-up server)
    replace: bool = False
    jobs: int = 1
    spool_dir: str | None = None
    with_globals: bool = False
    check: bool = False  # before the switch: every manifest table exists, row counts near the estimates
    no_owner: bool = False
    no_acl: bool = False


@dataclasses.dataclass(frozen=True)
class RestoreReport:
    manifest: Manifest
    database: str
    seconds: float
    bytes: int
    safety_backup: Manifest | None = None
    previous_renamed_to: str | None = None
    warnings: tuple[str, ...] = ()
    tables_checked: int | None = None


def derived_name(database: str, backup_id: str) -> str:
    suffix = "_" + backup_id.split("-", 1)[0].lower()
    head = database.encode()[: 63 - len(suffix)].decode(errors="ignore")
    return head + suffix


def _check_name(name: str, what: str) -> None:
    if not name or len(name.encode()) > 63:
        raise ConfigError(f"{what} {name!r} is not a valid database name; valid: 1 to 63 bytes")


def choose_backup(storage: Storage, settings: Settings, req: RestoreRequest) -> tuple[Catalog, Manifest]:
    catalog = Catalog.load(storage, req.source_target or settings.target)
    return catalog, catalog.pick(database=req.database, backup_id=req.backup_id, before=req.before)


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
) -> None:
    """Stream an object through sha256, decryption and decompression into `sink`.

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
            )
        else:
            result = pump(read_chunks(reader), stages, sink, progress)
    finally:
        reader.close()
    if result.raw_size != obj.size or result.raw_sha256 != obj.sha256:
        raise IntegrityError(
            f"{obj.key}: stored object does not match the manifest (size {result.raw_size} vs {obj.size}, "
            f"sha256 {result.raw_sha256[:12]}… vs {obj.sha256[:12]}…)"
        )
    if result.size != obj.raw_size or result.sha256 != obj.raw_sha256:
        raise IntegrityError(f"{obj.key}: the decoded dump does not match the manifest's plain checksum")


def restore_globals(
    settings: Settings, storage: Storage, catalog: Catalog, m: Manifest, *, conn: PgConn, bindir: Path
) -> Manifest:
    """Recreate roles and tablespaces. 'role already exists' is expected on a live server and tolerated."""
    g = catalog.globals_for(m)
    buf = bytearray()

    def collect(data: bytes) -> None:
        buf.extend(data)
        if len(buf) > MAX_GLOBALS_BYTES:
            raise IntegrityError(f"{g.prefix}: globals script is larger than {MAX_GLOBALS_BYTES} bytes")

    download_verified(storage, g, g.object("globals"), collect, identities=identities_for(settings, storage, g))
    argv = [
        str(bindir / "psql"),
        "-X",
        "-q",
        "--no-password",
        "-v",
        "ON_ERROR_STOP=0",
        "-d",
        conn.for_db("postgres"),
        "-f",
        "-",
    ]
    result = subprocess.run(argv, input=bytes(buf), capture_output=True, env=conn.child_env(), check=False)
    errors = [
        line
        for line in result.stderr.decode("utf-8", "replace").splitlines()
        if "ERROR:" in line and not _ALREADY_EXISTS.search(line)
    ]
    if result.returncode != 0 or errors:
        raise PostgresError(f"restoring globals from {g.id} failed: {errors[0] if errors else result.returncode}")
    log.info("event=globals_restored id=%s", g.id)
    return g


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


def pg_restore_argv(bindir: Path, conn: PgConn, db: str, req: RestoreRequest) -> list[str]:
    argv = [str(bindir / "pg_restore"), "--exit-on-error", "--no-password", "--dbname", conn.for_db(db)]
    if req.no_owner:
        argv.append("--no-owner")
    if req.no_acl:
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


def _restore_parallel(
    storage: Storage,
    m: Manifest,
    argv: list[str],
    env: dict[str, str],
    *,
    jobs: int,
    spool_dir: str,
    progress: Progress | None,
    identities: list[Any] | None,
) -> None:
    obj = m.object("dump")
    directory = Path(spool_dir)
    if not directory.is_dir():
        raise ConfigError(f"spool directory {spool_dir!r} (--spool-dir / PGOPS_SPOOL_DIR) does not exist")
    fd, name = tempfile.mkstemp(prefix=".pgops-spool-", suffix=".pgc", dir=directory)
    spool = Path(name)
    try:
        try:
            # the buffered tail is written when the file closes, so a full disk can surface there too
            with os.fdopen(fd, "wb") as f:
                download_verified(storage, m, obj, f.write, progress=progress, identities=identities)
        except OSError as e:
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                raise StorageError(
                    f"spool directory {spool_dir!r} (--spool-dir / PGOPS_SPOOL_DIR) is full: "
                    f"{os.strerror(e.errno)}; {obj.raw_size} bytes needed"
                ) from None
            raise
        with running([*argv, f"--jobs={jobs}", "--format=custom", str(spool)], env=env) as child:
            child.check(f"pg_restore --jobs={jobs} of backup {m.id}")
    finally:
        spool.unlink(missing_ok=True)


def run_restore(
    settings: Settings, storage: Storage, req: RestoreRequest, progress: Progress | None = None
) -> RestoreReport:
    t0 = time.monotonic()
    if req.jobs < 1:
        raise ConfigError(f"--jobs={req.jobs} is not valid; valid values: an integer >= 1")
    spool = req.spool_dir or settings.spool_dir
    if req.jobs > 1 and not spool:
        raise ConfigError("--jobs > 1 needs a seekable local copy; set --spool-dir or PGOPS_SPOOL_DIR")
    catalog, m = choose_backup(storage, settings, req)
    target = req.target_db or derived_name(req.database, m.id)
    _check_name(target, "--target-db")
    conn = PgConn.from_settings(settings)
    props: dict[str, Any] = m.database_properties
    with conn.connect("postgres") as c:
        bindir = find_bindir(settings.pg_bindir, server_info(c).major)
        exists = database_exists(c, target)
        if exists and not req.replace:
            raise RestoreRefused(f"database {target!r} exists; restore into a new name (--target-db) or pass --replace")
        owner = props.get("owner")
        if req.no_owner or not owner:
            owner = None
        elif not req.with_globals and not role_exists(c, owner):
            raise RestoreRefused(
                f"role {owner!r}, which owns {req.database!r} in the backup, does not exist here; "
                "pass --with-globals to recreate roles, or --no-owner"
            )
    identities = identities_for(settings, storage, m)  # a missing or wrong key stops us before any change
    log.info(
        "event=restore_start database=%s id=%s into=%s replace=%s",
        q(req.database),
        m.id,
        q(target),
        req.replace,
    )

    if req.with_globals:
        restore_globals(settings, storage, catalog, m, conn=conn, bindir=bindir)

    safety: Manifest | None = None
    if exists:
        ctx = RunContext.open(settings, storage)
        safety = backup_database(ctx, target, reason=REASON_SAFETY)
        log.info("event=safety_backup database=%s id=%s", q(target), safety.id)

    scratch = f"pgops_restore_{secrets.token_hex(4)}"
    warnings: list[str] = []
    with conn.connect("postgres") as c:
        c.execute(create_database_sql(scratch, props, owner))
    try:
        argv = pg_restore_argv(bindir, conn, scratch, req)
        _pg_restore(storage, m, argv, conn, req, spool=spool, progress=progress, identities=identities)
        tables_checked = check_tables(conn, scratch, m) if req.check else None
        with conn.connect("postgres") as c:
            warnings = apply_database_properties(c, scratch, props, skip_missing_roles=req.no_owner or req.no_acl)
            renamed = _switch_in(c, scratch, target, replace=exists)
    except BaseException:
        drop_scratch(conn, scratch)
        raise
    seconds = time.monotonic() - t0
    log.info("event=restore_done database=%s id=%s into=%s seconds=%.2f", q(req.database), m.id, q(target), seconds)
    return RestoreReport(m, target, seconds, m.object("dump").size, safety, renamed, tuple(warnings), tables_checked)


def _pg_restore(
    storage: Storage,
    m: Manifest,
    argv: list[str],
    conn: PgConn,
    req: RestoreRequest,
    *,
    spool: str | None,
    progress: Progress | None,
    identities: list[Any] | None,
) -> None:
    """Streamed into pg_restore, or (--jobs N) spooled to a verified local copy first."""
    if req.jobs > 1:
        assert spool
        _restore_parallel(
            storage,
            m,
            argv,
            conn.child_env(),
            jobs=req.jobs,
            spool_dir=spool,
            progress=progress,
            identities=identities,
        )
    else:
        restore_streaming(storage, m, argv, conn.child_env(), progress=progress, identities=identities)


def _switch_in(c: Any, scratch: str, target: str, *, replace: bool) -> str | None:
    """Give the scratch database its final name. With replace, move the original aside in the same
    transaction, so the name always points at a complete database."""
    from psycopg import errors as pgerrors
    from psycopg import sql

    old: str | None = None
    try:
        if replace:
            old = derived_name(target, "pgops_old_" + utcnow().strftime("%Y%m%dT%H%M%SZ"))
            c.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS false").format(sql.Identifier(target)))
            terminate_connections(c, target)
        with c.transaction():
            if old is not None:
                c.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(sql.Identifier(target), sql.Identifier(old)))
            c.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(sql.Identifier(scratch), sql.Identifier(target)))
        if old is not None:
            c.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS true").format(sql.Identifier(old)))
    except pgerrors.Error as e:
        if old is not None:
            with contextlib.suppress(pgerrors.Error):
                c.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS true").format(sql.Identifier(target)))
        raise PostgresError(f"could not switch the restored database into {target!r}: {e}") from None
    return old
