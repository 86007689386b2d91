"""`pgops restore`: from a manifest back into a database, never touching an existing one by surprise.

Every restore goes into a fresh scratch database (pgops_restore_<random>) first. The stored bytes are
hashed as they stream; only when pg_restore succeeded *and* size and sha256 match the manifest is the
scratch database renamed to its final name. On any failure the scratch database is dropped, so the
target name either does not exist yet or still holds the untouched original.

With --replace, a safety backup of the existing database is taken first, and the swap ends the sessions
on the original (logged; --refuse-if-connected refuses instead), renames it aside
(<name>_pgops_old_<time>) and renames the scratch database into place, all in one transaction.

--with-globals creates the roles and tablespaces this server lacks (pgops.roles); existing ones change
only with --overwrite-roles, after the current globals were saved as a safety backup. Roles created for a
restore that then fails are dropped again.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import errno
import logging
import os
import secrets
import tempfile
import time
from pathlib import Path
from typing import Any

from pgops.archive import BlockFinder, NotIndexable, index_spool
from pgops.catalog import Catalog
from pgops.dump import RunContext, backup_database, backup_globals
from pgops.errors import ConfigError, IntegrityError, PostgresError, RestoreRefused, StorageError
from pgops.faults import crash_point
from pgops.log import q
from pgops.manifest import REASON_SAFETY, Manifest, utcnow
from pgops.pg import (
    PgConn,
    apply_database_properties,
    create_database_sql,
    database_exists,
    database_sessions,
    drop_scratch,
    find_bindir,
    role_exists,
    server_info,
    terminate_connections,
)
from pgops.proc import running
from pgops.readback import Progress, download_verified, identities_for, pg_restore_argv, restore_streaming
from pgops.roles import (
    MODE_MISSING,
    MODE_OVERWRITE,
    RolesPlan,
    Statement,
    apply_plan,
    drop_created,
    live_globals,
    parse_globals,
    plan,
)
from pgops.sanity import check_tables
from pgops.settings import Settings
from pgops.storage.base import Storage

log = logging.getLogger(__name__)

MAX_GLOBALS_BYTES = 256 * 1024 * 1024
SWAP_ATTEMPTS = 3  # a session that connects between the terminate and the rename's lock: try again


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
    overwrite_roles: bool = False  # with_globals: also change existing roles (current globals saved first)
    refuse_if_connected: bool = False  # replace: refuse instead of terminating sessions on the old database
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
    sessions_terminated: Sessions | None = None  # replace: who was disconnected from the old database
    globals_restored: Manifest | None = None
    globals_plan: RolesPlan | None = None
    globals_saved: Manifest | None = None  # overwrite_roles: the server's globals just before


@dataclasses.dataclass(frozen=True)
class Sessions:
    """Sessions ended on the database a --replace moved aside: how many, which users and applications."""

    pairs: tuple[tuple[str, str], ...] = ()

    @property
    def count(self) -> int:
        return len(self.pairs)

    @property
    def users(self) -> list[str]:
        return sorted({u for u, _ in self.pairs})

    @property
    def applications(self) -> list[str]:
        return sorted({a for _, a in self.pairs})

    def describe(self) -> str:
        return f"{self.count} session(s), users {', '.join(self.users)}; applications {', '.join(self.applications)}"

    def to_json(self) -> dict[str, Any]:
        return {"count": self.count, "users": self.users, "applications": self.applications}


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


def read_globals(
    settings: Settings, storage: Storage, catalog: Catalog, m: Manifest
) -> tuple[Manifest, list[Statement]]:
    """The backup's globals script, verified and parsed, before anything on the server changes."""
    g = catalog.globals_for(m)
    buf = bytearray()

    def collect(data: bytes) -> None:
        buf.extend(data)
        if len(buf) > MAX_GLOBALS_BYTES:
            raise IntegrityError(f"{g.prefix}: globals script is larger than {MAX_GLOBALS_BYTES} bytes")

    download_verified(storage, g, g.object("globals"), collect, identities=identities_for(settings, storage, g))
    try:
        script = bytes(buf).decode("utf-8")
    except UnicodeDecodeError:
        raise IntegrityError(f"{g.prefix}: the globals script is not UTF-8") from None
    return g, parse_globals(script)


def restore_globals(conn: PgConn, g: Manifest, statements: list[Statement], *, overwrite: bool) -> RolesPlan:
    """Create the roles and tablespaces this server lacks (with their memberships); with overwrite, also
    give existing ones the backup's attributes, passwords and settings. Returns what was planned."""
    with conn.connect("postgres") as c:
        live_roles, live_spaces = live_globals(c)
        p = plan(statements, live_roles, live_spaces, MODE_OVERWRITE if overwrite else MODE_MISSING)
        for label in p.unknown:
            log.warning("event=globals_statement_skipped id=%s statement=%s", g.id, q(label))
        try:
            apply_plan(c, p, source=g.id)
        except BaseException:
            drop_created(c, p)
            raise
    log.info(
        "event=globals_restored id=%s mode=%s created_roles=%s created_tablespaces=%s skipped=%d",
        g.id,
        MODE_OVERWRITE if overwrite else MODE_MISSING,
        q(",".join(p.create_roles)),
        q(",".join(p.create_tablespaces)),
        p.skipped,
    )
    return p


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
    # While the verified copy is written (by a thread of its own, beside decompression), another thread walks
    # it for each table's data (pgops.archive), so the offsets are known when the download ends. Writes are
    # unbuffered, so what it reads is in the file.
    finder = BlockFinder(spool)

    def write(data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        finder.wrote(len(data))

    try:
        try:
            download_verified(storage, m, obj, write, progress=progress, identities=identities, behind=True)
        except OSError as e:
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                raise StorageError(
                    f"spool directory {spool_dir!r} (--spool-dir / PGOPS_SPOOL_DIR) is full: "
                    f"{os.strerror(e.errno)}; {obj.raw_size} bytes needed"
                ) from None
            raise
        finally:
            os.close(fd)
        _index_spool(spool, m, finder.finish())
        with running([*argv, f"--jobs={jobs}", "--format=custom", str(spool)], env=env) as child:
            child.check(f"pg_restore --jobs={jobs} of backup {m.id}")
    finally:
        finder.finish()
        spool.unlink(missing_ok=True)


def _index_spool(spool: Path, m: Manifest, found: dict[int, int] | NotIndexable) -> None:
    """Write the data offsets into the verified spool's TOC, so pg_restore's workers seek to each table's
    data instead of reading through the archive for it. Anything unexpected leaves the spool as it was:
    pg_restore reads such an archive just as well, only slower."""
    t0 = time.monotonic()
    if not isinstance(found, NotIndexable):
        try:
            entries = index_spool(spool, found)
        except NotIndexable as e:
            found = e
        else:
            log.info("event=spool_indexed id=%s entries=%d seconds=%.2f", m.id, entries, time.monotonic() - t0)
            return
    log.warning("event=spool_not_indexed id=%s reason=%s", m.id, q(str(found)))


def run_restore(
    settings: Settings, storage: Storage, req: RestoreRequest, progress: Progress | None = None
) -> RestoreReport:
    t0 = time.monotonic()
    if req.jobs < 1:
        raise ConfigError(f"--jobs={req.jobs} is not valid; valid values: an integer >= 1")
    spool = req.spool_dir or settings.spool_dir
    if req.jobs > 1 and not spool:
        raise ConfigError("--jobs > 1 needs a seekable local copy; set --spool-dir or PGOPS_SPOOL_DIR")
    if req.overwrite_roles and not req.with_globals:
        raise ConfigError("--overwrite-roles changes roles from the backup's globals; valid only with --with-globals")
    catalog, m = choose_backup(storage, settings, req)
    target = req.target_db or derived_name(req.database, m.id)
    _check_name(target, "--target-db")
    conn = PgConn.from_settings(settings)
    props: dict[str, Any] = m.database_properties
    bindir, exists, owner = _preflight(settings, conn, req, target, props)
    identities = identities_for(settings, storage, m)  # a missing or wrong key stops us before any change
    g, statements = read_globals(settings, storage, catalog, m) if req.with_globals else (None, [])
    log.info(
        "event=restore_start database=%s id=%s into=%s replace=%s",
        q(req.database),
        m.id,
        q(target),
        req.replace,
    )

    safety, saved = _safety_copies(settings, storage, target if exists else None, roles=req.overwrite_roles)
    crash_point("safety_taken")

    roles: RolesPlan | None = None
    if g is not None:
        roles = restore_globals(conn, g, statements, overwrite=req.overwrite_roles)
    crash_point("globals_restored")

    scratch = f"pgops_restore_{secrets.token_hex(4)}"
    warnings: list[str] = []
    try:
        with conn.connect("postgres") as c:
            c.execute(create_database_sql(scratch, props, owner))
        argv = pg_restore_argv(bindir, conn, scratch, no_owner=req.no_owner, no_acl=req.no_acl)
        _pg_restore(storage, m, argv, conn, req, spool=spool, progress=progress, identities=identities)
        tables_checked = check_tables(conn, scratch, m) if req.check else None
        crash_point("restored")
        with conn.connect("postgres") as c:
            warnings = apply_database_properties(c, scratch, props, skip_missing_roles=req.no_owner or req.no_acl)
            renamed, ended = _switch_in(c, scratch, target, replace=exists, terminate=not req.refuse_if_connected)
    except BaseException:
        drop_scratch(conn, scratch)
        if roles is not None and not req.overwrite_roles:
            _undo_roles(conn, roles)
        raise
    seconds = time.monotonic() - t0
    log.info("event=restore_done database=%s id=%s into=%s seconds=%.2f", q(req.database), m.id, q(target), seconds)
    return RestoreReport(
        m,
        target,
        seconds,
        m.object("dump").size,
        safety,
        renamed,
        tuple(warnings),
        tables_checked,
        sessions_terminated=ended if exists else None,
        globals_restored=g,
        globals_plan=roles,
        globals_saved=saved,
    )


def _preflight(
    settings: Settings, conn: PgConn, req: RestoreRequest, target: str, props: dict[str, Any]
) -> tuple[Path, bool, str | None]:
    """Refusals that need the server, before anything changes: (bindir, target exists, owner to create with)."""
    with conn.connect("postgres") as c:
        bindir = find_bindir(settings.pg_bindir, server_info(c).major)
        exists = database_exists(c, target)
        if exists and not req.replace:
            raise RestoreRefused(f"database {target!r} exists; restore into a new name (--target-db) or pass --replace")
        if exists and req.refuse_if_connected:
            _refuse_if_connected(target, database_sessions(c, target))
        owner = props.get("owner")
        if req.no_owner or not owner:
            return bindir, exists, None
        if not req.with_globals and not role_exists(c, owner):
            raise RestoreRefused(
                f"role {owner!r}, which owns {req.database!r} in the backup, does not exist here; "
                "pass --with-globals to recreate roles, or --no-owner"
            )
    return bindir, exists, str(owner)


def _safety_copies(
    settings: Settings, storage: Storage, database: str | None, *, roles: bool
) -> tuple[Manifest | None, Manifest | None]:
    """Copies of what is about to change, before it changes: the database, and the roles. One run id, so
    the safety copy of the database and the globals saved with it belong together."""
    if database is None and not roles:
        return None, None
    ctx = RunContext.open(settings, storage)
    safety = saved = None
    if database is not None:
        safety = backup_database(ctx, database, reason=REASON_SAFETY)
        log.info("event=safety_backup database=%s id=%s", q(database), safety.id)
    if roles:
        saved = backup_globals(ctx, reason=REASON_SAFETY)
        log.info("event=globals_saved id=%s key=%s", saved.id, q(saved.key))
    return safety, saved


def _undo_roles(conn: PgConn, roles: RolesPlan) -> None:
    """The restore failed: drop the roles and tablespaces it created. Never raises."""
    import psycopg

    try:
        with conn.connect("postgres") as c:
            drop_created(c, roles)
    except (PostgresError, psycopg.Error) as e:
        log.warning("event=globals_left roles=%s error=%s", q(",".join(roles.create_roles)), q(e))


def _refuse_if_connected(target: str, pairs: list[tuple[str, str]]) -> None:
    if pairs:
        raise RestoreRefused(
            f"database {target!r} has {Sessions(tuple(pairs)).describe()}; --refuse-if-connected was given, so "
            "nothing was changed. Stop them and run again, or leave out --refuse-if-connected to terminate them"
        )


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


def _switch_in(c: Any, scratch: str, target: str, *, replace: bool, terminate: bool) -> tuple[str | None, Sessions]:
    """Give the scratch database its final name. With replace, in one transaction: end the sessions on the
    original (or refuse), rename it aside, rename the scratch database into place. The rename's lock keeps
    new sessions out until COMMIT; a crash before COMMIT changes nothing, and the original's
    ALLOW_CONNECTIONS is never touched, so no step can leave an unconnectable database behind."""
    from psycopg import errors as pgerrors
    from psycopg import sql

    rename = sql.SQL("ALTER DATABASE {} RENAME TO {}")
    old: str | None = None
    ended: list[tuple[str, str]] = []
    for attempt in range(1, SWAP_ATTEMPTS + 1):
        try:
            with c.transaction():
                if replace:
                    old = derived_name(target, "pgops_old_" + utcnow().strftime("%Y%m%dT%H%M%SZ"))
                    if terminate:
                        now = terminate_connections(c, target)
                        if now:
                            ended += now
                            log.warning(
                                "event=sessions_terminated database=%s count=%d users=%s applications=%s",
                                q(target),
                                len(now),
                                q(",".join(sorted({u for u, _ in now}))),
                                q(",".join(sorted({a for _, a in now}))),
                            )
                    else:
                        _refuse_if_connected(target, database_sessions(c, target))
                    crash_point("swap_sessions_ended")
                    c.execute(rename.format(sql.Identifier(target), sql.Identifier(old)))
                c.execute(rename.format(sql.Identifier(scratch), sql.Identifier(target)))
                crash_point("swap_renamed")
            break
        except pgerrors.ObjectInUse as e:  # a session arrived after the check; the rename waited 5 s for it
            if not terminate:
                raise RestoreRefused(
                    f"database {target!r} got a new session during the switch and --refuse-if-connected was given; "
                    "nothing was changed"
                ) from None
            if attempt == SWAP_ATTEMPTS:
                raise PostgresError(f"could not switch the restored database into {target!r}: {e}") from None
            log.warning("event=swap_retry database=%s attempt=%d error=%s", q(target), attempt, q(e))
        except pgerrors.Error as e:
            raise PostgresError(f"could not switch the restored database into {target!r}: {e}") from None
    crash_point("swap_committed")
    return old, Sessions(tuple(ended))
