"""`pgops status`: per database, the newest good backup, its age, the size trend and the last verify.

Computed from the store (manifests and verification records), so it answers the same on the backed-up
host, on a monitoring host or during disaster recovery. A Nagios-style check: exit 11 when any
database's newest good backup is older than PGOPS_STATUS_MAX_AGE.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import statistics
from typing import Any

from pgops.catalog import Catalog
from pgops.manifest import KIND_DATABASE, REASON_SAFETY, Manifest, iso
from pgops.settings import Settings
from pgops.storage.base import Storage

TREND_WINDOW = 7


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

    @property
    def stale(self) -> bool:
        return not self.databases or any(d.stale for d in self.databases)

    def to_json(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "max_age_seconds": self.max_age_seconds,
            "stale": self.stale,
            "databases": [d.to_json() for d in self.databases],
            "unreadable_manifests": list(self.unreadable_manifests),
        }


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
    return StatusReport(settings.target, settings.status_max_age, tuple(out), catalog.unreadable)


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
    return "\n".join(lines) + "\n"
