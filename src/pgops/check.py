"""`pgops check`: prove, before the first scheduled run, that a backup could run with these settings.

The backup role runs it on converge, as the user cron runs pgops as, so that a broken configuration fails
the play instead of the first 02:00 run. Each step raises the same error the real run would raise (its
exit code and one line naming the setting), in the order a backup meets them.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from pgops import log as pglog
from pgops.errors import ConfigError, PostgresError

if TYPE_CHECKING:
    from pgops.cluster import ClusterIdentity
    from pgops.settings import Settings
    from pgops.storage.base import Storage

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

    from pgops.pg import PgConn, cluster_identity, find_bindir, server_info, tool_version
    from pgops.storage import open_storage

    storage = open_storage(settings)
    try:
        storage.check()
        steps.append("storage")
        with PgConn.from_settings(settings).connect() as conn:
            info = server_info(conn)
            identity = cluster_identity(conn, socket.gethostname())
        steps.append(f"target={_owner_state(storage, settings.target, identity)}")
    finally:
        storage.close()
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


def _owner_state(storage: Storage, target: str, identity: ClusterIdentity) -> str:
    """Who owns the target: 'ours', 'unclaimed' (the first backup claims it) or 'other-cluster'.

    Another owner is a warning, not a failure: restore.yml provisions a rebuilt host (and so runs this
    check) before it adopts the lost host's target. The backup itself refuses (exit 2)."""
    from pgops.cluster import load_lineage

    chain = load_lineage(storage, target)
    if not chain:
        return "unclaimed"
    owner = chain[-1].identity
    if owner.system_identifier == identity.system_identifier:
        return "ours"
    log.warning(
        "event=check_target_owned_by_other target=%s owner=%s this=%s detail=%s",
        pglog.q(target),
        pglog.q(owner.describe()),
        pglog.q(identity.describe()),
        pglog.q(
            f"backups will be refused until this cluster adopts the target "
            f"(`pgops adopt --replaces {owner.system_identifier}`) or uses another PGOPS_TARGET"
        ),
    )
    return "other-cluster"


def _major_of(version_line: str) -> int | None:
    """'pg_dump (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)' -> 15."""
    for word in version_line.split():
        head = word.split(".")[0]
        if head.isdigit():
            return int(head)
    return None
