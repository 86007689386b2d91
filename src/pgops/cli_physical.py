"""The physical commands of the CLI: `pgops physical-backup`, `physical-restore` (pgBackRest), `restore-point`,
and `status --metrics-only` (the physical gauges alone, for a schedule every minute).

Thin like cli.py: arguments to a library call (physical_run.py, physical_restore.py), the outcome to the
metrics and stdout. Exceptions propagate to cli.py, which alone maps them to exit codes.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time

from pgops import metrics
from pgops.errors import ConfigError, ExitCode, LockHeld, PgOpsError
from pgops.settings import Settings

log = logging.getLogger(__name__)


def cmd_physical_backup(settings: Settings, ns: argparse.Namespace) -> ExitCode:
    from pgops.physical_run import run_physical_backup

    attempt = time.time()
    kind = f"@pgbackrest/{ns.type}"
    try:
        result = run_physical_backup(settings, ns.type)
    except PgOpsError as e:
        if not isinstance(e, (ConfigError, LockHeld)):  # a refused start is not a failed backup
            metrics.update(
                settings,
                lambda s: metrics.set_fields(
                    s, kind, physical_backup_last_attempt=attempt, physical_backup_last_result=0
                ),
            )
        raise
    if not result.skipped:
        metrics.update(
            settings,
            lambda s: metrics.set_fields(
                s,
                kind,
                physical_backup_last_attempt=attempt,
                physical_backup_last_result=1,
                physical_backup_last_success=result.started_at,
                physical_backup_duration=result.seconds,
            ),
        )
    if ns.json:
        json.dump(result.to_json(), sys.stdout, ensure_ascii=False)
        sys.stdout.write("\n")
    return ExitCode.OK


def cmd_physical_restore(settings: Settings, ns: argparse.Namespace) -> ExitCode:
    from pgops.physical_restore import (
        DEFAULT_STATE_DIR,
        PhysicalRestoreRequest,
        finish_physical_restore,
        parse_target,
        run_physical_restore,
    )

    state_dir = ns.state_dir or DEFAULT_STATE_DIR
    if ns.finish:
        extra = [
            f
            for f, v in (
                ("--to", ns.to),
                ("--to-time", ns.to_time),
                ("--to-lsn", ns.to_lsn),
                ("--to-name", ns.to_name),
                ("--set", ns.backup_set),
                ("--pgdata", ns.pgdata),
            )
            if v
        ]
        extra += [f for f, v in (("--replace", ns.replace), ("--drill", ns.drill)) if v]
        if extra:
            raise ConfigError(f"--finish does not take {', '.join(extra)}; valid with it: --timeout, --state-dir")
        if ns.timeout <= 0:
            raise ConfigError(f"--timeout={ns.timeout:g} is not valid; valid: a number of seconds > 0")
        doc = finish_physical_restore(settings, state_dir, ns.timeout).to_json()
    else:
        req = PhysicalRestoreRequest(
            target=parse_target(ns.to, ns.to_time, ns.to_lsn, ns.to_name),
            pgdata=ns.pgdata,
            backup_set=ns.backup_set,
            replace=ns.replace,
            drill=ns.drill,
            state_dir=state_dir,
        )
        doc = run_physical_restore(settings, req)
    if ns.json:
        json.dump(doc, sys.stdout, ensure_ascii=False)
        sys.stdout.write("\n")
    return ExitCode.OK


def cmd_restore_point(settings: Settings, ns: argparse.Namespace) -> ExitCode:
    from pgops.restore_point import create_restore_point

    point = create_restore_point(settings, name=ns.name, reason=ns.reason, timeout=ns.timeout)
    if ns.json:
        json.dump(point.to_json(), sys.stdout, ensure_ascii=False)
        sys.stdout.write("\n")
    return ExitCode.OK


def refresh_physical_gauges(settings: Settings, ns: argparse.Namespace) -> ExitCode:
    """`pgops status --metrics-only`: read pgBackRest and pg_stat_archiver, write the physical gauges, print nothing.

    The scheduled refresh (roles/pgbackrest, every minute) runs it so that pgops_rpo_seconds and the other gauges
    stay current between backups. A stale view is no failure of this job: it exits 0 and pgops_physical_ok says
    it (alerts read the gauges). It fails only when it could not do its job: no stanza, or gauges not written.
    """
    from pgops.physical import physical_report, record_metrics

    if ns.json:
        raise ConfigError("status --metrics-only prints nothing, so it does not take --json; valid: one of the two")
    if not settings.pgbackrest_stanza:
        raise ConfigError(
            "status --metrics-only refreshes the physical gauges, but PGOPS_PGBACKREST_STANZA is not set; "
            "valid: the stanza's name in the env file (postgresql_backup_settings.PGBACKREST_STANZA)"
        )
    if not settings.metrics_dir:
        raise ConfigError(
            "status --metrics-only writes gauges, but PGOPS_METRICS_DIR is not set; valid: a directory the "
            "textfile collector reads, like /var/lib/prometheus/node-exporter"
        )
    report = physical_report(settings)
    if not record_metrics(settings, report):
        raise ConfigError(
            f"status --metrics-only could not write the gauges into PGOPS_METRICS_DIR={settings.metrics_dir} "
            "(event=metrics_write_failed has the reason); valid: a directory this user can write"
        )
    log.debug("event=physical_gauges_refreshed stanza=%s ok=%d", report.stanza, 0 if report.problems else 1)
    return ExitCode.OK
