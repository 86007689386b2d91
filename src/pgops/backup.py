"""`pgops backup`: per-database pg_dump plus one pg_dumpall --globals-only per run, streamed to storage.

    pg_dump -Fc -Z0 ──pipe──► [zstd | gzip] ──► sha256 + count ──► storage writer (multipart / temp file)
                                                                        └─ commit, then manifest.json

The data object is committed only after pg_dump exited 0 and its output looked like an archive; the
manifest is written only after the data object is committed. Any failure aborts the upload, so a failed
dump never has a manifest and is never counted as a backup.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pgops import __version__
from pgops.catalog import Catalog, ClusterIdentity
from pgops.crypto import Recipients, recipients_from_settings
from pgops.errors import (
    ConfigError,
    IntegrityError,
    Interrupted,
    PartialFailure,
    PgOpsError,
    StorageError,
)
from pgops.lock import target_lock
from pgops.log import q
from pgops.manifest import (
    KIND_DATABASE,
    KIND_GLOBALS,
    STATUS_OK,
    Manifest,
    StoredObject,
    data_key,
    manifest_copy_key,
    manifest_key,
    new_backup_id,
    utcnow,
)
from pgops.ownership import check_clock, ensure_owner
from pgops.pg import (
    PgConn,
    ServerInfo,
    cluster_identity,
    database_properties,
    find_bindir,
    is_leftover,
    list_databases,
    server_info,
    table_estimates,
    tool_version,
)
from pgops.pipeline import EXTENSIONS, StreamResult, compressor, pump, read_chunks
from pgops.proc import running
from pgops.settings import Settings
from pgops.storage.base import Storage, WriteOptions

log = logging.getLogger(__name__)

ARCHIVE_MAGIC = b"PGDMP"
# A custom-format archive written to a pipe ends with a zero-length chunk (or, with no data, a zero
# offset): its last 5 bytes are zero. A plain pg_dumpall script ends with its "dump complete" comment.
# A stream cut anywhere else fails these checks; a cut exactly at a block boundary would not (pg_dump's
# exit status, checked first, is the main guard).
ARCHIVE_END = b"\x00" * 5
SCRIPT_END = b"dump complete"
Progress = Callable[[int], None]


@dataclasses.dataclass
class RunContext:
    """What every dump in one run shares: server facts, binaries, the run id."""

    settings: Settings
    storage: Storage
    conn: PgConn
    server: ServerInfo
    bindir: Path
    pg_dump_version: str
    backup_id: str
    recipients: Recipients | None
    identity: ClusterIdentity
    catalog: Catalog  # the target as it was when the run started

    @classmethod
    def open(cls, settings: Settings, storage: Storage) -> RunContext:
        """Everything a run needs, after proving that this server's cluster owns the target."""
        recipients = recipients_from_settings(settings)  # validated before any work starts
        conn = PgConn.from_settings(settings)
        with conn.connect("postgres") as c:
            server = server_info(c)
            identity = cluster_identity(c, socket.gethostname())
        bindir = find_bindir(settings.pg_bindir, server.major)
        catalog = Catalog.load(storage, settings.target)
        ensure_owner(storage, settings.target, identity, catalog)
        return cls(
            settings,
            storage,
            conn,
            server,
            bindir,
            tool_version(bindir, "pg_dump"),
            new_backup_id(utcnow()),
            recipients,
            identity,
            catalog,
        )

    def suffix(self) -> str:
        """File name extension of stored dumps: compression, then encryption."""
        return EXTENSIONS[self.settings.compression] + (".age" if self.recipients else "")

    def encryption_info(self) -> dict[str, Any]:
        if self.recipients is None:
            return {"algorithm": "none"}
        return {"algorithm": "age", "recipients": list(self.recipients.keys)}

    def server_side_encryption(self) -> dict[str, Any]:
        """What the store was asked to do at rest (SSE-S3, SSE-KMS key, GCS CMEK key), for the manifest."""
        s = self.settings
        scheme = (s.storage_url or "").split("://", 1)[0]
        if scheme == "s3" and s.s3_sse != "none":
            return {"mode": s.s3_sse, **({"kms_key_id": s.s3_sse_kms_key_id} if s.s3_sse_kms_key_id else {})}
        if scheme == "gs" and s.gcs_kms_key_name:
            return {"mode": "cmek", "kms_key_name": s.gcs_kms_key_name}
        return {}

    def compression_info(self) -> dict[str, Any]:
        s = self.settings
        return {
            "algorithm": s.compression,
            "level": s.effective_compression_level,
            "threads": s.compression_threads,
        }


@dataclasses.dataclass
class BackupReport:
    backup_id: str
    manifests: list[Manifest] = dataclasses.field(default_factory=list)
    failures: dict[str, PgOpsError] = dataclasses.field(default_factory=dict)  # database or @globals

    total: int = 0

    @property
    def ok(self) -> bool:
        return not self.failures

    def raise_for_failures(self) -> None:
        """All failed: the first error (its exit code). Some failed: PartialFailure."""
        if self.failures and not self.manifests:
            raise next(iter(self.failures.values()))
        if self.failures:
            raise PartialFailure(
                f"{len(self.failures)} of {self.total} backups failed: {', '.join(sorted(self.failures))}"
            )


def resolve_databases(conn: PgConn, wanted: tuple[str, ...], exclude: tuple[str, ...]) -> list[str]:
    """'all' expands to every non-template database except pgops' own leftovers (named in a log line). A
    database that does not allow connections stays in: its backup fails by name (exit 8), never silently.
    Named databases must exist."""
    with conn.connect("postgres") as c:
        existing = list_databases(c)
    if not wanted or wanted == ("all",):
        leftovers = [d for d in existing if is_leftover(d) and d not in exclude]
        if leftovers:
            log.info(
                "event=leftovers_skipped databases=%s hint=%s",
                q(",".join(leftovers)),
                q("databases pgops left behind (pgops leftovers); name one in PGOPS_DATABASES to back it up"),
            )
        return [d for d in existing if d not in exclude and d not in leftovers]
    if "all" in wanted:
        raise ConfigError("PGOPS_DATABASES mixes 'all' with names; valid: 'all' or a comma-separated list of names")
    missing = [d for d in wanted if d not in existing]
    if missing:
        raise ConfigError(
            f"PGOPS_DATABASES names {', '.join(map(repr, missing))}, which the server does not have; "
            f"it has: {', '.join(existing)}"
        )
    return list(wanted)


def _looks_complete(result: StreamResult, custom: bool) -> bool:
    if custom:
        return result.head.startswith(ARCHIVE_MAGIC) and result.tail.endswith(ARCHIVE_END)
    return result.head.startswith(b"--") and SCRIPT_END in result.tail


def _stream_dump(
    ctx: RunContext, argv: list[str], key: str, what: str, progress: Progress | None, *, custom: bool
) -> StoredObject:
    """Run one dump command and stream its stdout into `key`. Commits only a complete-looking dump."""
    s = ctx.settings
    writer = ctx.storage.open_writer(key, WriteOptions())
    try:
        with running(argv, env=ctx.conn.child_env(), stdout=subprocess.PIPE) as child:
            assert child.proc.stdout is not None
            result = pump(
                read_chunks(child.proc.stdout),
                [compressor(s.compression, s.effective_compression_level, s.compression_threads)],
                writer.write,
                progress,
                encrypt=ctx.recipients,
            )
            child.check(what)
        if result.raw_size == 0:
            raise IntegrityError(f"{what}: the dump is empty although the dump tool exited 0")
        if not _looks_complete(result, custom):
            raise IntegrityError(f"{what}: the dump is truncated or not in the expected format (tool exited 0)")
        info = writer.commit()
    except BaseException:
        writer.abort()
        raise
    if info.size != result.size:
        raise IntegrityError(f"{what}: storage reports {info.size} bytes for {key}, we sent {result.size}")
    return StoredObject(
        key=key,
        role="dump",
        size=result.size,
        sha256=result.sha256,
        raw_size=result.raw_size,
        raw_sha256=result.raw_sha256,
    )


def _commit(
    ctx: RunContext,
    *,
    database: str | None,
    started: dt.datetime,
    obj: StoredObject,
    tool: str,
    dump_format: str,
    props: dict[str, Any] | None = None,
    tables: list[dict[str, Any]] | None = None,
    reason: str = "scheduled",
) -> Manifest:
    """Write the manifest, last: from now on the backup exists."""
    m = Manifest(
        id=ctx.backup_id,
        kind=KIND_DATABASE if database is not None else KIND_GLOBALS,
        target=ctx.settings.target,
        database=database,
        status=STATUS_OK,
        started_at=started,
        finished_at=utcnow(),
        objects=(obj,),
        server_version=ctx.server.version,
        server_version_num=ctx.server.version_num,
        tool_version=tool,
        dump_format=dump_format,
        compression=ctx.compression_info(),
        encryption=ctx.encryption_info(),
        server_side_encryption=ctx.server_side_encryption(),
        host=ctx.identity.host or socket.gethostname(),
        engine_version=__version__,
        database_properties=props or {},
        tables=tuple(tables or ()),
        reason=reason,
        cluster=ctx.identity.to_json(),
    )
    key = manifest_key(m.target, m.database, m.id)
    body = m.dumps()
    ctx.storage.put_bytes(key, body, WriteOptions(content_type="application/json"))
    # The copy: a backup whose manifest.json rots stays readable. Written after the commit marker, so a
    # crash in between leaves a complete backup that merely lacks its copy.
    ctx.storage.put_bytes(
        manifest_copy_key(m.target, m.database, m.id), body, WriteOptions(content_type="application/json")
    )
    log.info(
        "event=backup_done database=%s id=%s bytes=%d raw_bytes=%d seconds=%.2f key=%s",
        q(database or "@globals"),
        m.id,
        obj.size,
        obj.raw_size,
        m.duration,
        q(obj.key),
    )
    return dataclasses.replace(m, key=key)


def backup_database(
    ctx: RunContext, database: str, *, reason: str = "scheduled", progress: Progress | None = None
) -> Manifest:
    started = utcnow()
    with ctx.conn.connect("postgres") as c:
        props = database_properties(c, database)
    with ctx.conn.connect(database) as c:
        tables = table_estimates(c)
    key = data_key(ctx.settings.target, database, ctx.backup_id, ctx.suffix())
    argv = [str(ctx.bindir / "pg_dump"), "--format=custom", "--compress=0", "--no-password"]
    argv += ["--dbname", ctx.conn.for_db(database)]
    log.info("event=backup_start database=%s id=%s", q(database), ctx.backup_id)
    obj = _stream_dump(ctx, argv, key, f"pg_dump of {database!r}", progress, custom=True)
    return _commit(
        ctx,
        database=database,
        started=started,
        obj=obj,
        tool=ctx.pg_dump_version,
        dump_format="custom",
        props=props,
        tables=tables,
        reason=reason,
    )


def backup_globals(ctx: RunContext, progress: Progress | None = None, *, reason: str = "scheduled") -> Manifest:
    started = utcnow()
    key = data_key(ctx.settings.target, None, ctx.backup_id, ctx.suffix())
    argv = [str(ctx.bindir / "pg_dumpall"), "--globals-only", "--no-password", "--dbname", ctx.conn.for_db("postgres")]
    log.info("event=backup_start database=@globals id=%s", ctx.backup_id)
    obj = _stream_dump(ctx, argv, key, "pg_dumpall --globals-only", progress, custom=False)
    return _commit(
        ctx,
        database=None,
        started=started,
        obj=dataclasses.replace(obj, role="globals"),
        tool=tool_version(ctx.bindir, "pg_dumpall"),
        dump_format="plain",
        reason=reason,
    )


def run_backup(
    settings: Settings,
    storage: Storage,
    *,
    progress: Progress | None = None,
    reason: str = "scheduled",
    allow_clock_behind: bool = False,
) -> BackupReport:
    """One cron run: lock the target, prove it is ours and the clock sane, dump globals then each
    database. One failure does not stop the rest."""
    with target_lock(settings.lock_dir, settings.target):
        ctx = RunContext.open(settings, storage)
        if not allow_clock_behind:
            check_clock(ctx.catalog, settings.target, utcnow())
        databases = resolve_databases(ctx.conn, settings.databases, settings.exclude_databases)
        report = BackupReport(ctx.backup_id)
        log.info(
            "event=run_start id=%s target=%s databases=%d storage=%s",
            ctx.backup_id,
            q(settings.target),
            len(databases),
            q(storage.url),
        )
        units: list[tuple[str, Callable[[], Manifest]]] = []
        if settings.globals:
            units.append(("@globals", lambda: backup_globals(ctx, progress, reason=reason)))
        for db in databases:
            units.append((db, lambda db=db: backup_database(ctx, db, reason=reason, progress=progress)))  # type: ignore[misc]
        report.total = len(units)
        for name, unit in units:
            try:
                report.manifests.append(unit())
            except Interrupted:
                raise
            except PgOpsError as e:
                if isinstance(e, StorageError) and not report.manifests and not report.failures:
                    raise  # the store is unusable: fail fast with its one clear line
                report.failures[name] = e
                log.error("event=backup_failed database=%s error=%s", q(name), q(e))
        log.info("event=run_done id=%s ok=%d failed=%d", ctx.backup_id, len(report.manifests), len(report.failures))
        return report
