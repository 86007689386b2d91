"""`pgops physical-backup`, and the one way pgops runs pgBackRest (the restore side is physical_restore.py).

pgBackRest does the work; pgops decides whether it runs (not on a server in recovery), holds a lock so two
physical backups never overlap, relays pgBackRest's console output into its own log lines, checks the exit
status, and records the outcome for the metrics. Nothing secret is ever put on pgBackRest's command line:
the repository keys and the cipher passphrase stay in its config file (or PGBACKREST_* variables).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import subprocess
import time
from collections.abc import Sequence
from typing import Any

from pgops import proc
from pgops.errors import ConfigError, PgbackrestError
from pgops.lock import target_lock
from pgops.log import q, shorten
from pgops.pg import PgConn, in_recovery
from pgops.pgbackrest import BACKUP_TYPES, PGBACKREST_BIN, PhysicalBackup, child_env, read_stanza_info
from pgops.settings import Settings

log = logging.getLogger(__name__)

# pgBackRest's console line: "2026-12-03 15:50:00.123 P00   INFO: backup command begin 2.45: ..."
_CONSOLE_RE = re.compile(r"^(?:\S+ \S+ )?P\d+\s+([A-Z]+):\s?(.*)$")
_LEVELS = {"ERROR": logging.ERROR, "WARN": logging.WARNING, "INFO": logging.INFO}
_KEEP_ERRORS = 5
_KEEP_LINES = 1000


def require_stanza(settings: Settings) -> str:
    if not settings.pgbackrest_stanza:
        raise ConfigError(
            "PGOPS_PGBACKREST_STANZA is not set, so this host has no physical backups; set it to the pgBackRest "
            "stanza of this server (the pgbackrest role writes it into the env file), or pass --stanza"
        )
    return settings.pgbackrest_stanza


def require_not_root(command: str) -> None:
    """pgBackRest must run as the user that owns the data directory and the repository. Run as root, it
    leaves root-owned files in a posix repository and its lock directory, which then break the postgres
    user's own archive-push and backups."""
    if os.geteuid() == 0:
        raise ConfigError(
            f"pgops {command} runs pgBackRest and must run as the postgres user, not root: "
            f"runuser -u postgres -- pgops {command} ...; nothing was done"
        )


def lock_name(stanza: str) -> str:
    """Physical runs of one stanza lock each other out, and nothing else ('@' is in no target's name)."""
    return f"pgbackrest@{stanza}"


def pgbackrest_argv(
    settings: Settings, command: str, options: Sequence[str] = (), *, logs: tuple[str, str] = ("info", "off")
) -> list[str]:
    """By default every console line goes to stdout, in order, to be relayed; nothing to stderr."""
    console, stderr = logs
    return [
        PGBACKREST_BIN,
        f"--config={settings.pgbackrest_config}",
        f"--stanza={require_stanza(settings)}",
        f"--log-level-console={console}",
        f"--log-level-stderr={stderr}",
        *options,
        command,
    ]


@dataclasses.dataclass
class RunOutput:
    lines: list[str] = dataclasses.field(default_factory=list)  # the first _KEEP_LINES console lines
    errors: list[str] = dataclasses.field(default_factory=list)  # the first ERROR messages, HINTs joined
    level: str = "INFO"  # of the last prefixed line: continuation lines ("       HINT: ...") inherit it


def run_pgbackrest(settings: Settings, command: str, options: Sequence[str] = ()) -> RunOutput:
    """Run one pgBackRest command, relay each console line as a log line, raise PgbackrestError unless it
    exits 0. A signal that stops pgops (SIGTERM, SIGINT) reaches pgBackRest as SIGTERM, and it is reaped
    (proc.running) before the signal's exit code propagates."""
    argv = pgbackrest_argv(settings, command, options)
    out = RunOutput()
    try:
        with proc.running(argv, env=child_env(), stdout=subprocess.PIPE) as child:
            assert child.proc.stdout is not None
            for raw in iter(child.proc.stdout.readline, b""):
                _relay(command, raw.decode("utf-8", "replace").rstrip("\n"), out)
            rc = child.wait()
            stderr = child.stderr_text
    except FileNotFoundError:
        raise PgbackrestError(
            f"{PGBACKREST_BIN} is not installed (not on PATH); install the Debian package pgbackrest"
        ) from None
    if rc != 0:
        how = f"was killed by signal {-rc}" if rc < 0 else f"exited {rc}"
        detail = " | ".join(out.errors) if out.errors else proc.error_summary(stderr)
        raise PgbackrestError(f"pgbackrest {command} {how}: {shorten(detail, 600)}")
    return out


def _relay(command: str, line: str, out: RunOutput) -> None:
    if not line.strip():
        return
    if len(out.lines) < _KEEP_LINES:
        out.lines.append(line)
    m = _CONSOLE_RE.match(line)
    continued = m is None and line[:1].isspace()
    if m is not None:
        out.level = m.group(1)
    text = m.group(2) if m is not None else line.strip()
    level = _LEVELS.get(out.level, logging.DEBUG) if m is not None or continued else logging.INFO
    if level == logging.ERROR:
        if continued and out.errors:
            out.errors[-1] += " " + text
        elif len(out.errors) < _KEEP_ERRORS:
            out.errors.append(text.strip())
    log.log(
        level, "event=pgbackrest command=%s level=%s line=%s", command, logging.getLevelName(level).lower(), q(text)
    )


def newest_backup(settings: Settings) -> PhysicalBackup | None:
    """The backup just taken, for the log and --json (the view's own reader of `pgbackrest info`). A failure to
    read it does not fail the backup, which pgBackRest already reported done."""
    try:
        return read_stanza_info(settings).newest()
    except PgbackrestError as e:
        log.warning("event=physical_backup_info_unreadable error=%s", q(str(e)))
        return None


@dataclasses.dataclass(frozen=True)
class PhysicalBackupResult:
    type: str
    started_at: float
    seconds: float
    skipped: bool = False
    label: str | None = None
    size: int | None = None

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def run_physical_backup(settings: Settings, backup_type: str) -> PhysicalBackupResult:
    """One scheduled physical backup, run as postgres. On a server in recovery (a standby): one log line,
    nothing run."""
    if backup_type not in BACKUP_TYPES:
        raise ConfigError(f"--type={backup_type!r} is not valid; valid values: {', '.join(BACKUP_TYPES)}")
    stanza = require_stanza(settings)
    require_not_root("physical-backup")
    started = time.time()
    with PgConn.from_settings(settings).connect("postgres") as c:
        recovering = in_recovery(c)
    if recovering:
        log.info("event=physical_backup_skipped reason=in_recovery stanza=%s type=%s", q(stanza), backup_type)
        return PhysicalBackupResult(backup_type, started, 0.0, skipped=True)
    with target_lock(settings.lock_dir, lock_name(stanza)):
        log.info("event=physical_backup_start stanza=%s type=%s", q(stanza), backup_type)
        run_pgbackrest(settings, "backup", [f"--type={backup_type}"])
        seconds = time.time() - started
    newest = newest_backup(settings)
    label = newest.label if newest else None
    result = PhysicalBackupResult(backup_type, started, seconds, label=label, size=newest.repo_size if newest else None)
    log.info(
        "event=physical_backup_done stanza=%s type=%s label=%s seconds=%.1f",
        q(stanza),
        backup_type,
        q(label or "unknown"),
        seconds,
    )
    return result
