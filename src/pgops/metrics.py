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
from typing import Any

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

# The physical view (pgBackRest + pg_stat_archiver), refreshed by `pgops status`; labels target and stanza.
PHYSICAL_GAUGES: dict[str, tuple[str, str]] = {
    "pgops_physical_check_timestamp_seconds": (
        "When pgops status last read pgBackRest and pg_stat_archiver.",
        "physical_check_timestamp",
    ),
    "pgops_physical_info_success": (
        "1 if pgbackrest info could be read at the last check, else 0.",
        "physical_info_success",
    ),
    "pgops_physical_ok": (
        "1 if the last check found no physical problem (what makes status exit 11), else 0.",
        "physical_ok",
    ),
    "pgops_server_in_recovery": (
        "1 if the server is in recovery (a replica): archiving checks do not apply.",
        "in_recovery",
    ),
    "pgops_wal_archive_failing": (
        "1 if pg_stat_archiver's last failure is newer than its last success.",
        "archive_failing",
    ),
    "pgops_wal_archived_count": ("WAL files archived since the statistics reset (pg_stat_archiver).", "archived"),
    "pgops_wal_archive_failed_count": ("Failed archive_command runs since the statistics reset.", "failed"),
    "pgops_wal_last_archived_timestamp_seconds": ("When the last WAL file was archived.", "last_archived_timestamp"),
    "pgops_rpo_seconds": (
        "Current RPO: seconds since the last archived WAL file, 0 when none is waiting.",
        "rpo_seconds",
    ),
    "pgops_rpo_bytes": ("Current RPO: bytes of WAL written but not yet archived.", "rpo_bytes"),
    "pgops_wal_dropped": (
        "WAL files pgBackRest dropped past archive-push-queue-max since the newest full backup (an archive gap).",
        "wal_dropped",
    ),
}
# One series per backup type (full, diff, incr): field "<prefix>_<type>".
PHYSICAL_TYPED_GAUGES: dict[str, tuple[str, str]] = {
    "pgops_physical_backup_newest_timestamp_seconds": (
        "Stop time of the newest physical backup of this type.",
        "newest_timestamp",
    ),
    "pgops_physical_backup_newest_size_bytes": (
        "Bytes the newest physical backup of this type stored in the repository.",
        "newest_size",
    ),
}
PHYSICAL_TYPES = ("full", "diff", "incr")
PHYSICAL_PREFIX = "@physical/"  # state key "@physical/<target>" -> stanza -> fields; no target starts with "@"
# Facts about this host's runs rather than a database's backups; label target only.
RUN_GAUGES: dict[str, tuple[str, str]] = {
    "pgops_backup_skipped_replica": (
        "1 if the last pgops backup skipped this host, a server in recovery, because PGOPS_BACKUP_FROM=primary; "
        "0 after a run that did not skip (it backed up, or failed).",
        "backup_skipped_replica",
    ),
}
RUN_PREFIX = "@run/"  # state key "@run/<target>" -> RUN_GROUP -> fields
RUN_GROUP = "backup"

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


def _gauges(
    registry: Any, gauges: dict[str, tuple[str, str]], label: str, per_target: State, kinds: tuple[str, ...] = ()
) -> None:
    """One gauge per entry; a series per target and `label` value (and per kind: field "<field>_<kind>")."""
    from prometheus_client import Gauge

    for name, (help_text, field) in gauges.items():
        gauge = Gauge(name, help_text, ["target", label, *(["type"] if kinds else [])], registry=registry)
        for target, groups in sorted(per_target.items()):
            for group, fields in sorted(groups.items()):
                for kind in kinds or ("",):
                    key = f"{field}_{kind}" if kind else field
                    if key in fields:
                        labels = {"target": target, label: group} | ({"type": kind} if kind else {})
                        gauge.labels(**labels).set(fields[key])


def render(state: State, path: Path) -> None:
    from prometheus_client import CollectorRegistry, write_to_textfile

    registry = CollectorRegistry()
    logical = {t: v for t, v in state.items() if not t.startswith("@")}
    physical = {t.removeprefix(PHYSICAL_PREFIX): v for t, v in state.items() if t.startswith(PHYSICAL_PREFIX)}
    _gauges(registry, GAUGES, "database", logical)
    _gauges(registry, PHYSICAL_GAUGES, "stanza", physical)
    _gauges(registry, PHYSICAL_TYPED_GAUGES, "stanza", physical, PHYSICAL_TYPES)
    runs = {t.removeprefix(RUN_PREFIX): v.get(RUN_GROUP, {}) for t, v in state.items() if t.startswith(RUN_PREFIX)}
    _run_gauges(registry, runs)
    write_to_textfile(str(path), registry)


def _run_gauges(registry: Any, per_target: dict[str, dict[str, float]]) -> None:
    from prometheus_client import Gauge

    for name, (help_text, field) in RUN_GAUGES.items():
        gauge = Gauge(name, help_text, ["target"], registry=registry)
        for target, fields in sorted(per_target.items()):
            if field in fields:
                gauge.labels(target=target).set(fields[field])


def update(
    settings: Settings,
    change: Callable[[dict[str, dict[str, float]]], None],
    *,
    physical: bool = False,
    run: bool = False,
) -> bool:
    """Apply `change` to this target's per-database state (physical: its per-stanza state; run: its per-run
    state, RUN_GROUP) and rewrite pgops.prom. Never raises: False when there is no PGOPS_METRICS_DIR or it could
    not be written."""
    if not settings.metrics_dir:
        return False
    directory = Path(settings.metrics_dir)
    prefix = PHYSICAL_PREFIX if physical else RUN_PREFIX if run else ""
    try:
        with _locked_state(directory) as state:
            change(state.setdefault(prefix + settings.target, {}))
            render(state, directory / PROM_FILE)
    except OSError as e:
        log.warning("event=metrics_write_failed dir=%s error=%r", directory, e.strerror)
        return False
    return True


def set_backup_skipped_replica(settings: Settings, skipped: bool) -> bool:
    """pgops_backup_skipped_replica of this target: 1 after a backup run skipped on a replica, 0 after one that ran."""
    return update(settings, lambda s: set_fields(s, RUN_GROUP, backup_skipped_replica=1 if skipped else 0), run=True)


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
