"""`pgops restore-point`: a named restore point, archived before the command returns.

Made before a migration (playbooks/backup.yml), so that "undo the migration" is a point-in-time restore to
that name (`pgops physical-restore --to-name NAME`). PostgreSQL writes the restore point into the WAL
(pg_create_restore_point); the point is only usable once the segment that holds it is in the repository, so
the command switches to a new WAL segment and waits until the server's archiver has archived it. It fails,
naming the cause, if archiving is off, the server is a replica, or the segment is not archived in time.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import re
import time
from typing import Any

from pgops.errors import ConfigError, PostgresError
from pgops.log import q
from pgops.manifest import iso
from pgops.pg import PgConn
from pgops.settings import Settings

log = logging.getLogger(__name__)

# PostgreSQL keeps at most 63 bytes of a restore point's name (MAXFNAMELEN - 1). pgops allows the characters
# that survive a shell, a YAML file and pgBackRest's --target unquoted.
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,62}$")
DEFAULT_TIMEOUT = 120.0


@dataclasses.dataclass(frozen=True)
class RestorePoint:
    name: str
    lsn: str
    created_at: dt.datetime  # the server's clock
    wal_file: str
    archived_seconds: float  # from the restore point to its segment in the repository

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "lsn": self.lsn,
            "created_at": iso(self.created_at),
            "wal_file": self.wal_file,
            "archived_seconds": round(self.archived_seconds, 1),
        }


def default_name(reason: str, now: dt.datetime) -> str:
    """pgops-<reason>-<UTC time>, the reason cut so that the name fits PostgreSQL's 63 bytes."""
    return f"pgops-{reason[:40].rstrip('._-')}-{now.astimezone(dt.UTC).strftime('%Y%m%dT%H%M%SZ')}"


def check_name(name: str) -> str:
    if not NAME_RE.match(name):
        raise ConfigError(
            f"--name={name!r} is not a valid restore point name; valid: 1-63 characters of letters, digits, "
            "'.', '_', ':' or '-', starting with a letter or digit (for example pre-migration-42)"
        )
    return name


def _segment_key(wal_file: str) -> tuple[int, int]:
    """(timeline, segment position) of a WAL file name, for ordering: TTTTTTTTXXXXXXXXYYYYYYYY."""
    return int(wal_file[:8], 16), int(wal_file[8:24], 16)


def create_restore_point(
    settings: Settings, *, name: str | None, reason: str, timeout: float = DEFAULT_TIMEOUT
) -> RestorePoint:
    if timeout <= 0:
        raise ConfigError(f"--timeout={timeout:g} is not valid; valid: a number of seconds > 0")
    conn = PgConn.from_settings(settings)
    with conn.connect("postgres") as c:
        row = c.execute(
            "SELECT pg_is_in_recovery(), current_setting('archive_mode'), clock_timestamp(),"
            " (SELECT failed_count FROM pg_stat_archiver)"
        ).fetchone()
        assert row is not None
        in_recovery, archive_mode, now, failed_before = row
        if in_recovery:
            raise ConfigError(
                "this server is in recovery (a replica): a restore point is made on the primary; nothing was done"
            )
        if archive_mode not in ("on", "always"):
            raise ConfigError(
                f"archive_mode is {archive_mode} on this server: a restore point is only usable from archived WAL; "
                "set postgresql_archive_mode: true (roles/postgresql) with pgBackRest first; nothing was done"
            )
        point = check_name(name) if name else default_name(reason, now)
        row = c.execute(
            "SELECT lsn::text, pg_walfile_name(lsn), clock_timestamp() FROM pg_create_restore_point(%s) AS lsn",
            (point,),
        ).fetchone()
        assert row is not None
        lsn, wal_file, created_at = row
        # The segment that holds the restore point goes to the archive now, not at archive_timeout.
        c.execute("SELECT pg_switch_wal()")
    log.info("event=restore_point_created name=%s lsn=%s wal_file=%s", q(point), lsn, wal_file)
    waited = _wait_archived(conn, wal_file, failed_before, timeout)
    log.info("event=restore_point_archived name=%s wal_file=%s seconds=%.1f", q(point), wal_file, waited)
    return RestorePoint(point, lsn, created_at, wal_file, waited)


def _wait_archived(conn: PgConn, wal_file: str, failed_before: int, timeout: float) -> float:
    start = time.monotonic()
    want = _segment_key(wal_file)
    while True:
        with conn.connect("postgres") as c:
            row = c.execute("SELECT last_archived_wal, failed_count, last_failed_wal FROM pg_stat_archiver").fetchone()
        assert row is not None
        archived, failed, failed_wal = row
        if archived and len(archived) >= 24 and _segment_key(archived) >= want:
            return time.monotonic() - start
        waited = time.monotonic() - start
        if waited >= timeout:
            cause = (
                f"the archiver failed {failed - failed_before} time(s) since, last on {failed_wal}"
                if failed > failed_before
                else "the archiver did not report it"
            )
            raise PostgresError(
                f"the restore point's WAL segment {wal_file} was not archived within --timeout={timeout:g}s ({cause}); "
                "the restore point exists on the server but cannot be restored to until that segment reaches the "
                "repository: check `pgops status` and the pgBackRest log"
            )
        time.sleep(0.2)
