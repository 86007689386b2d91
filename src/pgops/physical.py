"""The physical half of the one view: pgBackRest's backups and the server's WAL archiving, judged.

`physical_report(settings)` reads `pgbackrest info` and, when PGOPS_PG_CONNINFO reaches the server,
pg_stat_archiver; then it lists every problem that makes `pgops status` exit 11, each as one line naming
its cause: a current RPO over PGOPS_RPO_MAX_SECONDS, failing archiving, WAL dropped past
archive-push-queue-max since the newest full backup, a newest backup (any type, or full) older than its
maximum age, pgBackRest unreadable, or the server out of reach (then the RPO is unknown, and unknown is not
green). On a server in recovery the archiving checks do not apply; the repository's backups still count.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
from collections.abc import Callable
from typing import Any

from pgops.errors import PgbackrestError, PgOpsError
from pgops.log import q
from pgops.manifest import iso
from pgops.pgbackrest import BACKUP_TYPES, DroppedWal, PhysicalBackup, StanzaInfo, dropped_wal, read_stanza_info
from pgops.settings import Settings
from pgops.wal_archive import ArchiverState, read_archiver

log = logging.getLogger(__name__)

REPLICA_NOTE = "server in recovery (a replica): WAL archiving and RPO checks do not apply here"


@dataclasses.dataclass(frozen=True)
class PhysicalReport:
    stanza: str
    info: StanzaInfo | None  # None: pgBackRest could not be read (see info_error)
    info_error: str | None
    archiver: ArchiverState | None  # None: the server was not reachable (see server_error)
    server_error: str | None
    dropped: tuple[DroppedWal, ...] | None  # drops since the newest full backup; None: logs unreadable
    problems: tuple[str, ...]
    now: dt.datetime

    @property
    def stale(self) -> bool:
        return bool(self.problems)

    def age(self, b: PhysicalBackup) -> float:
        return (self.now - b.finished_at).total_seconds()

    def newest(self) -> dict[str, PhysicalBackup]:
        if self.info is None:
            return {}
        return {k: b for k in BACKUP_TYPES if (b := self.info.newest(k)) is not None}

    def to_json(self) -> dict[str, Any]:
        return {
            "stanza": self.stanza,
            "stale": self.stale,
            "problems": list(self.problems),
            "error": self.info_error,
            "newest": {k: dict(b.to_json(), age_seconds=round(self.age(b))) for k, b in self.newest().items()},
            "backups": len(self.info.backups) if self.info else None,
            "wal_archive": {"min": self.info.wal_min, "max": self.info.wal_max} if self.info else None,
            "archiver": self.archiver.to_json() if self.archiver else None,
            "server_error": self.server_error,
            "wal_dropped": None
            if self.dropped is None
            else [{"segment": d.segment, "at": iso(d.at)} for d in self.dropped],
        }


def _read_server(settings: Settings) -> tuple[ArchiverState | None, str | None]:
    import psycopg

    from pgops.pg import PgConn

    try:
        with PgConn.from_settings(settings).connect("postgres") as c:
            return read_archiver(c), None
    except (PgOpsError, psycopg.Error) as e:
        return None, str(e).splitlines()[0] if str(e) else type(e).__name__


def _age_text(seconds: float) -> str:
    if seconds < 120:
        return f"{int(seconds)}s"
    if seconds < 3600:
        return f"{int(seconds // 60)}m"
    if seconds < 86400 * 2:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f}d"


def judge(
    settings: Settings,
    info: StanzaInfo | None,
    archiver: ArchiverState | None,
    dropped: list[DroppedWal] | None,
    now: dt.datetime,
) -> list[str]:
    """Every reason the physical layer is not green, one line each."""
    problems: list[str] = []
    if info is not None:
        newest, full = info.newest(), info.newest("full")
        if full is None:
            problems.append(f"no full physical backup in stanza {info.stanza}")
        for b, limit, setting, what in (
            (newest, settings.physical_max_age, "PGOPS_PHYSICAL_MAX_AGE", "physical backup"),
            (full, settings.physical_full_max_age, "PGOPS_PHYSICAL_FULL_MAX_AGE", "full physical backup"),
        ):
            if b is not None and limit > 0 and (now - b.finished_at).total_seconds() > limit:
                age = _age_text((now - b.finished_at).total_seconds())
                problems.append(f"newest {what} {b.label} is {age} old, older than {setting}={_age_text(limit)}")
    if dropped:
        problems.append(
            f"pgBackRest dropped {len(dropped)} WAL file(s) past archive-push-queue-max since the newest full "
            f"backup (last {dropped[-1].segment}): the archive has a gap; take a full backup now"
        )
    if archiver is None or archiver.in_recovery:
        return problems
    if not archiver.archiving_on:
        problems.append(
            f"archive_mode is {archiver.archive_mode} on this primary: "
            f"no WAL reaches stanza {settings.pgbackrest_stanza}"
        )
    elif "pgbackrest" not in archiver.archive_command:
        problems.append("archive_command does not call pgbackrest")
    if archiver.failing:
        problems.append(
            f"WAL archiving is failing: {archiver.last_failed_wal} failed at "
            f"{iso(archiver.last_failed_time) if archiver.last_failed_time else '?'} ({archiver.failed_count} "
            "failures since the statistics reset); PostgreSQL's log has pgBackRest's error"
        )
    rpo = archiver.rpo_seconds
    if rpo is not None and settings.rpo_max_seconds > 0 and rpo > settings.rpo_max_seconds:
        problems.append(
            f"current RPO is {rpo:.0f}s ({archiver.rpo_bytes if archiver.rpo_bytes is not None else 'unknown'} bytes "
            f"not archived), more than PGOPS_RPO_MAX_SECONDS={settings.rpo_max_seconds}"
        )
    return problems


def physical_report(settings: Settings, now: dt.datetime | None = None) -> PhysicalReport:
    """Read pgBackRest and the server and judge them. Never raises for what it reads: failures become problems."""
    now = now or dt.datetime.now(dt.UTC)
    info: StanzaInfo | None = None
    info_error = None
    try:
        info = read_stanza_info(settings)
    except PgbackrestError as e:
        info_error = str(e)
        log.warning("event=physical_info_failed error=%s", q(e))
    archiver, server_error = _read_server(settings)
    if archiver is not None:
        now = archiver.now  # the server's clock, like pg_stat_archiver's times
    full = info.newest("full") if info else None
    all_dropped = dropped_wal(settings)
    dropped = None if all_dropped is None else [d for d in all_dropped if full is None or d.at > full.started_at]
    problems = judge(settings, info, archiver, dropped, now)
    if info_error:
        problems.insert(0, f"pgBackRest cannot be read: {info_error}")
    if server_error:
        problems.append(f"the server is not reachable, so the current RPO is unknown: {server_error}")
    return PhysicalReport(
        settings.pgbackrest_stanza,
        info,
        info_error,
        archiver,
        server_error,
        None if dropped is None else tuple(dropped),
        tuple(problems),
        now,
    )


def render_status(report: PhysicalReport, human_size: Callable[[float], str]) -> str:
    """The physical section of `pgops status`."""
    lines = [f"physical (pgBackRest stanza {report.stanza}):"]
    newest = report.newest()
    for kind in BACKUP_TYPES:
        b = newest.get(kind)
        if b is not None:
            lines.append(
                f"  newest {kind:<4}  {b.label}  finished {iso(b.finished_at)}  age {_age_text(report.age(b))}"
                f"  {human_size(b.size)} ({human_size(b.repo_size)} stored)"
            )
        elif report.info is not None:
            lines.append(f"  newest {kind:<4}  none")
    a = report.archiver
    if a is not None and a.in_recovery:
        lines.append(f"  {REPLICA_NOTE}")
    elif a is not None:
        state = "FAILING" if a.failing else "ok" if a.archiving_on else f"off (archive_mode={a.archive_mode})"
        last = f"{a.last_archived_wal} at {iso(a.last_archived_time)}" if a.last_archived_time else "never"
        lines.append(
            f"  WAL archive  {state}; last archived {last}; {a.archived_count} archived, {a.failed_count} failed"
        )
        rpo_s = "unknown" if a.rpo_seconds is None else f"{a.rpo_seconds:.0f}s"
        rpo_b = "unknown" if a.rpo_bytes is None else human_size(a.rpo_bytes)
        lines.append(f"  current RPO  {rpo_s}, {rpo_b} of WAL not yet archived")
    for p in report.problems:
        lines.append(f"  STALE: {p}")
    if not report.problems:
        lines.append("  state: ok")
    return "\n".join(lines) + "\n"


# Every field metric_fields may write: a check replaces these and only these, so that what other commands keep
# for the stanza (physical-backup's attempt gauges, say) survives a status run.
STATUS_FIELDS = frozenset(
    {
        "physical_check_timestamp",
        "physical_info_success",
        "physical_ok",
        "wal_dropped",
        "in_recovery",
        "archive_failing",
        "archived",
        "failed",
        "last_archived_timestamp",
        "rpo_seconds",
        "rpo_bytes",
        *(f"newest_{what}_{kind}" for what in ("timestamp", "size") for kind in BACKUP_TYPES),
    }
)


def record_metrics(settings: Settings, report: PhysicalReport) -> bool:
    """Refresh the physical gauges (metrics.py) from this check. Never raises: False when they were not written."""
    from pgops import metrics

    fields = metric_fields(report)

    def change(state: dict[str, dict[str, float]]) -> None:
        current = state.setdefault(report.stanza, {})
        for name in STATUS_FIELDS:
            current.pop(name, None)  # unknown now (a replica has no RPO): the gauge goes, not a stale value
        current.update(fields)

    return metrics.update(settings, change, physical=True)


def metric_fields(report: PhysicalReport) -> dict[str, float]:
    """The values behind the physical gauges of metrics.py (fields absent when unknown)."""
    fields: dict[str, float] = {
        "physical_check_timestamp": report.now.timestamp(),
        "physical_info_success": 0 if report.info is None else 1,
        "physical_ok": 0 if report.problems else 1,
    }
    for kind, b in report.newest().items():
        fields[f"newest_timestamp_{kind}"] = b.finished_at.timestamp()
        fields[f"newest_size_{kind}"] = b.repo_size
    if report.dropped is not None:
        fields["wal_dropped"] = len(report.dropped)
    a = report.archiver
    if a is not None:
        fields["in_recovery"] = 1 if a.in_recovery else 0
    if a is not None and not a.in_recovery:
        fields.update(archive_failing=1 if a.failing else 0, archived=a.archived_count, failed=a.failed_count)
        if a.last_archived_time is not None:
            fields["last_archived_timestamp"] = a.last_archived_time.timestamp()
        if a.rpo_seconds is not None:
            fields["rpo_seconds"] = a.rpo_seconds
        if a.rpo_bytes is not None:
            fields["rpo_bytes"] = a.rpo_bytes
    return fields


# ---- pgops list ------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class PhysicalListing:
    stanza: str
    backups: tuple[PhysicalBackup, ...]  # newest first
    error: str | None  # pgBackRest could not be read; the logical rows are still listed

    def to_json(self) -> dict[str, Any]:
        return {"stanza": self.stanza, "backups": [b.to_json() for b in self.backups], "error": self.error}


def physical_listing(settings: Settings, before: dt.datetime | None = None) -> PhysicalListing:
    try:
        info = read_stanza_info(settings)
    except PgbackrestError as e:
        log.warning("event=physical_info_failed error=%s", q(e))
        return PhysicalListing(settings.pgbackrest_stanza, (), str(e))
    found = [b for b in info.backups if before is None or b.started_at <= before]
    return PhysicalListing(info.stanza, tuple(sorted(found, key=lambda b: b.started_at, reverse=True)), None)


def render_list(listing: PhysicalListing, human_size: Callable[[float], str]) -> str:
    """Physical rows for `pgops list`, after the logical table, each marked PHYSICAL."""
    if listing.error:
        return f"physical backups (pgBackRest stanza {listing.stanza}): cannot be read: {listing.error}\n"
    header = ["KIND", "TYPE", "LABEL", "STARTED (UTC)", "DURATION", "SIZE", "STORED", "WAL START", "WAL STOP", "PRIOR"]
    rows = [header]
    for b in listing.backups:
        rows.append(
            [
                "PHYSICAL",
                b.type + (" (page errors)" if b.error else ""),
                b.label,
                iso(b.started_at),
                f"{b.duration:.1f}s",
                human_size(b.size),
                human_size(b.repo_size),
                b.wal_start,
                b.wal_stop,
                b.prior or "-",
            ]
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = [f"physical backups (pgBackRest stanza {listing.stanza}):"]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    if not listing.backups:
        lines.append("(no physical backup)")
    return "\n".join(lines) + "\n"
