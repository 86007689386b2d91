"""What the operator must be able to rely on after a disaster recovery (issue 6, RELIABILITY 22)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from tests.fixtures.instances import psql, run_as_postgres

from conftest import DB, TRICKY_DB, dump, ephemeral

# Each test names its hosts itself (db, restored fixtures); run each once.
testinfra_hosts = [f"podman://{DB}"]
ENV = "/etc/pgops/pgops.env"

ROLES_SQL = """
SELECT rolname, rolsuper, rolinherit, rolcreaterole, rolcreatedb, rolcanlogin, rolconnlimit,
       rolpassword IS NOT NULL, coalesce(rolpassword, '') LIKE 'SCRAM-SHA-256$%'
FROM pg_authid WHERE rolname !~ '^pg_' ORDER BY 1
"""
MEMBERS_SQL = """
SELECT r.rolname, m.rolname FROM pg_auth_members a JOIN pg_roles r ON r.oid = a.roleid
JOIN pg_roles m ON m.oid = a.member WHERE m.rolname !~ '^pg_' ORDER BY 1, 2
"""
DATABASES_SQL = """
SELECT d.datname, pg_get_userbyid(d.datdba),
       (SELECT string_agg(e.item, ',' ORDER BY e.item) FROM (
          SELECT a.grantee::regrole || '=' || a.privilege_type || '/' || a.grantor::regrole || ':' || a.is_grantable
          FROM aclexplode(coalesce(d.datacl, acldefault('d', d.datdba))) a) e(item)),
       pg_encoding_to_char(d.encoding), d.datcollate,
       coalesce(shobj_description(d.oid, 'pg_database'), ''),
       (SELECT string_agg(e.item, ';' ORDER BY e.item) FROM (
          SELECT coalesce(r.rolname, '*') || ':' || array_to_string(s.setconfig, ',')
          FROM pg_db_role_setting s LEFT JOIN pg_roles r ON r.oid = s.setrole WHERE s.setdatabase = d.oid) e(item))
FROM pg_database d WHERE d.datname IN ('appdb', 'Tricky db ☃') ORDER BY 1
"""


@pytest.mark.parametrize("database", ["appdb", TRICKY_DB])
def test_restored_database_equals_the_source(db: Any, restored: Any, database: str) -> None:
    source = dump(db, database)
    assert "pgbench_accounts" in source
    assert dump(restored, database) == source


def test_roles_memberships_and_database_grants_came_back(db: Any, restored: Any) -> None:
    for query in (ROLES_SQL, MEMBERS_SQL, DATABASES_SQL):
        assert psql(restored, query) == psql(db, query)
    roles = psql(restored, "SELECT rolname FROM pg_roles").split()
    assert {"app_owner", "app_rw", "app_ro", "pgops_app_owner", "PgOps-Writer"} <= set(roles)
    assert "pgops app reader" in psql(restored, "SELECT rolname FROM pg_roles")
    grants = psql(restored, "SELECT has_table_privilege('app_ro', 'pgbench_accounts', 'SELECT')", db="appdb")
    assert grants.strip() == "t"


def test_side_database_from_the_gcs_run_equals_the_source(db: Any, restored: Any) -> None:
    assert dump(restored, "appdb_from_gcs").replace("appdb_from_gcs", "appdb") == dump(db, "appdb")


def test_metrics_say_every_job_succeeded(db: Any) -> None:
    text = db.file("/var/lib/pgops/metrics/pgops.prom").content_string
    samples = {
        (s.name, s.labels.get("database", "")): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    for database in ("appdb", TRICKY_DB, "@globals"):
        assert samples[("pgops_backup_last_attempt_success", database)] == 1
        assert samples[("pgops_backup_last_success_timestamp_seconds", database)] > 0
    assert samples[("pgops_verify_last_attempt_success", "appdb")] == 1
    assert samples[("pgops_restore_test_duration_seconds", "appdb")] > 0
    assert samples[("pgops_retention_deleted_backups", "appdb")] == 0


def test_the_cron_jobs_logged_their_runs(db: Any) -> None:
    jobs = (
        ("backup", "event=run_done"),
        ("retention", "event=retention_done"),
        ("verify", "event=verify_ok"),
        ("restore-test", "mode=restore"),
    )
    for job, event in jobs:
        log = db.file(f"/var/log/pgops/{job}.log")
        assert log.exists and log.user == "postgres", job
        assert "level=error" not in log.content_string, job
        assert event in log.content_string, job


def test_backup_role_files(db: Any) -> None:
    env = db.file("/etc/pgops/pgops.env")
    assert (env.user, env.group, env.mode) == ("postgres", "postgres", 0o600)
    assert "PGOPS_S3_SECRET_ACCESS_KEY='local-secret'" in env.content_string
    assert db.file("/etc/pgops").mode == 0o750
    cron = db.file("/etc/cron.d/pgops").content_string
    pgops = "/opt/pgops/venv/bin/pgops"
    assert f"0 2 * * * postgres {pgops} backup --env-file /etc/pgops/pgops.env >>/var/log/pgops/backup.log 2>&1" in cron
    assert f"30 4 * * * postgres {pgops} retention " in cron
    assert f"0 5 * * 0 postgres {pgops} verify " in cron
    assert f"30 5 1 * * postgres {pgops} verify --restore-test " in cron
    assert db.file("/usr/local/bin/pgops").linked_to == pgops
    assert db.service("cron").is_running
    assert db.run("logrotate --debug /etc/logrotate.d/pgops").rc == 0
    metrics = db.file("/var/lib/pgops/metrics")
    assert metrics.is_directory and metrics.user == "postgres"


def test_secrets_stay_out_of_the_logs(db: Any) -> None:
    for path in ("/var/log/pgops/backup.log", "/var/log/pgops/verify.log", "/var/log/pgops/restore-test.log"):
        assert "local-secret" not in db.file(path).content_string


def test_new_host_schedules_with_timers_and_records_the_recovery(db: Any, restored: Any) -> None:
    assert not restored.file("/etc/cron.d/pgops").exists
    for job in ("backup", "retention", "verify", "restore-test"):
        timer = restored.service(f"pgops-{job}.timer")
        assert timer.is_enabled and timer.is_running, job
    result = restored.run("systemctl show -p Result --value pgops-backup.service")
    assert result.stdout.strip() == "success"
    listed = json.loads(run_as_postgres(restored, ["/opt/pgops/venv/bin/pgops", "list", "--json"]))
    assert {b["database"] for b in listed["backups"]} >= {"appdb", TRICKY_DB, None}
    assert {b["target"] for b in listed["backups"]} == {DB}  # it continues the lost host's backup history
    sysid = "SELECT system_identifier FROM pg_control_system()"
    owners = [o["system_identifier"] for o in listed["owners"][DB]]
    assert owners == [psql(db, sysid).strip(), psql(restored, sysid).strip()]  # adopted by restore.yml
    report = json.loads(restored.file("/var/lib/pgops/last-restore.json").content_string)
    assert report["source_target"] == DB and float(report["recovery_seconds"]) > 0
    assert sorted(d["database"] for d in report["databases"]) == ["Tricky db ☃", "appdb"]
    assert all(d["tables_checked"] >= 4 for d in report["databases"])


def test_recovery_took_the_newest_backups_the_on_demand_ones(restored: Any) -> None:
    """backup.yml ran after the cron job: restore.yml must restore its backups, the newest."""
    on_demand = ephemeral("on-demand-id.txt")
    listed = json.loads(run_as_postgres(restored, ["/opt/pgops/venv/bin/pgops", "list", "--target", DB, "--json"]))
    reasons = {b["reason"] for b in listed["backups"] if b["id"] == on_demand}
    assert reasons == {"pre-migration"}
    report = json.loads(restored.file("/var/lib/pgops/last-restore.json").content_string)
    assert {d["backup_id"] for d in report["databases"]} == {on_demand}


@pytest.mark.parametrize("database", ["appdb", TRICKY_DB])
def test_drill_host_holds_the_same_data(db: Any, drill: Any, database: str) -> None:
    assert dump(drill, database) == dump(db, database)


def test_drill_host_schedules_only_the_restore_test_of_the_database_host(drill: Any) -> None:
    cron = drill.file("/etc/cron.d/pgops").content_string
    jobs = [line for line in cron.splitlines() if line and not line.startswith(("#", "SHELL=", "PATH="))]
    assert len(jobs) == 1 and f"verify --restore-test --target {DB} --env-file" in jobs[0], cron
    assert not drill.file("/etc/systemd/system/pgops-backup.timer").exists
    report = json.loads(drill.file("/var/lib/pgops/last-restore.json").content_string)
    assert report["source_target"] == DB and report["host"] == "pgops-e2e-drill" and report["drill"] is True
    assert sorted(d["database"] for d in report["databases"]) == ["Tricky db ☃", "appdb"]
    recorded = json.loads(drill.file("/var/lib/pgops/drill-databases.json").content_string)
    assert sorted(recorded["databases"]) == ["Tricky db ☃", "appdb"]


def test_the_drill_left_no_safety_backups_and_no_old_copies(drill: Any) -> None:
    """A drill never replaces: no safety backups, no old copies (molecule/example drills twice onto one host)."""
    assert psql(drill, "SELECT datname FROM pg_database WHERE datname LIKE '%pgops_old%'").strip() == ""
    listed = run_as_postgres(
        drill, ["/opt/pgops/venv/bin/pgops", "list", "--all-targets", "--all-states", "--json", "--env-file", ENV]
    )
    backups = json.loads(listed)["backups"]
    assert backups and not [b for b in backups if b.get("reason") == "safety"]
    assert not [b for b in backups if str(b.get("key") or "").startswith("pgops-e2e-drill/")]


def test_drill_host_restore_tested_the_database_hosts_target(drill: Any) -> None:
    prom = drill.file("/var/lib/pgops/metrics/pgops.prom").content_string
    samples = {
        (s.name, s.labels["target"], s.labels["database"]): s.value
        for family in text_string_to_metric_families(prom)
        for s in family.samples
        if "database" in s.labels  # per-database gauges (pgops_backup_skipped_replica is per target)
    }
    for database in ("appdb", TRICKY_DB):
        assert samples[("pgops_restore_test_last_attempt_success", DB, database)] == 1
        assert samples[("pgops_restore_test_duration_seconds", DB, database)] > 0
    assert not [k for k in samples if k[0].startswith("pgops_backup_")]  # it takes no backups


def test_the_physical_view_is_green_on_the_database_host(db: Any) -> None:
    """inventory/local archives WAL through pgBackRest into the store's bucket and takes a first full backup during
    site.yml: `pgops status` (exit 0) shows it, with the current RPO as a number, and the refresh job runs quietly."""
    doc = json.loads(run_as_postgres(db, ["/opt/pgops/venv/bin/pgops", "status", "--json", "--env-file", ENV]))
    physical = doc["physical"]
    assert physical["stanza"] == DB and physical["problems"] == [] and doc["stale"] is False, physical
    assert physical["newest"]["full"]["label"]
    archiver = physical["archiver"]
    assert archiver["failing"] is False and archiver["archived_count"] >= 1
    assert isinstance(archiver["rpo_seconds"], (int, float)) and 0 <= archiver["rpo_seconds"] < 300
    cron = db.file("/etc/cron.d/pgops-pgbackrest").content_string
    assert "* * * * * postgres /opt/pgops/venv/bin/pgops status --metrics-only --env-file /etc/pgops/pgops.env " in cron
    refresh_log = db.file("/var/log/pgops/physical-refresh.log")
    assert refresh_log.exists and refresh_log.size == 0, refresh_log.content_string[-2000:]
