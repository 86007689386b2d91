"""Renders docs/configuration.md from SPECS and ExitCode, so the reference can never drift from the code.

Regenerate with: .venv/bin/python -m pgops.reference > docs/configuration.md
"""

from __future__ import annotations

from pgops.errors import ExitCode
from pgops.settings import DEFAULT_ENV_FILE, SPECS

EXIT_MEANINGS = {
    ExitCode.OK: "Everything asked for was done.",
    ExitCode.FAILURE: "An unexpected internal error (a bug); the log has a traceback.",
    ExitCode.CONFIG: "A setting or argument is unknown or invalid, the target belongs to another cluster "
    "(`pgops adopt`), this host's clock is behind the newest backup, or `verify --restore-test` of encrypted "
    "backups has no `PGOPS_AGE_IDENTITY_FILE`. Nothing was done.",
    ExitCode.STORAGE: "The object store failed or refused (credentials, bucket, endpoint, existing key, full spool).",
    ExitCode.INTEGRITY: "Stored bytes or a dump did not check out (checksum, size, truncated or empty dump).",
    ExitCode.POSTGRES: "pg_dump, pg_restore, psql, pgBackRest or the server failed (including a refused connection, "
    "and a restored server not promoted within `physical-restore --finish --timeout`).",
    ExitCode.REFUSED: "The command would change an existing database without the flag it needs (--replace, "
    "--with-globals), --refuse-if-connected found sessions on the database to replace, or `physical-restore` found a "
    "server running on the data directory, or the directory not empty without --replace. Nothing changed.",
    ExitCode.LOCK_HELD: "Another pgops run holds the lock for this target. Nothing was done.",
    ExitCode.PARTIAL: "Some databases were backed up and some failed (one that does not allow connections "
    "fails too); see the log lines with event=backup_failed.",
    ExitCode.NOT_FOUND: "No complete backup matched the selection (database, --id, --before).",
    ExitCode.LOCKED_OBJECTS: "Retention could not delete objects held by Object Lock or a retention policy.",
    ExitCode.STALE: "status: the newest good backup is older than the threshold; with PGOPS_PGBACKREST_STANZA also "
    "a physical problem (RPO over PGOPS_RPO_MAX_SECONDS, archiving failing, WAL dropped, physical backup too old, "
    "pgBackRest or the server unreadable).",
    ExitCode.INTERRUPTED: "Stopped by SIGINT. The upload was aborted and child processes reaped.",
    ExitCode.BROKEN_PIPE: "Standard output was closed by its reader (`pgops list --json | head`); nothing else "
    "went wrong. The shell's usual status for it.",
    ExitCode.TERMINATED: "Stopped by SIGTERM. The upload was aborted and child processes reaped.",
}


PHYSICAL_COMMANDS = [
    "",
    "## Physical backups and point-in-time restore (pgBackRest)",
    "",
    "Both run as the `postgres` OS user with `--env-file /etc/pgops/pgops.env`, and need",
    "`PGOPS_PGBACKREST_STANZA` (exit 2 without it). pgBackRest's console output becomes log lines",
    "(`event=pgbackrest`); a pgBackRest failure exits 5 with its `ERROR` lines. No secret is ever passed on",
    "pgBackRest's command line: the repository keys stay in its config file.",
    "",
    "- `pgops physical-backup --type full|diff|incr`: on a server in recovery (a standby) it logs one line",
    "  (`event=physical_backup_skipped reason=in_recovery`) and exits 0. Otherwise it runs `pgbackrest backup`",
    "  under the lock `pgops-pgbackrest@<stanza>.lock` in `PGOPS_LOCK_DIR` (a second run exits 7), and writes",
    '  the `pgops_physical_backup_*` metrics with `database="@pgbackrest/<type>"`.',
    "- `pgops physical-restore [--to latest|immediate | --to-time T | --to-lsn X/Y | --to-name NAME] [--set LABEL]",
    "  [--pgdata DIR] [--replace] [--drill] [--state-dir DIR]`: `pgbackrest restore` with",
    "  `--target-action=promote` (`latest` recovers to the end of the archived WAL and promotes by itself). The",
    "  time needs a zone (`2026-12-03T14:05:00Z`). `--pgdata` defaults to the stanza's `pg1-path`. It refuses",
    "  (exit 6, nothing changed) when a server runs on the data directory, and when the directory is not empty",
    "  unless `--replace` (pgBackRest `--delta`; a stale `postmaster.pid` of a dead server is removed).",
    "  `--drill` passes `--archive-mode=off`: the restored server never archives into the repository. It",
    "  records the start time, target and backup set in `<state-dir>/physical-restore.json` (default",
    "  `/var/lib/pgops/state`, which the postgres user must be able to write).",
    "- `pgops physical-restore --finish [--timeout 600]`, after PostgreSQL was started on the restored",
    "  directory: waits until `PGOPS_PG_CONNINFO` accepts connections and is promoted (exit 5 on timeout, the",
    "  state file is kept), checks every database answers, logs `event=physical_restore_done rto_seconds=...`,",
    "  writes `pgops_physical_restore_last_rto_seconds` and `..._last_success_timestamp_seconds` with",
    '  `database="@pgbackrest/restore"` or `"@pgbackrest/drill"`, and removes the state file.',
    "- `pgops restore-point [--name NAME] [--reason pre-migration] [--timeout 120]`, on the primary: creates a",
    "  named restore point (`pg_create_restore_point`), switches to a new WAL segment and waits until the",
    "  server has archived the segment that holds it, so `physical-restore --to-name NAME` can reach it at once.",
    "  The name defaults to `pgops-<reason>-<UTC time>` (recovery stops at the first restore point of a name, so",
    "  names must be unique). It refuses (exit 2, nothing done) a replica or a server with `archive_mode` off, and",
    "  exits 5 when the segment is not archived within the timeout (the restore point exists but is not usable",
    "  yet). `--json` prints the name, LSN, server time and WAL file. `playbooks/backup.yml` makes one.",
]


def render() -> str:
    lines = [
        "# pgops configuration reference",
        "",
        "<!-- Generated by `python -m pgops.reference`; a test fails if this file is out of date. -->",
        "",
        f"Settings come from three places; later ones win: the env file (`{DEFAULT_ENV_FILE}`, or `--env-file`,",
        "or `PGOPS_ENV_FILE`), then `PGOPS_*` variables in the environment, then command-line flags.",
        "Every value is checked before any work starts. An unknown `PGOPS_*` key or a bad value stops the run",
        "with exit code 2 and one line that names the key and what would be valid.",
        "",
        "Secrets (marked below) never appear in logs, `repr`, error text or child-process arguments. The",
        "PostgreSQL password reaches libpq and pg_dump only through the environment (`PGPASSWORD`).",
        "",
        "Example env file (mode 0600, owned by the user that runs the backups):",
        "",
        "```sh",
        "PGOPS_STORAGE_URL=s3://acme-db-backups/prod",
        "PGOPS_S3_REGION=eu-central-1",
        "PGOPS_S3_ACCESS_KEY_ID=AKIA...",
        "PGOPS_S3_SECRET_ACCESS_KEY=...",
        "PGOPS_DATABASES=all",
        "PGOPS_COMPRESSION=zstd",
        "```",
        "",
        "The env file is read strictly. A line that is not `KEY=VALUE`, a `#` comment or blank, binary content,",
        "or a directory given as `--env-file` stops the run with exit code 2 and one line naming the file and",
        "the line (never the line's text, which may hold a secret). A file that holds a secret (marked below)",
        "and that group or others may access (any bit of mode 0077) is refused the same way, as ssh refuses a",
        "private key and libpq a `~/.pgpass` that others can read: `chmod 600` it. A file without secrets may",
        "be readable by others.",
        "",
        "## Settings",
        "",
        "| Key | Default | Example | Description |",
        "|---|---|---|---|",
    ]
    for s in SPECS:
        default = "(unset)" if s.default in (None, "") else f"`{s.default}`"
        secret = " **Secret.**" if s.secret else ""
        lines.append(f"| `{s.env}` | {default} | `{s.example}` | {s.help}{secret} |")
    lines += [
        "",
        "## Exit codes",
        "",
        "Every `pgops` command exits with one of these (also listed by `pgops --help`):",
        "",
        "| Code | Name | Meaning |",
        "|---|---|---|",
    ]
    lines += [f"| {c.value} | `{c.name.lower()}` | {EXIT_MEANINGS[c]} |" for c in ExitCode]
    lines += PHYSICAL_COMMANDS
    lines += [
        "",
        "## Logs",
        "",
        "One line per event on stderr, `key=value` (`PGOPS_LOG_FORMAT=logfmt`, the default) or JSON",
        "(`PGOPS_LOG_FORMAT=json`). Every line has `ts`, `level` and `event`. For example:",
        "",
        "```",
        "ts=2026-11-22T02:00:04.120Z level=info event=backup_done database=app id=20261122T020000Z-3f2a1c "
        "bytes=151234567 raw_bytes=1360000000 seconds=8.41 key=pg-prod-1/app/20261122T020000Z-3f2a1c/dump.pgc.zst",
        "```",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    print(render(), end="")
