"""`pgops status`: per database, the newest good backup, its age, the size trend and the last verify.

Computed from the store (manifests and verification records), so it answers the same on the backed-up
host, on a monitoring host or during disaster recovery. A Nagios-style check: exit 11 when any
database's newest good backup is older than PGOPS_STATUS_MAX_AGE.

With PGOPS_PGBACKREST_STANZA set, a physical section follows (physical.py): pgBackRest's newest full,
diff and incr, WAL archiving and the current RPO; any problem there exits 11 as well.

When the server (PGOPS_PG_CONNINFO) is reachable, it also lists the databases pgops left there
(`<name>_pgops_old_<time>` after restore --replace, scratch databases of killed restores); they do not
change the exit code. `pgops leftovers --drop` removes them.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import statistics
from typing import Any

from pgops.catalog import Catalog
from pgops.errors import PgOpsError
from pgops.log import q
from pgops.manifest import KIND_DATABASE, REASON_SAFETY, Manifest, iso
from pgops.pg import PgConn, leftover_databases
from pgops.physical import PhysicalReport, physical_report, render_status
from pgops.settings import Settings
from pgops.storage.base import Storage

TREND_WINDOW = 7
log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class DatabaseStatus:
    database: str  # "@globals" for the globals
    newest: Manifest
    age_seconds: float
    sizes: tuple[int, ...]  # newest first, up to TREND_WINDOW good backups
    last_verified: dt.datetime | None
    last_restore_test: dt.datetime | None
    stale: bool

    @property
    def trend_percent(self) -> float | None:
        """Newest size against the median of the previous ones, in percent."""
        if len(self.sizes) < 2:
            return None
        base = statistics.median(self.sizes[1:])
        return None if base == 0 else round((self.sizes[0] - base) * 100.0 / base, 1)

    def to_json(self) -> dict[str, Any]:
        return {
            "database": self.database,
            "newest_id": self.newest.id,
            "newest_started_at": iso(self.newest.started_at),
            "age_seconds": round(self.age_seconds),
            "size_bytes": self.sizes[0],
            "size_trend_percent": self.trend_percent,
            "good_backups": len(self.sizes),
            "last_verified_at": iso(self.last_verified) if self.last_verified else None,
            "last_restore_test_at": iso(self.last_restore_test) if self.last_restore_test else None,
            "stale": self.stale,
        }


@dataclasses.dataclass(frozen=True)
class StatusReport:
    target: str
    max_age_seconds: int
    databases: tuple[DatabaseStatus, ...]
    unreadable_manifests: tuple[str, ...]
    leftovers: tuple[tuple[str, int], ...] | None = None  # (database, bytes) on the server; None: not reachable
    physical: PhysicalReport | None = None  # None: PGOPS_PGBACKREST_STANZA is not set

    @property
    def stale(self) -> bool:
        logical = not self.databases or any(d.stale for d in self.databases)
        return logical or (self.physical is not None and self.physical.stale)

    def to_json(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "max_age_seconds": self.max_age_seconds,
            "stale": self.stale,
            "databases": [d.to_json() for d in self.databases],
            "unreadable_manifests": list(self.unreadable_manifests),
            "leftovers": None if self.leftovers is None else [{"database": d, "bytes": b} for d, b in self.leftovers],
        } | ({"physical": self.physical.to_json()} if self.physical else {})


def run_status(settings: Settings, storage: Storage, now: dt.datetime | None = None) -> StatusReport:
    now = now or dt.datetime.now(dt.UTC)
    catalog = Catalog.load(storage, settings.target)
    groups: dict[str, list[Manifest]] = {}
    for m in catalog.manifests:  # good ones, newest first; a safety copy is no scheduled backup
        if m.reason != REASON_SAFETY:
            groups.setdefault(m.database if m.kind == KIND_DATABASE and m.database else "@globals", []).append(m)
    out = []
    for name, ms in sorted(groups.items()):
        marks = [v for m in ms for v in catalog.verified(m)]
        verified = max((v.at for v in marks), default=None)
        drilled = max((v.at for v in marks if v.mode == "restore"), default=None)
        age = (now - ms[0].finished_at).total_seconds()
        stale = settings.status_max_age > 0 and age > settings.status_max_age
        sizes = tuple(m.size for m in ms[:TREND_WINDOW])
        out.append(DatabaseStatus(name, ms[0], age, sizes, verified, drilled, stale))
    physical = physical_report(settings) if settings.pgbackrest_stanza else None
    return StatusReport(
        settings.target, settings.status_max_age, tuple(out), catalog.unreadable, _leftovers(settings), physical
    )


def _leftovers(settings: Settings) -> tuple[tuple[str, int], ...] | None:
    """Databases pgops left on the server, when it can be reached from here (a monitoring host may not)."""
    import psycopg

    try:
        with PgConn.from_settings(settings).connect("postgres") as c:
            return tuple(leftover_databases(c))
    except (PgOpsError, psycopg.Error) as e:
        log.debug("event=leftovers_unknown error=%s", q(e))
        return None


def _age(seconds: float) -> str:
    if seconds < 3600:
        return f"{int(seconds // 60)}m"
    if seconds < 86400 * 2:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f}d"


def render_table(report: StatusReport, human_size: Any) -> str:
    rows = [["DATABASE", "NEWEST GOOD (UTC)", "AGE", "SIZE", "TREND", "LAST VERIFY", "STATE"]]
    for d in report.databases:
        trend = "" if d.trend_percent is None else f"{d.trend_percent:+.1f}%"
        verify = d.last_verified.strftime("%Y-%m-%d %H:%M") if d.last_verified else "never"
        rows.append(
            [
                d.database,
                iso(d.newest.started_at),
                _age(d.age_seconds),
                human_size(d.sizes[0]),
                trend,
                verify,
                "STALE" if d.stale else "ok",
            ]
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    if not report.databases:
        lines.append(f"no good backup at all for target {report.target!r}")
    if report.leftovers:
        names = ", ".join(f"{d} ({human_size(b)})" for d, b in report.leftovers)
        lines.append(f"leftover databases on the server (not backed up; drop with `pgops leftovers --drop`): {names}")
    text = "\n".join(lines) + "\n"
    return text + ("\n" + render_status(report.physical, human_size) if report.physical else "")
