"""Prometheus metrics in node_exporter's textfile format, and a healthchecks.io-style heartbeat.

Each command updates a small state file (pgops-state.json, under flock) in PGOPS_METRICS_DIR and then
renders *all* metrics from it into pgops.prom with prometheus-client's write_to_textfile, which writes a
temp file and renames it, so node_exporter never reads a half-written file. Keeping state means a failed
backup updates the attempt metrics while the last-success timestamp keeps its old value.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

from pgops.settings import Settings

log = logging.getLogger(__name__)

PROM_FILE = "pgops.prom"
STATE_FILE = "pgops-state.json"

# name -> (help, state field)
GAUGES: dict[str, tuple[str, str]] = {
    "pgops_backup_last_success_timestamp_seconds": (
        "Start time of the newest successful backup.",
        "backup_last_success",
    ),
    "pgops_backup_last_attempt_timestamp_seconds": ("Start time of the last backup attempt.", "backup_last_attempt"),
    "pgops_backup_last_attempt_success": ("1 if the last backup attempt succeeded, else 0.", "backup_last_result"),
    "pgops_backup_duration_seconds": ("Duration of the newest successful backup.", "backup_duration"),
    "pgops_backup_size_bytes": ("Bytes stored by the newest successful backup.", "backup_bytes"),
    "pgops_verify_last_success_timestamp_seconds": ("Time of the last successful verify.", "verify_last_success"),
    "pgops_verify_last_attempt_success": (
        "1 if the last verify of this database passed, else 0.",
        "verify_last_result",
    ),
    "pgops_restore_test_last_success_timestamp_seconds": (
        "Time of the last passed restore drill.",
        "drill_last_success",
    ),
    "pgops_restore_test_duration_seconds": ("Restore time measured by the last restore drill.", "drill_seconds"),
    "pgops_restore_test_last_attempt_timestamp_seconds": (
        "Time of the last restore drill attempt (verify --restore-test), passed or not.",
        "drill_last_attempt",
    ),
    "pgops_restore_test_last_attempt_success": (
        "1 if the last restore drill restored and checked the backup, else 0 (failed, or could not decrypt).",
        "drill_last_result",
    ),
    "pgops_retention_kept_backups": ("Backups kept by the last retention run.", "retention_kept"),
    "pgops_retention_deleted_backups": ("Backups deleted by the last retention run.", "retention_deleted"),
    "pgops_retention_locked_backups": ("Backups retention could not delete (Object Lock).", "retention_locked"),
    # physical (pgBackRest) runs: database="@pgbackrest/<full|diff|incr>" and "@pgbackrest/<restore|drill>"
    "pgops_physical_backup_last_success_timestamp_seconds": (
        "Start time of the newest successful pgops physical-backup of this type.",
        "physical_backup_last_success",
    ),
    "pgops_physical_backup_last_attempt_timestamp_seconds": (
        "Start time of the last physical-backup attempt of this type.",
        "physical_backup_last_attempt",
    ),
    "pgops_physical_backup_last_attempt_success": (
        "1 if the last physical-backup attempt of this type succeeded, else 0.",
        "physical_backup_last_result",
    ),
    "pgops_physical_backup_duration_seconds": (
        "Duration of the newest successful physical backup of this type.",
        "physical_backup_duration",
    ),
    "pgops_physical_restore_last_rto_seconds": (
        "Restore start to promoted and checked server, measured by the last physical-restore --finish.",
        "physical_restore_rto",
    ),
    "pgops_physical_restore_last_success_timestamp_seconds": (
        "Time the last physical restore (or drill) was finished and checked.",
        "physical_restore_last_success",
    ),
}

State = dict[str, dict[str, dict[str, float]]]  # target -> database -> field -> value


@contextlib.contextmanager
def _locked_state(directory: Path) -> Iterator[State]:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / STATE_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        raw = os.read(fd, 16 * 1024 * 1024)
        try:
            state: State = json.loads(raw) if raw else {}
        except ValueError:
            log.warning("event=metrics_state_unreadable path=%s", path)
            state = {}
        yield state
        data = json.dumps(state, indent=1, sort_keys=True).encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, data, 0)
        os.fsync(fd)
    finally:
        os.close(fd)


def render(state: State, path: Path) -> None:
    from prometheus_client import CollectorRegistry, Gauge, write_to_textfile

    registry = CollectorRegistry()
    for name, (help_text, field) in GAUGES.items():
        gauge = Gauge(name, help_text, ["target", "database"], registry=registry)
        for target, databases in sorted(state.items()):
            for database, fields in sorted(databases.items()):
                if field in fields:
                    gauge.labels(target=target, database=database).set(fields[field])
    write_to_textfile(str(path), registry)


def update(settings: Settings, change: Callable[[dict[str, dict[str, float]]], None]) -> None:
    """Apply `change` to this target's per-database state and rewrite pgops.prom. Never raises."""
    if not settings.metrics_dir:
        return
    directory = Path(settings.metrics_dir)
    try:
        with _locked_state(directory) as state:
            change(state.setdefault(settings.target, {}))
            render(state, directory / PROM_FILE)
    except OSError as e:
        log.warning("event=metrics_write_failed dir=%s error=%r", directory, e.strerror)


def set_fields(per_db: dict[str, dict[str, float]], database: str | None, **fields: float) -> None:
    per_db.setdefault(database or "@globals", {}).update(fields)


def ping(settings: Settings, suffix: str, body: str = "") -> None:
    """healthchecks.io convention: <url>/start, <url> (success), <url>/<exit code> (failure). Never fatal."""
    url = settings.heartbeat_url.reveal()
    if not url:
        return
    full = url.rstrip("/") + (f"/{suffix}" if suffix else "")
    try:
        req = urllib.request.Request(full, data=body.encode()[:10_000] or None, method="POST")  # noqa: S310
        with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310 - the URL is the operator's
            resp.read(1024)
    except (OSError, urllib.error.URLError, ValueError) as e:
        # The URL holds the check's token: log only that the ping failed, never the URL.
        log.warning("event=heartbeat_failed signal=%s error=%s", suffix or "success", type(e).__name__)
