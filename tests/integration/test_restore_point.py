"""`pgops restore-point` (issue 12, "a restore point before a migration"): a named restore point that is in
the repository when the command returns, so "undo the migration" is a PITR to its name; with real
PostgreSQL and pgBackRest 2.45 (posix repository), and its refusals."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import psycopg

from pgops.errors import ExitCode
from tests.fixtures.pg import Cluster, free_port
from tests.fixtures.pgbackrest_run import PgopsAsPostgres, Repo, archive_command, pg_ctl, postgres_dir, standby_of
from tests.integration.test_pitr import _start_as_new_host, _state


def test_undo_a_migration_by_restoring_to_the_restore_point(
    pgops_pg: PgopsAsPostgres, pgbr_repo: Repo, pgbr_primary: Cluster
) -> None:
    primary = pgbr_primary
    primary.execute("postgres", "CREATE TABLE schema_version (v int)")
    primary.execute("postgres", "INSERT INTO schema_version VALUES (1)")
    assert pgops_pg.run(["physical-backup", "--type", "full"]).returncode == 0
    primary.execute("postgres", "INSERT INTO schema_version VALUES (2)")

    made = pgops_pg.run(["restore-point", "--reason", "pre-migration", "--json"])
    assert made.returncode == 0, made.stderr
    point = json.loads(made.stdout)
    assert point["name"].startswith("pgops-pre-migration-") and point["name"].endswith("Z"), point
    # Returned only once the segment holding it is in the repository (pgBackRest names it <segment>-<sha1>...).
    assert any(Path(f).name.startswith(point["wal_file"]) for f in pgbr_repo.archive_files()), point
    assert "event=restore_point_archived" in made.stderr

    # The migration, then something goes wrong: the restore point takes the database back to version 2.
    primary.execute("postgres", "INSERT INTO schema_version VALUES (3)")
    primary.execute("postgres", "DROP TABLE IF EXISTS nothing; CREATE TABLE migrated (x int)")
    primary.execute("postgres", "SELECT pg_switch_wal()")

    root = postgres_dir("pgops-undo-")
    data, port = root / "data", free_port()
    conf = pgbr_repo.host_conf(pgbr_repo.root / "undo.conf", data, root, port)
    state_dir = str(_state(pgops_pg))
    dsn = f"host={root} port={port} user=postgres dbname=postgres"
    try:
        restore = pgops_pg.run(
            ["physical-restore", "--to-name", point["name"], "--drill", "--state-dir", state_dir],
            extra={"PGOPS_PGBACKREST_CONFIG": str(conf)},
        )
        assert restore.returncode == 0, restore.stderr
        _start_as_new_host(data, port, root, archive_command(pgbr_repo, conf))
        finish = pgops_pg.run(
            ["physical-restore", "--finish", "--timeout", "120", "--state-dir", state_dir],
            extra={"PGOPS_PG_CONNINFO": dsn.removesuffix(" dbname=postgres")},
        )
        assert finish.returncode == 0, finish.stderr
        with psycopg.connect(dsn, autocommit=True) as c:
            versions = [r[0] for r in c.execute("SELECT v FROM schema_version ORDER BY v").fetchall()]
            migrated = c.execute("SELECT to_regclass('migrated')").fetchone()
        assert versions == [1, 2] and migrated == (None,)
    finally:
        pg_ctl(data, "-m", "immediate", "stop", check=False)
        shutil.rmtree(root, ignore_errors=True)


def test_a_given_name_is_used_and_bad_input_is_refused_before_anything(
    pgops_pg: PgopsAsPostgres, pgbr_primary: Cluster
) -> None:
    made = pgops_pg.run(["restore-point", "--name", "release-42", "--json"])
    assert made.returncode == 0, made.stderr
    assert json.loads(made.stdout)["name"] == "release-42"
    for args, option in (
        (["--name", "two words"], "--name"),
        (["--name", "x" * 64], "--name"),
        (["--reason", "Pre Migration"], "--reason"),
        (["--timeout", "0"], "--timeout"),
    ):
        with psycopg.connect(pgbr_primary.dsn("postgres"), autocommit=True) as c:
            (lsn_before,) = c.execute("SELECT pg_current_wal_lsn()").fetchone() or (None,)
        refused = pgops_pg.run(["restore-point", *args])
        assert refused.returncode == ExitCode.CONFIG, (args, refused.stderr)
        assert option in refused.stderr, refused.stderr
        with psycopg.connect(pgbr_primary.dsn("postgres"), autocommit=True) as c:
            (lsn_after,) = c.execute("SELECT pg_current_wal_lsn()").fetchone() or (None,)
        assert lsn_after == lsn_before, args  # no restore point, no WAL switch


def test_refused_on_a_replica_and_without_archiving(pgops_pg: PgopsAsPostgres, pgbr_primary: Cluster) -> None:
    with standby_of(pgbr_primary) as standby:
        refused = pgops_pg.run(["restore-point"], extra={"PGOPS_PG_CONNINFO": standby.conninfo})
        assert refused.returncode == ExitCode.CONFIG, refused.stderr
        assert "in recovery" in refused.stderr
    pgbr_primary.execute("postgres", "ALTER SYSTEM SET archive_mode = off")
    pgbr_primary.stop("fast")
    pgbr_primary.start()
    refused = pgops_pg.run(["restore-point"])
    assert refused.returncode == ExitCode.CONFIG, refused.stderr
    assert "archive_mode is off" in refused.stderr


def test_a_segment_not_archived_in_time_is_a_failure_naming_the_archiver(
    pgops_pg: PgopsAsPostgres, pgbr_primary: Cluster
) -> None:
    """The archive is broken for real (archive_command fails): the restore point exists but is unusable, so the
    command must not report success."""
    pgbr_primary.execute("postgres", "ALTER SYSTEM SET archive_command = 'false'")
    pgbr_primary.execute("postgres", "SELECT pg_reload_conf()")
    failed = pgops_pg.run(["restore-point", "--timeout", "3"])
    assert failed.returncode == ExitCode.POSTGRES, failed.stderr
    assert "was not archived within --timeout=3s" in failed.stderr
    assert "the archiver failed" in failed.stderr
