"""Backups in a cluster (issue 13): every member has the same pgops schedule (cron.d), and after the failovers and
switchovers of test_failover.py the job, run exactly as cron runs it on every member at once, backs up once, on
the member that leads now, into the cluster's one target; the others log that they skipped. Runs after
test_failover.py and before test_runbook.py (whose `pgops status` wants that backup)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from tests.fixtures.instances import run_as_postgres

from conftest import MEMBERS, host_of, leader, whole

testinfra_hosts = [f"podman://{MEMBERS[0]}"]
PGOPS = "/opt/pgops/venv/bin/pgops"
ENV = "/etc/pgops/pgops.env"
RUNNER = Path(__file__).resolve().parents[2] / "e2e/files/run-cron-job.sh"


def test_the_scheduled_backup_runs_once_on_the_leader_and_status_is_green() -> None:
    whole(120)
    lead = leader()
    assert lead is not None
    procs = {}
    for m in MEMBERS:
        subprocess.run(["podman", "cp", str(RUNNER), f"{m}:/usr/local/share/run-cron-job.sh"], check=True)
    # All three at once, as cron fires them.
    for m in MEMBERS:
        procs[m] = subprocess.Popen(
            ["podman", "exec", m, "/usr/local/share/run-cron-job.sh", "/etc/cron.d/pgops", "backup"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
    for m, p in procs.items():
        out, _ = p.communicate(timeout=600)
        assert p.returncode == 0, f"{m}: {out}"
    for m in MEMBERS:
        log = host_of(m).file("/var/log/pgops/backup.log").content_string
        if m == lead:
            assert "backup_skipped" not in log
        else:
            assert "event=backup_skipped" in log and "reason=in_recovery" in log, log[-2000:]
    listing = json.loads(run_as_postgres(host_of(lead), [PGOPS, "list", "--json", "--env-file", ENV]))
    backups = listing["backups"]
    databases = [b["database"] or "(globals)" for b in backups]
    print(f"\nHA scheduled backup after failovers: {lead} backed up {sorted(databases)}; the replicas skipped")
    assert "appdb" in databases
    assert len(databases) == len(set(databases)), databases  # never twice
    assert {b["target"] for b in backups} == {"pgops-ha"}
    assert {b["host"] for b in backups} == {lead}
    assert len(listing["owners"]["pgops-ha"]) == 1
    status = host_of(lead).run(f"runuser -u postgres -- {PGOPS} status --env-file {ENV}")
    assert status.rc == 0, status.stdout + status.stderr
