"""The `pgops` command line: subcommands, flags and the exit-code epilogue. Flags named like a setting
(dest="PGOPS_...") override the env file and the environment."""

from __future__ import annotations

import argparse
import re
from typing import Any

from pgops import __version__
from pgops.errors import ExitCode

REASON_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
EXIT_CODES_HELP = "exit codes:\n" + "\n".join(f"  {c.value:<4} {c.name.lower()}" for c in ExitCode)


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
    b.add_argument(
        "--reason",
        default="scheduled",
        type=_reason,
        help="recorded in the manifest and shown by list, e.g. pre-migration (default: scheduled)",
    )
    b.add_argument("--json", action="store_true", help="print the stored backups as JSON on stdout")
    b.add_argument(
        "--allow-clock-behind",
        action="store_true",
        help="back up even though this host's clock is before the newest good backup's start (it will sort oldest)",
    )

    ls = sub.add_parser("list", help="list complete backups, newest first", epilog=EXIT_CODES_HELP, formatter_class=fmt)
    _common(ls)
    ls.add_argument("--database", help="only this database")
    ls.add_argument("--all-targets", action="store_true", help="every target under the storage prefix")
    ls.add_argument("--before", help="only backups started at or before this ISO 8601 time")
    ls.add_argument("--all-states", action="store_true", help="also failed, incomplete, orphan, ... backups")
    ls.add_argument("--json", action="store_true", help="machine-readable output")

    r = sub.add_parser(
        "restore",
        help="restore a backup into a new (or, with --replace, the same) database",
        epilog=EXIT_CODES_HELP,
        formatter_class=fmt,
    )
    _common(r)
    r.add_argument("--database", help="database name as recorded in the backup (required unless --plan)")
    r.add_argument(
        "--plan",
        action="store_true",
        help="print (JSON) which backup of which database a whole-host recovery restores, change nothing; "
        "with --databases, --id or --before (playbooks/restore.yml uses it)",
    )
    r.add_argument("--databases", help="with --plan: a comma-separated list (default: every database, see docs)")
    which = r.add_mutually_exclusive_group()
    which.add_argument("--id", dest="backup_id", help="a backup id (default: latest)")
    which.add_argument("--before", help="latest backup started at or before this ISO 8601 time")
    r.add_argument("--target-db", help="name of the restored database (default: <database>_<backup time>)")
    r.add_argument("--from-target", help="restore another server's backups (its PGOPS_TARGET)")
    r.add_argument(
        "--replace",
        action="store_true",
        help="replace an existing database: safety backup, then swap; sessions on the old database are terminated "
        "(logged with their users and applications, and in --json)",
    )
    r.add_argument(
        "--refuse-if-connected",
        action="store_true",
        help="with --replace: refuse (exit 6, nothing changed) instead of terminating sessions on the old database",
    )
    r.add_argument("--jobs", type=int, default=1, help="parallel pg_restore jobs (needs --spool-dir)")
    r.add_argument("--spool-dir", help="directory for the local copy that --jobs needs (PGOPS_SPOOL_DIR)")
    r.add_argument(
        "--with-globals",
        action="store_true",
        help="first create the roles and tablespaces of the backup that this server lacks, with their memberships; "
        "existing roles are left alone",
    )
    r.add_argument(
        "--overwrite-roles",
        action="store_true",
        help="with --with-globals: also give existing roles the backup's attributes and passwords "
        "(the current globals are saved first, as a safety backup)",
    )
    r.add_argument(
        "--check",
        action="store_true",
        help="before switching it in, check every table of the backup exists with no fewer rows than its estimates",
    )
    r.add_argument("--identity-file", dest="PGOPS_AGE_IDENTITY_FILE", help="age private key for encrypted backups")
    r.add_argument("--no-owner", action="store_true", help="do not restore object ownership")
    r.add_argument("--no-acl", action="store_true", help="do not restore grants")
    r.add_argument("--json", action="store_true", help="print the result as JSON on stdout")

    c = sub.add_parser(
        "check",
        help="prove a backup could run: settings, age keys, store writable, server and pg_dump, directories",
        epilog=EXIT_CODES_HELP,
        formatter_class=fmt,
    )
    _common(c)
    c.add_argument(
        "--settings-only",
        action="store_true",
        help="only parse and validate the settings and key files; no network (for validating a new env file)",
    )
    _add_server_admin(sub, fmt)
    _add_observability(sub, fmt)
    _add_physical(sub, fmt)
    return parser


def _reason(value: str) -> str:
    if not REASON_RE.fullmatch(value):
        raise argparse.ArgumentTypeError(
            f"{value!r} is not a valid reason; use 1-64 of a-z, 0-9, '.', '_', '-', starting with a letter or digit"
        )
    return value


def _add_server_admin(sub: Any, fmt: type[argparse.HelpFormatter]) -> None:
    """adopt (the target changes hands) and leftovers (databases pgops left on the server)."""
    lo = sub.add_parser(
        "leftovers",
        help="databases pgops left on the server (NAME_pgops_old_<time> after restore --replace, scratch "
        "databases of killed restores); not in PGOPS_DATABASES=all; --drop removes them",
        epilog=EXIT_CODES_HELP,
        formatter_class=fmt,
    )
    _common(lo)
    drop = lo.add_mutually_exclusive_group()
    drop.add_argument("--drop", action="append", metavar="NAME", help="drop this leftover (repeatable)")
    drop.add_argument("--drop-all", action="store_true", help="drop every leftover listed")
    lo.add_argument("--json", action="store_true", help="machine-readable output")
    a = sub.add_parser(
        "adopt",
        help="this server's cluster replaced the target's owner (DR rebuild, major upgrade): record it once",
        epilog=EXIT_CODES_HELP,
        formatter_class=fmt,
    )
    _common(a)
    a.add_argument(
        "--replaces",
        required=True,
        metavar="SYSID",
        help="system identifier of the cluster that owns the target now (`pgops list` shows it)",
    )
    a.add_argument("--reason", default="replaced", type=_reason, help="recorded in the claim (default: replaced)")
    a.add_argument("--json", action="store_true", help="machine-readable output")


def _add_observability(sub: Any, fmt: type[argparse.HelpFormatter]) -> None:
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
    v.add_argument(
        "--identity-file",
        dest="PGOPS_AGE_IDENTITY_FILE",
        help="age private key (without it: encrypted backups get sha256 only, and --restore-test fails)",
    )
    v.add_argument("--pg-conninfo", dest="PGOPS_PG_CONNINFO", help="server for --restore-test")
    v.add_argument("--json", action="store_true", help="machine-readable output")

    rt = sub.add_parser(
        "retention",
        help="delete what the keep rules do not keep (data first, manifest last); --dry-run shows it",
        epilog=EXIT_CODES_HELP,
        formatter_class=fmt,
    )
    _common(rt)
    rt.add_argument("--dry-run", action="store_true", help="print exactly what a real run would delete, and why")
    rt.add_argument("--json", action="store_true", help="machine-readable output")

    st = sub.add_parser(
        "status",
        help="newest good backup per database; exit 11 when stale",
        epilog=EXIT_CODES_HELP,
        formatter_class=fmt,
    )
    _common(st)
    st.add_argument("--max-age", dest="PGOPS_STATUS_MAX_AGE", help="stale threshold, like 26h (PGOPS_STATUS_MAX_AGE)")
    st.add_argument("--json", action="store_true", help="machine-readable output")
    st.add_argument(
        "--metrics-only",
        action="store_true",
        help="only refresh the physical gauges of PGOPS_PGBACKREST_STANZA (pgBackRest info, pg_stat_archiver, the "
        "current RPO) in PGOPS_METRICS_DIR: no logical checks, no output, exit 0 stale or not (the gauges say it); "
        "for a schedule every minute",
    )


def _physical_common(p: argparse.ArgumentParser) -> None:
    _common(p)
    p.add_argument("--stanza", dest="PGOPS_PGBACKREST_STANZA", help="pgBackRest stanza (PGOPS_PGBACKREST_STANZA)")
    p.add_argument(
        "--pgbackrest-config", dest="PGOPS_PGBACKREST_CONFIG", help="pgBackRest config file (PGOPS_PGBACKREST_CONFIG)"
    )


def _add_physical(sub: Any, fmt: type[argparse.HelpFormatter]) -> None:
    """physical-backup and physical-restore: pgBackRest, driven with pgops' checks, locks, logs and metrics."""
    pb = sub.add_parser(
        "physical-backup",
        help="a pgBackRest backup of this server; on a server in recovery: one log line, exit 0",
        epilog=EXIT_CODES_HELP,
        formatter_class=fmt,
    )
    _physical_common(pb)
    pb.add_argument("--type", required=True, choices=["full", "diff", "incr"], help="pgBackRest backup type")
    pb.add_argument("--pg-conninfo", dest="PGOPS_PG_CONNINFO", help="server to check for recovery (local socket)")
    pb.add_argument("--json", action="store_true", help="print the result as JSON on stdout")

    pr = sub.add_parser(
        "physical-restore",
        help="point-in-time restore with pgBackRest into an empty (or, with --replace, a stopped) data directory; "
        "then start PostgreSQL and run --finish",
        epilog=EXIT_CODES_HELP,
        formatter_class=fmt,
    )
    _physical_common(pr)
    pr.add_argument(
        "--to",
        metavar="{latest,immediate}",
        help="latest (default: the end of the archived WAL) or immediate (the end of the backup)",
    )
    pr.add_argument("--to-time", metavar="TIME", help="ISO 8601 time with a zone: every transaction committed up to it")
    pr.add_argument("--to-lsn", metavar="LSN", help="a WAL position like 0/3000060")
    pr.add_argument("--to-name", metavar="NAME", help="a restore point made with pg_create_restore_point")
    pr.add_argument(
        "--set", dest="backup_set", metavar="LABEL", help="backup label to restore from (default: pgBackRest chooses)"
    )
    pr.add_argument(
        "--pgdata", metavar="DIR", help="data directory (default: pg1-path of the stanza in the pgBackRest config)"
    )
    pr.add_argument(
        "--replace",
        action="store_true",
        help="restore over a non-empty data directory of a stopped server (pgBackRest --delta)",
    )
    pr.add_argument(
        "--drill",
        action="store_true",
        help="a test restore: the restored server never archives into the repository (--archive-mode=off)",
    )
    pr.add_argument(
        "--state-dir",
        metavar="DIR",
        help="where the restore's state file lives (default /var/lib/pgops/state, writable by postgres)",
    )
    pr.add_argument(
        "--finish",
        action="store_true",
        help="after the server was started: wait until it is promoted, check it, record the RTO",
    )
    pr.add_argument(
        "--timeout", type=float, default=600.0, metavar="SECONDS", help="with --finish: seconds to wait (default 600)"
    )
    pr.add_argument("--pg-conninfo", dest="PGOPS_PG_CONNINFO", help="with --finish: the restored server")
    pr.add_argument("--json", action="store_true", help="print the result as JSON on stdout")

    rp = sub.add_parser(
        "restore-point",
        help="a named restore point on the primary, archived before it returns (undo a migration by PITR to it)",
        epilog=EXIT_CODES_HELP,
        formatter_class=fmt,
    )
    _common(rp)
    rp.add_argument("--name", help="restore point name (default pgops-<reason>-<UTC time>); 1-63 of A-Za-z0-9._:-")
    rp.add_argument(
        "--reason", type=_reason, default="pre-migration", help="goes into the default name (default pre-migration)"
    )
    rp.add_argument(
        "--timeout", type=float, default=120.0, metavar="SECONDS", help="seconds to wait for the archive (default 120)"
    )
    rp.add_argument("--pg-conninfo", dest="PGOPS_PG_CONNINFO", help="the primary (local socket)")
    rp.add_argument("--json", action="store_true", help="print the restore point as JSON on stdout")
