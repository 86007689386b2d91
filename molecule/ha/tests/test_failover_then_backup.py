"""Backups in a cluster (issue 13): every member has the same pgops schedules (cron.d: logical, and pgBackRest's),
and after the failovers and switchovers of test_failover.py each job, run exactly as cron runs it on every member
at once, backs up once, on the member that leads now, into the cluster's one target or stanza; the others log that
they skipped. WAL archiving goes on from the new leader, on its timeline, with no duplicate-WAL error. Runs after
test_failover.py and before test_runbook.py (whose `pgops status` wants that backup)."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

from tests.fixtures.instances import psql, run_as_postgres

from conftest import MEMBERS, STANZA, host_of, leader, whole

testinfra_hosts = [f"podman://{MEMBERS[0]}"]
PGOPS = "/opt/pgops/venv/bin/pgops"
ENV = "/etc/pgops/pgops.env"
RUNNER = Path(__file__).resolve().parents[2] / "e2e/files/run-cron-job.sh"


def _run_on_every_member(cron_file: str, job: str, log_file: str, skipped: str, lead: str) -> str:
    """Run one cron job on all three members at once, as cron fires them; the leader's log has no skip, the others
    log `event=<skipped> reason=in_recovery`. Only what this run appended counts: the logs hold the earlier tests'
    runs (and a schedule that fired by itself would add its own). Returns the leader's new lines."""
    sizes = {m: int(host_of(m).run(f"stat -c %s {log_file} 2>/dev/null || echo 0").stdout.strip()) for m in MEMBERS}
    procs = {}
    for m in MEMBERS:
        subprocess.run(["podman", "cp", str(RUNNER), f"{m}:/usr/local/share/run-cron-job.sh"], check=True)
    for m in MEMBERS:
        procs[m] = subprocess.Popen(
            ["podman", "exec", m, "/usr/local/share/run-cron-job.sh", cron_file, job],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
    for m, p in procs.items():
        out, _ = p.communicate(timeout=600)
        # The job's own output goes to its log (the cron line redirects it): show what this run appended.
        assert p.returncode == 0, f"{m}: {out}" + host_of(m).run(f"tail -c +{sizes[m] + 1} {log_file}").stdout[-3000:]
    led = ""
    for m in MEMBERS:
        log = host_of(m).run(f"tail -c +{sizes[m] + 1} {log_file}").stdout
        if m == lead:
            assert skipped not in log, log[-2000:]
            led = log
        else:
            assert f"event={skipped}" in log and "reason=in_recovery" in log, log[-2000:]
    return led


def test_the_scheduled_backup_runs_once_on_the_leader_and_status_is_green() -> None:
    whole(120)
    lead = leader()
    assert lead is not None
    led = _run_on_every_member("/etc/cron.d/pgops", "backup", "/var/log/pgops/backup.log", "backup_skipped", lead)
    runs = re.findall(r"event=run_start id=(\S+)", led)
    assert len(runs) == 1, led[-2000:]  # one run on the leader
    listing = json.loads(run_as_postgres(host_of(lead), [PGOPS, "list", "--json", "--env-file", ENV]))
    backups = [b for b in listing["backups"] if b["id"] == runs[0]]
    databases = [b["database"] or "(globals)" for b in backups]
    print(f"\nHA scheduled backup after failovers: {lead} backed up {sorted(databases)}; the replicas skipped")
    assert "appdb" in databases
    assert len(databases) == len(set(databases)), databases  # never twice
    assert {b["target"] for b in backups} == {"pgops-ha"}
    assert {b["host"] for b in backups} == {lead}
    assert len(listing["owners"]["pgops-ha"]) == 1
    status = host_of(lead).run(f"runuser -u postgres -- {PGOPS} status --env-file {ENV}")
    assert status.rc == 0, status.stdout + status.stderr


def test_the_scheduled_retention_and_restore_test_run_once_on_the_leader() -> None:
    """The target's other jobs skip on the replicas too (PGOPS_BACKUP_FROM=primary): retention prunes the cluster's
    store once, and the monthly restore test restores into the leader's server; a replica's read-only server would
    fail it, every month."""
    whole(120)
    lead = leader()
    assert lead is not None
    log = "/var/log/pgops/retention.log"
    led = _run_on_every_member("/etc/cron.d/pgops", "retention", log, "retention_skipped", lead)
    assert len(re.findall(r"event=retention_done target=pgops-ha dry_run=false", led)) == 1, led[-2000:]
    log = "/var/log/pgops/restore-test.log"
    led = _run_on_every_member("/etc/cron.d/pgops", "restore_test", log, "verify_skipped", lead)
    restored = re.findall(r"event=verify_ok id=\S+ database=(\S+) mode=restore", led)
    print(f"\nHA scheduled retention and restore test: {lead} ran both (restored {restored}); the replicas skipped")
    assert "appdb" in restored, led[-2000:]


def _stanza_info(member: str) -> dict[str, Any]:
    info: list[dict[str, Any]] = json.loads(
        run_as_postgres(host_of(member), ["pgbackrest", f"--stanza={STANZA}", "info", "--output=json"])
    )
    return info[0]


def test_the_scheduled_physical_backup_runs_once_on_the_leader_and_archiving_continues_from_it() -> None:
    whole(120)
    lead = leader()
    assert lead is not None
    labels_before = {b["label"] for b in _stanza_info(lead)["backup"]}
    # The differential job on all three at once.
    log = "/var/log/pgops/physical-backup-diff.log"
    led = _run_on_every_member("/etc/cron.d/pgops-pgbackrest", "diff", log, "physical_backup_skipped", lead)
    labels = re.findall(r"event=physical_backup_done stanza=\S+ type=diff label=(\S+)", led)
    assert len(labels) == 1, led[-2000:]  # one backup on the leader
    info = _stanza_info(lead)
    new = [b for b in info["backup"] if b["label"] not in labels_before]
    assert [b["label"] for b in new] == labels, new  # one backup, not three
    # WAL archiving continues from the new leader, on its timeline: `pgbackrest check` switches a segment and waits
    # for it in the repository.
    run_as_postgres(host_of(lead), ["pgbackrest", f"--stanza={STANZA}", "check"])
    timeline = int(psql(host_of(lead), "SELECT timeline_id FROM pg_control_checkpoint()").strip())
    newest_wal = max(a["max"] for a in _stanza_info(lead)["archive"])
    print(
        f"\nHA physical backup after failovers: {lead} (timeline {timeline}) took {new[0]['label']}; the replicas "
        f"skipped; newest archived WAL {newest_wal}"
    )
    assert timeline > 1  # the failovers of test_failover.py happened
    assert int(newest_wal[:8], 16) == timeline
    # No member ever hit pgBackRest's duplicate-WAL error: a segment pushed again with different contents. A new
    # leader may push a segment of the old timeline that the old leader had already archived; pgBackRest compares
    # the checksums, warns that it is the same, and succeeds.
    same = 0
    for m in MEMBERS:
        logs = host_of(m).run("cat /var/log/pgbackrest/*archive-push*.log 2>/dev/null").stdout
        assert "different checksum" not in logs, f"{m}: {[x for x in logs.splitlines() if 'checksum' in x]}"
        same += logs.count("with the same checksum")
    print(f"segments pushed twice with the same contents (pgBackRest accepted them): {same}")
    # Not failing now: the last archived segment is newer than any failure.
    failing = "SELECT coalesce(last_failed_time > last_archived_time, false) FROM pg_stat_archiver"
    assert psql(host_of(lead), failing).strip() == "f"
