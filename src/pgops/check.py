"""`pgops check`: prove, before the first scheduled run, that a backup could run with these settings.

The backup role runs it on converge, as the user cron runs pgops as, so that a broken configuration fails
the play instead of the first 02:00 run. Each step raises the same error the real run would raise (its
exit code and one line naming the setting), in the order a backup meets them.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from pgops import log as pglog
from pgops.errors import ConfigError, PostgresError

if TYPE_CHECKING:
    from pgops.settings import Settings

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class CheckReport:
    steps: tuple[str, ...]


def _writable_dir(setting: str, value: str) -> None:
    """The directory exists (or can be made) and this user can create and remove a file in it."""
    path = Path(value)
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=".pgops-check-", dir=path)
        os.close(fd)
        Path(name).unlink()
    except OSError as e:
        raise ConfigError(
            f"{setting}={value!r} is not a directory this user (uid {os.getuid()}) can write: {e.strerror}"
        ) from None


def run_check(settings: Settings, *, settings_only: bool = False) -> CheckReport:
    """Settings were validated when they were built; here: keys, store, server, client tools, directories."""
    from pgops import crypto

    steps = ["settings"]
    recipients = crypto.recipients_from_settings(settings)
    if recipients is not None:
        steps.append(f"age_recipients={len(recipients.keys)}")
    if settings.age_identity_file:
        crypto.load_identities(settings, "(check)")
        steps.append("age_identity")
    if settings_only:
        return CheckReport(tuple(steps))

    from pgops.storage import open_storage

    storage = open_storage(settings)
    try:
        storage.check()
    finally:
        storage.close()
    steps.append("storage")

    from pgops.pg import PgConn, find_bindir, server_info, tool_version

    with PgConn.from_settings(settings).connect() as conn:
        info = server_info(conn)
    bindir = find_bindir(settings.pg_bindir, info.major)
    dump_version = tool_version(bindir, "pg_dump")
    major = _major_of(dump_version)
    if major is not None and major < info.major:
        raise PostgresError(
            f"{bindir}/pg_dump is version {major}, older than the server ({info.major}); "
            f"set PGOPS_PG_BINDIR to a PostgreSQL {info.major} or newer bin directory"
        )
    steps.append(f"postgres={info.major}")
    for setting, value in (("PGOPS_LOCK_DIR", settings.lock_dir), ("PGOPS_METRICS_DIR", settings.metrics_dir)):
        if value:
            _writable_dir(setting, value)
            steps.append(setting.removeprefix("PGOPS_").lower())
    log.info(
        "event=check_ok storage=%s target=%s server=%s pg_dump=%s",
        pglog.q(storage.url),
        pglog.q(settings.target),
        pglog.q(info.version),
        pglog.q(dump_version),
    )
    return CheckReport(tuple(steps))


def _major_of(version_line: str) -> int | None:
    """'pg_dump (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)' -> 15."""
    for word in version_line.split():
        head = word.split(".")[0]
        if head.isdigit():
            return int(head)
    return None
