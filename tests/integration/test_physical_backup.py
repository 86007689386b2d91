"""`pgops physical-backup`: real pgBackRest 2.45, a real primary archiving into a posix repository, and a real
streaming standby; pgops runs as the postgres OS user, like its cron entry."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from pgops.errors import ExitCode
from tests.fixtures.engine import run_pgops
from tests.fixtures.pg import Cluster
from tests.fixtures.pgbackrest_run import PgopsAsPostgres, Repo, pgops_env, standby_of


def _events(stderr: str, event: str) -> list[str]:
    return [line for line in stderr.splitlines() if f"event={event}" in line]


def _backup_running(repo: Repo) -> bool:
    """pgBackRest's backup process for this repository (not the archive-push processes of archive_command)."""
    pattern = f"config={repo.conf} .*--type=full backup$"
    found = subprocess.run(["pgrep", "-f", "--", pattern], capture_output=True, check=False)
    return found.returncode == 0


def test_full_then_diff_are_in_the_repository_with_metrics(pgops_pg: PgopsAsPostgres, pgbr_repo: Repo) -> None:
    full = pgops_pg.run(["physical-backup", "--type", "full"])
    assert full.returncode == 0, full.stderr
    assert _events(full.stderr, "pgbackrest"), "pgBackRest's console output is relayed as log lines"
    assert "backup command end: completed successfully" in full.stderr
    diff = pgops_pg.run(["physical-backup", "--type", "diff", "--json"])
    assert diff.returncode == 0, diff.stderr
    backups = pgbr_repo.backups()
    assert [b["type"] for b in backups] == ["full", "diff"]
    assert '"label": "' + backups[1]["label"] + '"' in diff.stdout
    (done,) = _events(diff.stderr, "physical_backup_done")
    assert f"label={backups[1]['label']}" in done

    prom = (Path(pgops_pg.env["PGOPS_METRICS_DIR"]) / "pgops.prom").read_text()
    for kind in ("full", "diff"):
        labels = f'database="@pgbackrest/{kind}",target="testhost"'
        assert f"pgops_physical_backup_last_attempt_success{{{labels}}} 1.0" in prom
        assert f"pgops_physical_backup_last_success_timestamp_seconds{{{labels}}}" in prom
        assert f"pgops_physical_backup_duration_seconds{{{labels}}}" in prom


def test_on_a_standby_it_skips_with_one_line_and_runs_nothing(
    pgops_pg: PgopsAsPostgres, pgbr_repo: Repo, pgbr_primary: Cluster
) -> None:
    with standby_of(pgbr_primary) as standby:
        assert standby.execute("postgres", "SELECT pg_is_in_recovery()") == [(True,)]
        env = pgops_env(pgbr_repo, standby)
        result = PgopsAsPostgres(pgops_pg.runtime, env).run(["physical-backup", "--type", "full"])
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert "event=physical_backup_skipped" in lines[0] and "reason=in_recovery" in lines[0]
    assert pgbr_repo.backups() == []
    assert not (Path(env["PGOPS_METRICS_DIR"]) / "pgops.prom").exists(), "a skip is neither success nor failure"


def test_without_a_stanza_it_fails_clearly(pgops_pg: PgopsAsPostgres, pgbr_repo: Repo) -> None:
    result = pgops_pg.run(["physical-backup", "--type", "full"], extra={"PGOPS_PGBACKREST_STANZA": ""})
    assert result.returncode == ExitCode.CONFIG, result.stderr
    (line,) = _events(result.stderr, "failed")
    assert "PGOPS_PGBACKREST_STANZA is not set" in line
    assert pgbr_repo.backups() == []


def test_a_pgbackrest_failure_is_exit_5_with_its_error(
    pgops_pg: PgopsAsPostgres, pgbr_repo: Repo, pgbr_primary: Cluster
) -> None:
    # a stanza in the config file that was never created in the repository
    with pgbr_repo.conf.open("a") as f:
        f.write(f"\n[never-created]\npg1-path={pgbr_primary.data}\npg1-socket-path={pgbr_primary.sockdir}\n")
        f.write(f"pg1-port={pgbr_primary.port}\n")
    result = pgops_pg.run(["physical-backup", "--type", "full"], extra={"PGOPS_PGBACKREST_STANZA": "never-created"})
    assert result.returncode == ExitCode.POSTGRES, result.stderr
    relayed = [line for line in _events(result.stderr, "pgbackrest") if "level=error" in line]
    assert relayed, f"pgBackRest's ERROR line is relayed at level error: {result.stderr}"
    (line,) = _events(result.stderr, "failed")
    assert "pgbackrest backup exited" in line and "never-created" in line, line
    prom = (Path(pgops_pg.env["PGOPS_METRICS_DIR"]) / "pgops.prom").read_text()
    assert 'pgops_physical_backup_last_attempt_success{database="@pgbackrest/full",target="testhost"} 0.0' in prom


def test_two_at_once_the_second_gets_the_lock_code(pgops_pg: PgopsAsPostgres, pgbr_repo: Repo) -> None:
    lock = Path(pgops_pg.env["PGOPS_LOCK_DIR"]) / "pgops-pgbackrest@pgops-test.lock"
    first = pgops_pg.popen(["physical-backup", "--type", "full"])
    try:
        deadline = time.monotonic() + 30
        while not (lock.exists() and lock.read_text().strip()) and time.monotonic() < deadline:
            time.sleep(0.02)
        second = pgops_pg.run(["physical-backup", "--type", "diff"])
        assert second.returncode == ExitCode.LOCK_HELD, second.stderr
        assert "holds the lock" in second.stderr
    finally:
        _, err = first.communicate(timeout=120)
    assert first.returncode == 0, err
    assert [b["type"] for b in pgbr_repo.backups()] == ["full"]


def test_sigterm_reaches_pgbackrest_and_leaves_nothing_running(pgops_pg: PgopsAsPostgres, pgbr_repo: Repo) -> None:
    first = pgops_pg.popen(["physical-backup", "--type", "full"])
    deadline = time.monotonic() + 30
    while not _backup_running(pgbr_repo) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert _backup_running(pgbr_repo), "pgbackrest never started"
    # runuser is the direct child; the signal goes to pgops itself, as systemd or cron's timeout would send it
    pgops_pid = int(subprocess.run(["pgrep", "-P", str(first.pid)], capture_output=True, text=True).stdout.split()[0])
    subprocess.run(["kill", "-TERM", str(pgops_pid)], check=True)
    _, err = first.communicate(timeout=60)
    assert first.returncode == ExitCode.TERMINATED, err
    assert not _backup_running(pgbr_repo), "pgbackrest outlived pgops"
    assert pgbr_repo.backups() == [], "the stopped backup must not count as one"
    again = pgops_pg.run(["physical-backup", "--type", "full"])
    assert again.returncode == 0, again.stderr


def test_as_root_it_refuses_before_running_anything(pgops_pg: PgopsAsPostgres, pgbr_repo: Repo) -> None:
    """Run as root, pgBackRest would leave root-owned files in the repository and its lock directory."""
    for args in (["physical-backup", "--type", "full"], ["physical-restore", "--pgdata", "/nonexistent/x"]):
        result = run_pgops(args, pgops_pg.env)
        assert result.returncode == ExitCode.CONFIG, result.stderr
        assert "must run as the postgres user, not root" in result.stderr
    assert pgbr_repo.backups() == []
    assert not Path("/nonexistent").exists()
