"""The `pgops` command. Thin: parse arguments, build Settings, call the library, map errors to exit codes.

Exceptions become exit codes here and nowhere else.
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import json
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from pgops import interrupts, metrics
from pgops import log as pglog
from pgops.catalog import GOOD, STATES, Backup, Catalog
from pgops.cli_args import build_parser
from pgops.cli_physical import cmd_physical_backup, cmd_physical_restore, cmd_restore_point, refresh_physical_gauges
from pgops.cluster import identity_of
from pgops.errors import ConfigError, ExitCode, IntegrityError, MissingIdentity, PgOpsError
from pgops.manifest import iso, parse_time
from pgops.settings import Settings, load_settings

log = logging.getLogger("pgops.cli")


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover


class Progress:
    """A byte progress bar on a terminal; a log line every 10% (or minute) otherwise.

    The bar is the log stream's status line (pgops.log.status): the next log line starts on a line of its own.
    """

    def __init__(self, what: str, total: int | None) -> None:
        self.what, self.total = what, total
        self.tty = sys.stderr.isatty()
        self._last_log = time.monotonic()
        self._last_pct = -1

    def __call__(self, done: int) -> None:
        pct = int(done * 100 / self.total) if self.total else -1
        if self.tty:
            if self.total:
                bar = "#" * (pct // 4)
                pglog.status(f"{self.what} [{bar:<25}] {pct:3d}% {_human(done)} / {_human(self.total)}")
            else:
                pglog.status(f"{self.what} {_human(done)}")
            return
        now = time.monotonic()
        if (pct >= 0 and pct // 10 > self._last_pct // 10) or now - self._last_log > 60:
            self._last_pct, self._last_log = pct, now
            log.info("event=progress what=%s bytes=%d percent=%s", self.what, done, pct if pct >= 0 else "unknown")

    def close(self) -> None:
        pglog.end_status()


def _flags(ns: argparse.Namespace) -> dict[str, str]:
    return {k: str(v) for k, v in vars(ns).items() if k.startswith("PGOPS_") and v is not None}


def _mark_all_failed(state: dict[str, dict[str, float]], attempt: float) -> None:
    for fields in state.values():
        fields.update(backup_last_attempt=attempt, backup_last_result=0)


def cmd_backup(settings: Settings, ns: argparse.Namespace) -> ExitCode:
    from pgops import metrics
    from pgops.backup import run_backup
    from pgops.storage import open_storage

    storage = open_storage(settings)
    progress = Progress("backup", None) if sys.stderr.isatty() else None
    attempt = time.time()
    try:
        report = run_backup(
            settings, storage, progress=progress, reason=ns.reason, allow_clock_behind=ns.allow_clock_behind
        )
    except PgOpsError:
        # nothing was backed up: every database this host reported before has a failed attempt now
        metrics.update(settings, lambda state: _mark_all_failed(state, attempt))
        metrics.set_backup_skipped_replica(settings, False)
        raise
    finally:
        if progress:
            progress.close()

    def record(state: dict[str, dict[str, float]]) -> None:
        for m in report.manifests:
            metrics.set_fields(
                state,
                m.database,
                backup_last_success=m.started_at.timestamp(),
                backup_last_attempt=attempt,
                backup_last_result=1,
                backup_duration=m.duration,
                backup_bytes=m.size,
            )
        for name in report.failures:
            metrics.set_fields(state, name, backup_last_attempt=attempt, backup_last_result=0)

    metrics.update(settings, record)
    metrics.set_backup_skipped_replica(settings, False)
    for m in report.manifests:
        log.info("event=stored database=%s id=%s key=%s", pglog.q(m.database or "@globals"), m.id, pglog.q(m.key))
    if ns.json:
        out = {
            "id": report.backup_id,
            "backups": [dict(m.to_json(), key=m.key) for m in report.manifests],
            "failed": sorted(report.failures),
        }
        json.dump(out, sys.stdout, indent=2, ensure_ascii=False)
        sys.stdout.write("\n")
    report.raise_for_failures()
    return ExitCode.OK


def _restore_test_refused(state: dict[str, dict[str, float]], databases: list[str | None]) -> None:
    for database in databases:
        metrics.set_fields(state, database, drill_last_attempt=time.time(), drill_last_result=0)


def cmd_verify(settings: Settings, ns: argparse.Namespace) -> ExitCode:
    from pgops import metrics
    from pgops.storage import open_storage
    from pgops.verify import run_verify

    try:
        report = run_verify(
            settings,
            open_storage(settings),
            backup_id=ns.backup_id,
            database=ns.database,
            everything=ns.all,
            restore_test=ns.restore_test,
        )
    except MissingIdentity as e:
        # a restore test that cannot decrypt is a failed restore test, and monitoring must see it
        metrics.update(settings, functools.partial(_restore_test_refused, databases=e.databases))
        raise

    def record(state: dict[str, dict[str, float]]) -> None:
        now = time.time()
        for r in report.results:
            fields: dict[str, float] = {"verify_last_result": 1 if r.ok else 0}
            if r.ok:
                fields["verify_last_success"] = now
            if r.mode == "restore":  # only a real restore counts as a restore test, never sha256 or quick
                fields.update(drill_last_attempt=now, drill_last_result=1 if r.ok else 0)
            if r.ok and r.mode == "restore" and r.restore_seconds is not None:
                fields.update(drill_last_success=now, drill_seconds=r.restore_seconds)
            metrics.set_fields(state, r.manifest.database, **fields)

    metrics.update(settings, record)
    if ns.json:
        json.dump({"results": [r.to_json() for r in report.results]}, sys.stdout, ensure_ascii=False)
        sys.stdout.write("\n")
    failed = [r for r in report.results if not r.ok]
    if failed:
        raise IntegrityError(
            f"{len(failed)} of {len(report.results)} backups failed verification; first: "
            f"{failed[0].manifest.id}: {failed[0].error}"
        )
    return ExitCode.OK


def cmd_retention(settings: Settings, ns: argparse.Namespace) -> ExitCode:
    from pgops.retention import render_plan_table, run_retention
    from pgops.storage import open_storage

    storage = open_storage(settings)
    report = run_retention(settings, storage, dry_run=ns.dry_run)
    if not ns.dry_run:

        def record(state: dict[str, dict[str, float]]) -> None:
            counts: dict[str, dict[str, float]] = {}
            for o in report.outcomes:
                c = counts.setdefault(o.decision.candidate.database or "@globals", {})
                field = {"keep": "retention_kept", "locked": "retention_locked"}.get(o.action, "retention_deleted")
                for f in ("retention_kept", "retention_deleted", "retention_locked"):
                    c.setdefault(f, 0)
                c[field] += 1
            for database, fields in counts.items():
                metrics.set_fields(state, database, **fields)

        metrics.update(settings, record)
    if ns.json:
        json.dump(report.to_json(), sys.stdout, indent=2, ensure_ascii=False)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(render_plan_table(report))
    return report.exit_code


def cmd_status(settings: Settings, ns: argparse.Namespace) -> ExitCode:
    from pgops.status import render_table, run_status
    from pgops.storage import open_storage

    if ns.metrics_only:
        return refresh_physical_gauges(settings, ns)
    report = run_status(settings, open_storage(settings))
    if report.physical is not None:
        from pgops.physical import record_metrics

        record_metrics(settings, report.physical)
    if ns.json:
        json.dump(report.to_json(), sys.stdout, indent=2, ensure_ascii=False)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(render_table(report, _human))
    return ExitCode.STALE if report.stale else ExitCode.OK


def _parse_before(text: str | None) -> dt.datetime | None:
    try:
        return parse_time(text) if text else None
    except ValueError:
        raise ConfigError(f"--before={text!r} is not a time; valid: ISO 8601 like 2026-11-20T02:00:00Z") from None


def _list_row(b: Backup) -> list[str]:
    m = b.manifest
    ident = identity_of(m) if m is not None else None
    return [
        b.backup_id,
        b.database,
        iso(m.started_at) if m else "-",
        f"{m.duration:.1f}s" if m else "-",
        _human(m.size) if m else "-",
        m.reason if m else "-",
        ident.system_identifier if ident else "-",
        b.state + (" (verified)" if b.state == GOOD and b.verified else ""),
    ]


def _list_json(b: Backup) -> dict[str, Any]:
    base = b.manifest.to_json() if b.manifest else {"id": b.backup_id, "database": b.database}
    return dict(base, key=b.manifest_key, state=b.state, detail=b.detail, verified=b.verified)


def cmd_list(settings: Settings, ns: argparse.Namespace) -> ExitCode:
    """Good backups (with --all-states: every backup directory and its state), and who owns the target."""
    from pgops.storage import open_storage

    before = _parse_before(ns.before)
    catalog = Catalog.load(open_storage(settings), None if ns.all_targets else settings.target)
    found = [
        b
        for b in (catalog.in_state(*STATES) if ns.all_states else catalog.good)
        if (ns.database is None or b.database == ns.database)
        and (before is None or (b.started_at is not None and b.started_at <= before))
    ]
    owners = {
        t: [c.identity.to_json() | {"claimed_at": iso(c.at)} for c in chain] for t, chain in catalog.claims.items()
    }
    physical = None
    if settings.pgbackrest_stanza:
        from pgops.physical import physical_listing

        physical = physical_listing(settings, before)
    if ns.json:
        out = [_list_json(b) for b in found]
        doc = {
            "backups": out,
            "unreadable_manifests": list(catalog.unreadable),
            "owners": owners,
            "ignored_keys": len(catalog.ignored_keys),
        } | ({"physical": physical.to_json()} if physical else {})
        json.dump(doc, sys.stdout, indent=2, ensure_ascii=False)
        sys.stdout.write("\n")
        return ExitCode.OK
    for target, chain in sorted(owners.items()):
        now = chain[-1]
        sys.stdout.write(
            f"target {target}: cluster {now['system_identifier']} (PostgreSQL {now['major']}, host {now['host']})"
            + (f", after {len(chain) - 1} earlier cluster(s)" if len(chain) > 1 else "")
            + "\n"
        )
    header = ["ID", "DATABASE", "STARTED (UTC)", "DURATION", "SIZE", "REASON", "CLUSTER", "STATE"]
    rows = [header, *map(_list_row, found)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        sys.stdout.write("  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() + "\n")
    hidden = len(catalog.backups) - len(catalog.good)
    if hidden and not ns.all_states:
        sys.stdout.write(f"({hidden} backup(s) not restorable, not shown; --all-states shows them)\n")
    if catalog.ignored_keys:
        sys.stdout.write(f"({len(catalog.ignored_keys)} key(s) outside pgops' layout, ignored)\n")
    if physical:
        from pgops.physical import render_list

        sys.stdout.write("\n" + render_list(physical, _human))
    return ExitCode.OK


def cmd_adopt(settings: Settings, ns: argparse.Namespace) -> ExitCode:
    """This server's cluster replaced the owner of the target (a DR rebuild, a major upgrade)."""
    from pgops.ownership import adopt
    from pgops.pg import PgConn, cluster_identity
    from pgops.storage import open_storage

    with PgConn.from_settings(settings).connect("postgres") as c:
        identity = cluster_identity(c, socket.gethostname())
    result = adopt(open_storage(settings), settings.target, identity, ns.replaces, ns.reason)
    if ns.json:
        doc = {
            "target": settings.target,
            "changed": result.claim is not None,
            "previous": result.previous.to_json(),
            "owner": result.identity.to_json(),
        }
        json.dump(doc, sys.stdout, ensure_ascii=False)
        sys.stdout.write("\n")
    elif result.claim is None:
        sys.stdout.write(f"target {settings.target}: already owned by this cluster {identity.describe()}\n")
    else:
        sys.stdout.write(
            f"target {settings.target}: now owned by cluster {identity.describe()}, "
            f"replacing {result.previous.describe()}\n"
        )
    return ExitCode.OK


def cmd_restore_plan(settings: Settings, ns: argparse.Namespace) -> ExitCode:
    from pgops.restore_plan import plan_host_restore
    from pgops.storage import open_storage

    if ns.database:
        raise ConfigError("--plan takes --databases (a list), not --database")
    source = ns.from_target or settings.target
    catalog = Catalog.load(open_storage(settings), source)
    wanted = tuple(d.strip() for d in (ns.databases or "").split(",") if d.strip())
    plan = plan_host_restore(catalog, source, databases=wanted, backup_id=ns.backup_id, before=_parse_before(ns.before))
    json.dump(plan.to_json(), sys.stdout, indent=2, ensure_ascii=False)
    sys.stdout.write("\n")
    return ExitCode.OK


def cmd_restore(settings: Settings, ns: argparse.Namespace) -> ExitCode:
    from pgops.restore import RestoreRequest, choose_backup, run_restore
    from pgops.storage import open_storage

    if ns.plan:
        return cmd_restore_plan(settings, ns)
    if not ns.database or ns.databases:
        raise ConfigError("restore needs --database NAME (--databases goes with --plan)")
    before = _parse_before(ns.before)
    req = RestoreRequest(
        database=ns.database,
        target_db=ns.target_db,
        backup_id=ns.backup_id,
        before=before,
        source_target=ns.from_target,
        replace=ns.replace,
        jobs=ns.jobs,
        spool_dir=ns.spool_dir,
        with_globals=ns.with_globals,
        overwrite_roles=ns.overwrite_roles,
        refuse_if_connected=ns.refuse_if_connected,
        check=ns.check,
        no_owner=ns.no_owner,
        no_acl=ns.no_acl,
    )
    storage = open_storage(settings)
    _, m = choose_backup(storage, settings, req)
    progress = Progress("restore", m.object("dump").size)
    try:
        report = run_restore(settings, storage, req, progress)
    finally:
        progress.close()
    if ns.json:
        out = {
            "database": report.database,
            "backup_id": report.manifest.id,
            "seconds": round(report.seconds, 3),
            "bytes": report.bytes,
            "previous_renamed_to": report.previous_renamed_to,
            "safety_backup_id": report.safety_backup.id if report.safety_backup else None,
            "warnings": list(report.warnings),
            "tables_checked": report.tables_checked,
            "sessions_terminated": report.sessions_terminated.to_json() if report.sessions_terminated else None,
            "globals": _globals_json(report),
        }
        json.dump(out, sys.stdout, ensure_ascii=False)
        sys.stdout.write("\n")
    for w in report.warnings:
        log.warning("event=restore_warning detail=%s", pglog.q(w))
    return ExitCode.OK


def _globals_json(report: Any) -> dict[str, Any] | None:
    if report.globals_restored is None:
        return None
    plan = report.globals_plan
    return {
        "id": report.globals_restored.id,
        "mode": "overwrite" if report.globals_saved else "missing",
        "created_roles": list(plan.create_roles) if plan else [],
        "created_tablespaces": list(plan.create_tablespaces) if plan else [],
        "saved_globals_id": report.globals_saved.id if report.globals_saved else None,
    }


def cmd_leftovers(settings: Settings, ns: argparse.Namespace) -> ExitCode:
    from pgops.leftovers import drop_leftovers, find_leftovers
    from pgops.pg import PgConn

    if ns.drop or ns.drop_all:
        shown = drop_leftovers(settings, ns.drop or [], everything=ns.drop_all)
    else:
        shown = find_leftovers(PgConn.from_settings(settings))
    if ns.json:
        key = "dropped" if ns.drop or ns.drop_all else "leftovers"
        json.dump({key: [x.to_json() for x in shown]}, sys.stdout, indent=2, ensure_ascii=False)
        sys.stdout.write("\n")
    elif not (ns.drop or ns.drop_all):
        for x in shown:
            sys.stdout.write(f"{x.database}  {x.kind}  {_human(x.bytes)}\n")
    return ExitCode.OK


def cmd_check(settings: Settings, ns: argparse.Namespace) -> ExitCode:
    from pgops.check import run_check

    report = run_check(settings, settings_only=ns.settings_only)
    if ns.settings_only:
        log.info("event=check_ok scope=settings steps=%s", ",".join(report.steps))
    return ExitCode.OK


COMMANDS: dict[str, Callable[[Settings, argparse.Namespace], ExitCode]] = {
    "backup": cmd_backup,
    "list": cmd_list,
    "restore": cmd_restore,
    "verify": cmd_verify,
    "status": cmd_status,
    "retention": cmd_retention,
    "check": cmd_check,
    "adopt": cmd_adopt,
    "leftovers": cmd_leftovers,
    "physical-backup": cmd_physical_backup,
    "physical-restore": cmd_physical_restore,
    "restore-point": cmd_restore_point,
}
HEARTBEAT_COMMANDS = frozenset({"backup", "verify", "retention", "physical-backup"})


def _failed(command: str, e: PgOpsError) -> int:
    log.error(
        "event=failed command=%s exit=%d error_type=%s error=%s",
        command,
        int(e.exit_code),
        type(e).__name__,
        pglog.q(e),
    )
    return int(e.exit_code)


# The jobs of one target that every member of a cluster schedules alike; with PGOPS_BACKUP_FROM=primary only the
# primary's run does them. A replica cannot restore-test (its server is read-only), and retention or verify there
# would repeat the primary's work on the same store, at the same minute.
PRIMARY_ONLY_COMMANDS = frozenset({"backup", "retention", "verify"})


def _skipped(settings: Settings, ns: argparse.Namespace) -> bool:
    """A run that is not this host's (PGOPS_BACKUP_FROM=primary on a replica). Asked before the heartbeat's
    start ping: a skip pings nothing, so it is neither a success nor a failure of the check (the leader's run
    pings it), and it leaves every per-database metric as it was; for a backup only pgops_backup_skipped_replica
    says so."""
    from pgops.backup import skipped_here

    if ns.command not in PRIMARY_ONLY_COMMANDS or not skipped_here(settings, ns.command):
        return False
    if ns.command == "backup":
        metrics.set_backup_skipped_replica(settings, True)
    return True


def _dispatch(settings: Settings, ns: argparse.Namespace) -> int:
    """Run one command with its heartbeat; every exception becomes an exit code here, and only here."""
    heartbeat = ns.command in HEARTBEAT_COMMANDS
    try:
        if _skipped(settings, ns):
            return int(ExitCode.OK)
        if heartbeat:
            metrics.ping(settings, "start")
        code = int(COMMANDS[ns.command](settings, ns))
        sys.stdout.flush()  # inside the try: a reader that went away is seen here, not at interpreter exit
    except PgOpsError as e:
        code = _failed(ns.command, e)
    except BrokenPipeError:
        # The reader of our output went away (`| head`, `| true`): quiet, like other command-line tools.
        # Point stdout at /dev/null so the interpreter's final flush does not raise again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        code = int(ExitCode.BROKEN_PIPE)
    except KeyboardInterrupt:
        code = int(ExitCode.INTERRUPTED)
    except Exception:
        log.exception("event=failed command=%s exit=%d error_type=bug", ns.command, int(ExitCode.FAILURE))
        code = int(ExitCode.FAILURE)
    if heartbeat:
        metrics.ping(settings, "" if code == 0 else str(code))
    return code


def run(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    ns = parser.parse_args(argv)
    pglog.configure()
    old: dict[signal.Signals, Any] = {}
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        old[sig] = signal.signal(sig, interrupts.on_signal)
    try:
        try:
            settings = load_settings(_flags(ns), ns.env_file)
        except PgOpsError as e:
            return _failed(ns.command, e)
        pglog.configure(settings.log_format, settings.log_level)
        return _dispatch(settings, ns)
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


def main() -> None:
    sys.exit(run())
