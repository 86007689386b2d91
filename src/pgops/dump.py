"""One dump into the store: pg_dump (or pg_dumpall --globals-only) streamed through compression,
encryption and sha256 into a create-only object, then the manifest (and its copy), last.

    pg_dump -Fc -Z0 ──pipe──► [zstd | gzip] ──► [age] ──► sha256 + count ──► storage writer
                                                                             └─ commit, then manifest.json

The data object is committed only after pg_dump exited 0 and its output looked like an archive; the
manifest is written only after the data object is committed. Any failure aborts the upload, so a failed
dump never has a manifest and is never counted as a backup. `RunContext.open` proves first that this
server's cluster owns the target (ownership.py). Used by `pgops backup` (every database of a run) and by
`restore --replace` (the safety copy of one database, or of the roles).
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
from pgops.catalog import Catalog
from pgops.cluster import ClusterIdentity
from pgops.crypto import Recipients, recipients_from_settings
from pgops.errors import (
    IntegrityError,
)
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
from pgops.ownership import ensure_owner
from pgops.pg import (
    PgConn,
    ServerInfo,
    cluster_identity,
    database_properties,
    find_bindir,
    server_info,
    table_estimates,
    tool_version,
)
from pgops.pipeline import EXTENSIONS, StreamResult, compressor, pump, read_chunks
from pgops.proc import running, widen_pipe
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
    catalog: Catalog  # the target when the run started: its owner and newest good backup (newest_only)

    @classmethod
    def open(cls, settings: Settings, storage: Storage) -> RunContext:
        """Everything a run needs, after proving that this server's cluster owns the target."""
        recipients = recipients_from_settings(settings)  # validated before any work starts
        conn = PgConn.from_settings(settings)
        with conn.connect("postgres") as c:
            server = server_info(c)
            identity = cluster_identity(c, socket.gethostname())
        bindir = find_bindir(settings.pg_bindir, server.major)
        catalog = Catalog.load(storage, settings.target, newest_only=True)
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
            widen_pipe(child.proc.stdout)
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
