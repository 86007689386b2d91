"""`pgops backup`: one cron run. Lock the target, prove it is ours and the clock sane (ownership.py), then
the roles (pg_dumpall --globals-only) and each database (dump.py). One failure does not stop the rest;
a database that cannot be backed up is a failed unit that names it, never a silent skip.

With PGOPS_BACKUP_FROM=primary a run on a server in recovery is skipped before any of that (skipped_here):
the same schedule on every member of a Patroni cluster backs up from the leader only.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable

from pgops.dump import Progress, RunContext, backup_database, backup_globals
from pgops.errors import (
    ConfigError,
    Interrupted,
    PartialFailure,
    PgOpsError,
    PostgresError,
    StorageError,
)
from pgops.lock import target_lock
from pgops.log import q
from pgops.manifest import (
    Manifest,
    utcnow,
)
from pgops.ownership import check_clock
from pgops.pg import (
    PgConn,
    in_recovery,
    is_leftover,
    list_databases,
)
from pgops.settings import Settings
from pgops.storage.base import Storage

log = logging.getLogger(__name__)


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


def skipped_here(settings: Settings, command: str = "backup") -> bool:
    """PGOPS_BACKUP_FROM=primary and the server is in recovery: log event=<command>_skipped and return True; the
    caller then does nothing (no lock, no store). `command` is backup, retention or verify: the jobs of one target
    that every member of a cluster schedules alike. A server that cannot be asked is no reason to skip: the run
    goes on and fails with its own error, exit code and metrics."""
    if settings.backup_from != "primary":
        return False
    import psycopg

    try:
        with PgConn.from_settings(settings).connect("postgres") as c:
            recovering = in_recovery(c)
    except (PostgresError, psycopg.Error):
        return False
    if recovering:
        log.info(
            "event=%s_skipped reason=in_recovery target=%s backup_from=primary hint=%s",
            command,
            q(settings.target),
            q(f"a standby; the primary's {command} run does it"),
        )
    return recovering


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
