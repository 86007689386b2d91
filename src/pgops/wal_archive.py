"""WAL archiving as the server sees it (pg_stat_archiver), and the current RPO as two numbers.

- bytes: WAL written but not yet in the archive = pg_current_wal_lsn() minus the end of the last archived
  segment (its name carries timeline, log and segment; the size is wal_segment_size). Clamped at 0.
- seconds: 0 when no byte is waiting; otherwise now minus last_archived_time (or, when nothing was ever
  archived, minus the later of the statistics reset and the server start).
- failing: the last failure is newer than the last success.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
from typing import Any

from pgops.manifest import iso

# <timeline 8 hex><log 8 hex><segment 8 hex>, optionally followed by .partial or .<offset>.backup
_SEGMENT_RE = re.compile(r"^([0-9A-F]{8})([0-9A-F]{8})([0-9A-F]{8})(?:\.partial|\.[0-9A-F]{8}\.backup)?$")

ARCHIVER_SQL = """
SELECT pg_is_in_recovery(),
       current_setting('archive_mode'),
       current_setting('archive_command'),
       current_setting('archive_timeout'),
       (SELECT setting::bigint FROM pg_settings WHERE name = 'wal_segment_size'),
       CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_current_wal_lsn() - '0/0'::pg_lsn END,
       a.archived_count, a.last_archived_wal, a.last_archived_time,
       a.failed_count, a.last_failed_wal, a.last_failed_time,
       a.stats_reset, pg_postmaster_start_time(), now()
FROM pg_stat_archiver a
"""


def segment_end(name: str, segment_size: int) -> int | None:
    """The LSN (as a byte position) just past the WAL segment named `name`; None for names without a
    position (a timeline .history file)."""
    m = _SEGMENT_RE.match(name)
    if not m:
        return None
    log_no, seg_no = int(m.group(2), 16), int(m.group(3), 16)
    per_log = 0x1_0000_0000 // segment_size
    return (log_no * per_log + seg_no + 1) * segment_size


def lsn_text(position: int) -> str:
    return f"{position >> 32:X}/{position & 0xFFFFFFFF:X}"


@dataclasses.dataclass(frozen=True)
class ArchiverState:
    in_recovery: bool
    archive_mode: str
    archive_command: str
    archive_timeout: str
    segment_size: int
    current_lsn: int | None  # None on a server in recovery
    archived_count: int
    last_archived_wal: str | None
    last_archived_time: dt.datetime | None
    failed_count: int
    last_failed_wal: str | None
    last_failed_time: dt.datetime | None
    stats_reset: dt.datetime | None
    started_at: dt.datetime
    now: dt.datetime  # the server's clock, so ages never mix two clocks

    @classmethod
    def from_row(cls, row: tuple[Any, ...]) -> ArchiverState:
        names = [f.name for f in dataclasses.fields(cls)]
        values = dict(zip(names, row, strict=True))
        values["current_lsn"] = None if row[5] is None else int(row[5])  # numeric from the pg_lsn difference
        return cls(**values)

    @property
    def archiving_on(self) -> bool:
        return self.archive_mode in ("on", "always")

    @property
    def failing(self) -> bool:
        if self.last_failed_time is None:
            return False
        return self.last_archived_time is None or self.last_failed_time > self.last_archived_time

    @property
    def rpo_bytes(self) -> int | None:
        if self.current_lsn is None or self.last_archived_wal is None:
            return None
        end = segment_end(self.last_archived_wal, self.segment_size)
        return None if end is None else max(0, self.current_lsn - end)

    @property
    def rpo_seconds(self) -> float | None:
        if self.in_recovery:
            return None
        if self.rpo_bytes == 0:
            return 0.0
        since = self.last_archived_time or max(t for t in (self.stats_reset, self.started_at) if t is not None)
        return max(0.0, (self.now - since).total_seconds())

    def to_json(self) -> dict[str, Any]:
        def t(v: dt.datetime | None) -> str | None:
            return iso(v) if v else None

        return {
            "in_recovery": self.in_recovery,
            "archive_mode": self.archive_mode,
            "archive_timeout": self.archive_timeout,
            "wal_segment_size": self.segment_size,
            "current_lsn": None if self.current_lsn is None else lsn_text(self.current_lsn),
            "archived_count": self.archived_count,
            "last_archived_wal": self.last_archived_wal,
            "last_archived_at": t(self.last_archived_time),
            "failed_count": self.failed_count,
            "last_failed_wal": self.last_failed_wal,
            "last_failed_at": t(self.last_failed_time),
            "failing": self.failing,
            "rpo_seconds": None if self.rpo_seconds is None else round(self.rpo_seconds, 1),
            "rpo_bytes": self.rpo_bytes,
        }


def read_archiver(conn: Any) -> ArchiverState:
    row = conn.execute(ARCHIVER_SQL).fetchone()
    assert row is not None
    return ArchiverState.from_row(tuple(row))
