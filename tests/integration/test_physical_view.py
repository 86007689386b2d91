"""The physical half of the one view (status, list, metrics), against a real PostgreSQL archiving through a
real pgBackRest 2.45.

Each test gets its own cluster and stanza (tests/fixtures/pgbackrest.py): archive_mode on, archive_timeout
1 s, a posix repository. pgops runs as a separate process, as cron runs it. The archiving faults are in
test_physical_archive.py.
"""

from __future__ import annotations

import json
import subprocess
import time

from pgops.errors import ExitCode
from tests.fixtures.engine import run_pgops
from tests.fixtures.pgbackrest import Pgbackrest, chown_postgres, pgops_status, read_metrics, wait_for


def test_after_a_full_backup_status_list_and_metrics_show_it(
    pgbackrest: Pgbackrest, logical_backup: dict[str, str]
) -> None:
    env = logical_backup
    code, doc, _ = pgops_status(env)
    assert code == ExitCode.STALE
    assert "no full physical backup in stanza main" in doc["physical"]["problems"]

    full = pgbackrest.backup("full")
    segment = pgbackrest.switch_archived()
    code, doc, human = pgops_status(env)
    phys = doc["physical"]
    assert code == ExitCode.OK, phys["problems"]
    assert phys["newest"]["full"]["label"] == full["label"]
    assert phys["newest"]["full"]["wal_stop"] == full["archive"]["stop"]
    assert phys["archiver"]["failing"] is False and phys["archiver"]["last_archived_wal"] >= segment
    assert phys["archiver"]["rpo_bytes"] is not None and phys["archiver"]["rpo_seconds"] is not None
    assert f"newest full  {full['label']}" in human and "WAL archive  ok" in human and "current RPO" in human
    # the logical rows are still there, unchanged
    assert human.startswith("DATABASE  ")

    listed = run_pgops(["list"], env, check=True).stdout
    logical_rows = [line for line in listed.splitlines() if line.startswith(("ID ", "20"))]
    assert len(logical_rows) == 3  # the header, postgres and @globals
    physical_row = next(line for line in listed.splitlines() if full["label"] in line)
    assert physical_row.startswith("PHYSICAL  full") and full["archive"]["start"] in physical_row
    doc = json.loads(run_pgops(["list", "--json"], env, check=True).stdout)
    assert [b["label"] for b in doc["physical"]["backups"]] == [full["label"]]
    assert {b["database"] for b in doc["backups"]} == {"postgres", None}

    m = read_metrics(env)
    assert m[("pgops_physical_backup_newest_timestamp_seconds", (("type", "full"),))] == full["timestamp"]["stop"]
    assert m[("pgops_physical_backup_newest_size_bytes", (("type", "full"),))] == full["info"]["repository"]["delta"]
    assert ("pgops_physical_backup_newest_timestamp_seconds", (("type", "diff"),)) not in m
    assert m[("pgops_wal_archive_failing", ())] == 0
    assert m[("pgops_physical_ok", ())] == 1
    assert m[("pgops_wal_archived_count", ())] >= 1
    assert m[("pgops_rpo_seconds", ())] < 60
    assert m[("pgops_server_in_recovery", ())] == 0
    assert m[("pgops_wal_dropped", ())] == 0
    # pgops ran as root here: its `pgbackrest info` left no file that the postgres user could not write
    assert not [p for p in pgbackrest.root.rglob("*") if p.stat().st_uid == 0 and p.parent.name in ("lock", "log")]


def test_stale_thresholds_and_unreadable_stanza(pgbackrest: Pgbackrest, logical_backup: dict[str, str]) -> None:
    env = logical_backup
    full = pgbackrest.backup("full")
    diff = pgbackrest.backup("diff")
    pgbackrest.switch_archived()
    code, doc, _ = pgops_status(env)
    assert code == ExitCode.OK, doc["physical"]["problems"]
    assert doc["physical"]["newest"]["diff"]["prior"] == full["label"]
    time.sleep(1.1)

    code, doc, human = pgops_status(env, PGOPS_PHYSICAL_MAX_AGE="1s")
    assert code == ExitCode.STALE
    [problem] = doc["physical"]["problems"]
    assert problem.startswith(f"newest physical backup {diff['label']} is ")
    assert problem.endswith("s old, older than PGOPS_PHYSICAL_MAX_AGE=1s")
    code, doc, _ = pgops_status(env, PGOPS_PHYSICAL_FULL_MAX_AGE="1s")
    assert code == ExitCode.STALE
    assert [p.split(" is ")[0] for p in doc["physical"]["problems"]] == [f"newest full physical backup {full['label']}"]

    # WAL waiting to be archived for more than 1 s passes an RPO threshold of 1 s; 0 turns the check off
    pgbackrest.set_archive_command("/bin/false")
    pgbackrest.switch_wal()
    wait_for("archive_command to fail", lambda: pgbackrest.archiver()["failing"])
    time.sleep(1.5)
    code, doc, _ = pgops_status(env, PGOPS_RPO_MAX_SECONDS="1")
    assert code == ExitCode.STALE
    assert any("more than PGOPS_RPO_MAX_SECONDS=1" in p for p in doc["physical"]["problems"])
    assert "archive_command does not call pgbackrest" in doc["physical"]["problems"]
    assert doc["physical"]["archiver"]["rpo_bytes"] >= 16 * 1024 * 1024
    code, doc, _ = pgops_status(env, PGOPS_RPO_MAX_SECONDS="0")
    assert not any("RPO" in p for p in doc["physical"]["problems"]) and code == ExitCode.STALE  # still failing

    # an RPO nobody can measure is not green
    code, doc, human = pgops_status(env, PGOPS_PG_CONNINFO=f"host={pgbackrest.root} port=1 user=postgres")
    assert code == ExitCode.STALE
    assert doc["physical"]["archiver"] is None
    assert "STALE: the server is not reachable, so the current RPO is unknown: cannot connect" in human

    code, doc, human = pgops_status(env, PGOPS_PGBACKREST_STANZA="nosuchstanza")
    assert code == ExitCode.STALE
    assert doc["physical"]["error"].startswith("pgbackrest info: stanza nosuchstanza has status 1")
    assert "pgBackRest cannot be read" in human
    missing = str(pgbackrest.root / "missing.conf")
    code, doc, _ = pgops_status(env, PGOPS_PGBACKREST_CONFIG=missing)
    assert code == ExitCode.STALE
    assert f"PGOPS_PGBACKREST_CONFIG={missing}" in doc["physical"]["error"]
    listed = run_pgops(["list"], {**env, "PGOPS_PGBACKREST_CONFIG": missing}, check=True).stdout
    assert "physical backups (pgBackRest stanza main): cannot be read: pgbackrest info exited 55" in listed
    bad = run_pgops(["status"], {**env, "PGOPS_PGBACKREST_STANZA": "-bad/name"})
    assert bad.returncode == ExitCode.CONFIG and "PGOPS_PGBACKREST_STANZA='-bad/name'" in bad.stderr


def test_without_a_stanza_status_and_list_are_as_before(pgbackrest: Pgbackrest, logical_backup: dict[str, str]) -> None:
    env = {k: v for k, v in logical_backup.items() if not k.startswith("PGOPS_PGBACKREST")}
    pgbackrest.backup("full")
    code, doc, human = pgops_status(env)
    assert code == ExitCode.OK and "physical" not in doc and "physical" not in human
    listed = run_pgops(["list", "--json"], env, check=True).stdout
    assert "physical" not in json.loads(listed)
    assert not [k for k in read_metrics(env) if "physical" in k[0] or "rpo" in k[0]]


def test_a_replica_skips_the_archive_checks_but_counts_repository_backups(
    pgbackrest: Pgbackrest, logical_backup: dict[str, str]
) -> None:
    from tests.fixtures.pg import Cluster, free_port

    full = pgbackrest.backup("full")
    replica = Cluster(pgbackrest.root / "replica", free_port())
    replica.root.mkdir()
    chown_postgres(replica.root)
    subprocess.run(
        [
            "runuser", "-u", "postgres", "--",
            str(replica.bindir / "pg_basebackup"), "-D", str(replica.data), "-R", "-X", "stream",
            "-d", pgbackrest.cluster.dsn("postgres"),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    with (replica.data / "postgresql.auto.conf").open("a") as f:
        f.write(f"port = {replica.port}\nunix_socket_directories = '{replica.sockdir}'\n")
    replica.start()
    try:
        env = {**logical_backup, **replica.env()}
        code, doc, human = pgops_status(env)
        assert code == ExitCode.OK, doc["physical"]["problems"]
        assert doc["physical"]["archiver"]["in_recovery"] is True
        assert doc["physical"]["newest"]["full"]["label"] == full["label"]
        assert "server in recovery (a replica): WAL archiving and RPO checks do not apply here" in human
        m = read_metrics(env)
        assert m[("pgops_server_in_recovery", ())] == 1 and ("pgops_rpo_seconds", ()) not in m
        # the scheduled refresh on a replica: quiet, exit 0, the same gauges (no RPO: it does not apply here)
        refreshed = run_pgops(["status", "--metrics-only"], env)
        assert (refreshed.returncode, refreshed.stdout, refreshed.stderr) == (ExitCode.OK, "", "")
        m = read_metrics(env)
        assert m[("pgops_server_in_recovery", ())] == 1 and ("pgops_rpo_seconds", ()) not in m
        assert m[("pgops_physical_ok", ())] == 1

        time.sleep(1.1)
        code, doc, _ = pgops_status(env, PGOPS_PHYSICAL_MAX_AGE="1s")
        assert code == ExitCode.STALE and "PGOPS_PHYSICAL_MAX_AGE" in doc["physical"]["problems"][0]
    finally:
        replica.stop("immediate")
