"""`pgops status --metrics-only`: the scheduled refresh of the physical gauges (roles/pgbackrest runs it every
minute), against a real PostgreSQL archiving through a real pgBackRest 2.45 (tests/fixtures/pgbackrest.py).

Without it the gauges are only as fresh as the last `pgops status` someone ran: an alert on pgops_rpo_seconds
would see an old value. The job must be quiet on success (cron mails its output) and exit 0 when the view is
stale (the gauges carry that), but fail when it could not write them.
"""

from __future__ import annotations

import time

from pgops.errors import ExitCode
from tests.fixtures.engine import run_pgops
from tests.fixtures.pgbackrest import Pgbackrest, pgops_env, read_metrics, wait_for

CHECKED = ("pgops_physical_check_timestamp_seconds", ())


def refresh(env: dict[str, str], **extra: str) -> tuple[int, str]:
    """Run the refresh as cron does; it prints nothing at all on success. (exit code, stderr)"""
    r = run_pgops(["status", "--metrics-only"], {**env, **extra})
    assert "Traceback" not in r.stderr
    assert r.stdout == ""
    return r.returncode, r.stderr


def test_the_refresh_writes_fresh_gauges_quietly_and_exits_0_when_stale(pgbackrest: Pgbackrest) -> None:
    env = pgops_env(pgbackrest)  # no logical backup at all: plain status is stale for the logical half too
    assert run_pgops(["status"], env).returncode == ExitCode.STALE

    before = time.time()
    code, err = refresh(env)
    assert (code, err) == (ExitCode.OK, "")
    m = read_metrics(env)
    assert m[("pgops_physical_ok", ())] == 0  # no full backup yet: stale, said by the gauge, not the exit code
    assert m[("pgops_physical_info_success", ())] == 1
    assert m[CHECKED] >= before - 1
    assert ("pgops_physical_backup_newest_timestamp_seconds", (("type", "full"),)) not in m
    # only the physical gauges: the logical half was not read, so no logical gauge appears
    assert not [k for k in m if k[0].startswith("pgops_backup_")]

    full = pgbackrest.backup("full")
    pgbackrest.switch_archived()
    code, err = refresh(env)
    assert (code, err) == (ExitCode.OK, "")
    m = read_metrics(env)
    assert m[("pgops_physical_backup_newest_timestamp_seconds", (("type", "full"),))] == full["timestamp"]["stop"]
    assert m[("pgops_physical_ok", ())] == 1
    assert m[("pgops_wal_archive_failing", ())] == 0
    assert m[("pgops_rpo_seconds", ())] < 60
    first_check = m[CHECKED]

    # Archiving breaks. Nobody runs `pgops status`; the next refresh alone shows the RPO growing.
    pgbackrest.set_archive_command("/bin/false")
    pgbackrest.switch_wal()
    wait_for("archive_command to fail", lambda: pgbackrest.archiver()["failing"])
    time.sleep(2.2)
    code, err = refresh(env, PGOPS_RPO_MAX_SECONDS="1")
    assert (code, err) == (ExitCode.OK, "")  # stale is no failure of the job
    m = read_metrics(env)
    assert m[CHECKED] > first_check
    assert m[("pgops_wal_archive_failing", ())] == 1
    assert m[("pgops_rpo_seconds", ())] >= 2
    assert m[("pgops_rpo_bytes", ())] >= 16 * 1024 * 1024
    assert m[("pgops_physical_ok", ())] == 0
    # the same view through plain status: stale, exit 11
    assert run_pgops(["status"], {**env, "PGOPS_RPO_MAX_SECONDS": "1"}).returncode == ExitCode.STALE


def test_the_refresh_fails_only_when_it_cannot_do_its_job(pgbackrest: Pgbackrest) -> None:
    env = pgops_env(pgbackrest)
    pgbackrest.backup("full")

    # pgBackRest unreadable: the job did its job (the gauge says info failed), so exit 0, one warning line
    code, err = refresh(env, PGOPS_PGBACKREST_STANZA="nosuchstanza")
    assert code == ExitCode.OK
    assert "event=physical_info_failed" in err
    assert read_metrics(env)[("pgops_physical_info_success", ())] == 0

    no_stanza = {k: v for k, v in env.items() if k != "PGOPS_PGBACKREST_STANZA"}
    r = run_pgops(["status", "--metrics-only"], no_stanza)
    assert r.returncode == ExitCode.CONFIG and "PGOPS_PGBACKREST_STANZA is not set" in r.stderr

    r = run_pgops(["status", "--metrics-only"], {**env, "PGOPS_METRICS_DIR": ""})
    assert r.returncode == ExitCode.CONFIG and "PGOPS_METRICS_DIR is not set" in r.stderr

    not_a_dir = pgbackrest.root / "metrics-file"
    not_a_dir.write_text("")
    r = run_pgops(["status", "--metrics-only"], {**env, "PGOPS_METRICS_DIR": str(not_a_dir)})
    assert r.returncode == ExitCode.CONFIG
    assert f"could not write the gauges into PGOPS_METRICS_DIR={not_a_dir}" in r.stderr

    r = run_pgops(["status", "--metrics-only", "--json"], env)
    assert r.returncode == ExitCode.CONFIG and "does not take --json" in r.stderr
