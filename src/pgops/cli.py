"""The `pgops` command. Thin: parse arguments, build Settings, call the library, map errors to exit codes.

Exceptions become exit codes here and nowhere else.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import time
from collections.abc import Callable, Sequence
from types import FrameType
from typing import Any

from pgops import __version__, metrics
from pgops import log as pglog
from pgops.errors import ConfigError, ExitCode, IntegrityError, Interrupted, PgOpsError
from pgops.manifest import Catalog, Manifest, iso, parse_time
from pgops.settings import Settings, load_settings

log = logging.getLogger("pgops.cli")

EXIT_CODES_HELP = "exit codes:\n" + "\n".join(f"  {c.value:<4} {c.name.lower()}" for c in ExitCode)


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover


class Progress:
    """A byte progress bar on a terminal; a log line every 10% (or minute) otherwise."""

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
                sys.stderr.write(f"\r{self.what} [{bar:<25}] {pct:3d}% {_human(done)} / {_human(self.total)}")
            else:
                sys.stderr.write(f"\r{self.what} {_human(done)}")
            sys.stderr.flush()
            return
        now = time.monotonic()
        if (pct >= 0 and pct // 10 > self._last_pct // 10) or now - self._last_log > 60:
            self._last_pct, self._last_log = pct, now
            log.info("event=progress what=%s bytes=%d percent=%s", self.what, done, pct if pct >= 0 else "unknown")

    def close(self) -> None:
        if self.tty:
            sys.stderr.write("\n")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--env-file", help="settings file (default /etc/pgops/pgops.env; PGOPS_ENV_FILE)")
    p.add_argument(
        "--storage-url",
        dest="PGOPS_STORAGE_URL",
        help="s3://bucket/prefix, gs://bucket/prefix or file:///dir",
    )
    p.add_argument("--target", dest="PGOPS_TARGET", help="name of the backed-up server (default: short host name)")
    p.add_argument("--log-format", dest="PGOPS_LOG_FORMAT", choices=["logfmt", "json"])
    p.add_argument("--log-level", dest="PGOPS_LOG_LEVEL", choices=["debug", "info", "warning", "error"])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pgops",
        description="Streaming logical backups of PostgreSQL to S3, GCS or a local directory.",
        epilog=EXIT_CODES_HELP + "\n\nSettings: env file < PGOPS_* environment < flags. See docs/configuration.md.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"pgops {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    fmt = argparse.RawDescriptionHelpFormatter

    b = sub.add_parser(
        "backup", help="dump globals and databases to storage", epilog=EXIT_CODES_HELP, formatter_class=fmt
    )
    _common(b)
    b.add_argument("--databases", dest="PGOPS_DATABASES", help="'all' or a comma-separated list")
    b.add_argument("--exclude-databases", dest="PGOPS_EXCLUDE_DATABASES")
    b.add_argument("--compression", dest="PGOPS_COMPRESSION", choices=["zstd", "gzip", "none"])
    b.add_argument("--compression-level", dest="PGOPS_COMPRESSION_LEVEL")
    b.add_argument("--compression-threads", dest="PGOPS_COMPRESSION_THREADS")
    b.add_argument("--no-globals", dest="PGOPS_GLOBALS", action="store_const", const="false")

    ls = sub.add_parser("list", help="list complete backups, newest first", epilog=EXIT_CODES_HELP, formatter_class=fmt)
    _common(ls)
    ls.add_argument("--database", help="only this database")
    ls.add_argument("--all-targets", action="store_true", help="every target under the storage prefix")
    ls.add_argument("--json", action="store_true", help="machine-readable output")

    r = sub.add_parser(
        "restore",
        help="restore a backup into a new (or, with --replace, the same) database",
        epilog=EXIT_CODES_HELP,
        formatter_class=fmt,
    )
    _common(r)
    r.add_argument("--database", required=True, help="database name as recorded in the backup")
    which = r.add_mutually_exclusive_group()
    which.add_argument("--id", dest="backup_id", help="a backup id (default: latest)")
    which.add_argument("--before", help="latest backup started at or before this ISO 8601 time")
    r.add_argument("--target-db", help="name of the restored database (default: <database>_<backup time>)")
    r.add_argument("--from-target", help="restore another server's backups (its PGOPS_TARGET)")
    r.add_argument("--replace", action="store_true", help="replace an existing database: safety backup, then swap")
    r.add_argument("--jobs", type=int, default=1, help="parallel pg_restore jobs (needs --spool-dir)")
    r.add_argument("--spool-dir", help="directory for the local copy that --jobs needs (PGOPS_SPOOL_DIR)")
    r.add_argument("--with-globals", action="store_true", help="recreate roles and tablespaces first")
    r.add_argument("--identity-file", dest="PGOPS_AGE_IDENTITY_FILE", help="age private key for encrypted backups")
    r.add_argument("--no-owner", action="store_true", help="do not restore object ownership")
    r.add_argument("--no-acl", action="store_true", help="do not restore grants")
    r.add_argument("--json", action="store_true", help="print the result as JSON on stdout")

    v = sub.add_parser(
        "verify",
        help="check backups: sha256 and a full archive parse, or a restore drill",
        epilog=EXIT_CODES_HELP,
        formatter_class=fmt,
    )
    _common(v)
    pick = v.add_mutually_exclusive_group()
    pick.add_argument("--id", dest="backup_id", help="one backup id (default: the newest of each database)")
    pick.add_argument("--all", action="store_true", help="every complete backup")
    v.add_argument("--database", help="only this database")
    v.add_argument(
        "--restore-test",
        action="store_true",
        help="restore into a scratch database on PGOPS_PG_CONNINFO's server, check it, drop it",
    )
    v.add_argument("--identity-file", dest="PGOPS_AGE_IDENTITY_FILE", help="age private key (else sha256 only)")
    v.add_argument("--pg-conninfo", dest="PGOPS_PG_CONNINFO", help="server for --restore-test")
    v.add_argument("--json", action="store_true", help="machine-readable output")

    st = sub.add_parser(
        "status",
        help="newest good backup per database; exit 11 when stale",
        epilog=EXIT_CODES_HELP,
        formatter_class=fmt,
    )
    _common(st)
    st.add_argument("--max-age", dest="PGOPS_STATUS_MAX_AGE", help="stale threshold, like 26h (PGOPS_STATUS_MAX_AGE)")
    st.add_argument("--json", action="store_true", help="machine-readable output")

    c = sub.add_parser(
        "check",
        help="validate settings and prove the store is reachable and writable",
        epilog=EXIT_CODES_HELP,
        formatter_class=fmt,
    )
    _common(c)
    return parser


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
        report = run_backup(settings, storage, progress=progress)
    except PgOpsError:
        # nothing was backed up: every database this host reported before has a failed attempt now
        metrics.update(settings, lambda state: _mark_all_failed(state, attempt))
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
    for m in report.manifests:
        log.info("event=stored database=%s id=%s key=%s", pglog.q(m.database or "@globals"), m.id, pglog.q(m.key))
    report.raise_for_failures()
    return ExitCode.OK


def cmd_verify(settings: Settings, ns: argparse.Namespace) -> ExitCode:
    from pgops import metrics
    from pgops.storage import open_storage
    from pgops.verify import run_verify

    report = run_verify(
        settings,
        open_storage(settings),
        backup_id=ns.backup_id,
        database=ns.database,
        everything=ns.all,
        restore_test=ns.restore_test,
    )

    def record(state: dict[str, dict[str, float]]) -> None:
        now = time.time()
        for r in report.results:
            fields: dict[str, float] = {"verify_last_result": 1 if r.ok else 0}
            if r.ok:
                fields["verify_last_success"] = now
            if r.ok and r.restore_seconds is not None:
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


def cmd_status(settings: Settings, ns: argparse.Namespace) -> ExitCode:
    from pgops.status import render_table, run_status
    from pgops.storage import open_storage

    report = run_status(settings, open_storage(settings))
    if ns.json:
        json.dump(report.to_json(), sys.stdout, indent=2, ensure_ascii=False)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(render_table(report, _human))
    return ExitCode.STALE if report.stale else ExitCode.OK


def _row(m: Manifest) -> list[str]:
    return [m.id, m.database or "@globals", iso(m.started_at), f"{m.duration:.1f}s", _human(m.size), m.reason]


def cmd_list(settings: Settings, ns: argparse.Namespace) -> ExitCode:
    from pgops.storage import open_storage

    catalog = Catalog.load(open_storage(settings), None if ns.all_targets else settings.target)
    found = [m for m in catalog.manifests if m.ok and (ns.database is None or m.database == ns.database)]
    if ns.json:
        out = [dict(m.to_json(), key=m.key) for m in found]
        json.dump(
            {"backups": out, "unreadable_manifests": list(catalog.unreadable)},
            sys.stdout,
            indent=2,
            ensure_ascii=False,
        )
        sys.stdout.write("\n")
        return ExitCode.OK
    rows = [["ID", "DATABASE", "STARTED (UTC)", "DURATION", "SIZE", "REASON"], *map(_row, found)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        sys.stdout.write("  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() + "\n")
    if catalog.unreadable:
        sys.stdout.write(f"({len(catalog.unreadable)} unreadable manifest(s) ignored; see the log)\n")
    return ExitCode.OK


def cmd_restore(settings: Settings, ns: argparse.Namespace) -> ExitCode:
    from pgops.restore import RestoreRequest, choose_backup, run_restore
    from pgops.storage import open_storage

    try:
        before = parse_time(ns.before) if ns.before else None
    except ValueError:
        raise ConfigError(f"--before={ns.before!r} is not a time; valid: ISO 8601 like 2026-11-20T02:00:00Z") from None
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
        }
        json.dump(out, sys.stdout, ensure_ascii=False)
        sys.stdout.write("\n")
    for w in report.warnings:
        log.warning("event=restore_warning detail=%s", pglog.q(w))
    return ExitCode.OK


def cmd_check(settings: Settings, ns: argparse.Namespace) -> ExitCode:
    from pgops.storage import open_storage

    storage = open_storage(settings)
    storage.check()
    log.info("event=check_ok storage=%s target=%s", pglog.q(storage.url), pglog.q(settings.target))
    return ExitCode.OK


COMMANDS: dict[str, Callable[[Settings, argparse.Namespace], ExitCode]] = {
    "backup": cmd_backup,
    "list": cmd_list,
    "restore": cmd_restore,
    "verify": cmd_verify,
    "status": cmd_status,
    "check": cmd_check,
}
HEARTBEAT_COMMANDS = frozenset({"backup", "verify", "retention"})


def _on_signal(signum: int, frame: FrameType | None) -> None:
    raise Interrupted(signum)


def _failed(command: str, e: PgOpsError) -> int:
    log.error(
        "event=failed command=%s exit=%d error_type=%s error=%s",
        command,
        int(e.exit_code),
        type(e).__name__,
        pglog.q(e),
    )
    return int(e.exit_code)


def _dispatch(settings: Settings, ns: argparse.Namespace) -> int:
    """Run one command; every exception becomes an exit code here, and only here."""
    try:
        return int(COMMANDS[ns.command](settings, ns))
    except PgOpsError as e:
        return _failed(ns.command, e)
    except KeyboardInterrupt:
        return int(ExitCode.INTERRUPTED)
    except Exception:
        log.exception("event=failed command=%s exit=%d error_type=bug", ns.command, int(ExitCode.FAILURE))
        return int(ExitCode.FAILURE)


def run(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    ns = parser.parse_args(argv)
    pglog.configure()
    old: dict[signal.Signals, Any] = {}
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        old[sig] = signal.signal(sig, _on_signal)
    try:
        try:
            settings = load_settings(_flags(ns), ns.env_file)
        except PgOpsError as e:
            return _failed(ns.command, e)
        pglog.configure(settings.log_format, settings.log_level)
        heartbeat = ns.command in HEARTBEAT_COMMANDS
        if heartbeat:
            metrics.ping(settings, "start")
        code = _dispatch(settings, ns)
        if heartbeat:
            metrics.ping(settings, "" if code == 0 else str(code))
        return code
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


def main() -> None:
    sys.exit(run())
