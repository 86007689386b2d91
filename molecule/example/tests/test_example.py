"""What a team that adopted inventory/example/production as its README says can rely on (issue 11).

The last tests run the README's commands again (a second drill, site.yml with a placeholder left unfilled), so
they come after the ones that read the state converge and side_effect left."""

from __future__ import annotations

import json
import re
import time
from typing import Any

import boto3
import pyrage

from conftest import (
    ADDRESSES,
    DB1,
    VARS,
    ephemeral,
    inventory,
    login,
    psql,
    secret,
    team,
    vault_pass,
)

# Each test names its hosts itself (db1, db2, drill fixtures); run each once.
testinfra_hosts = [f"podman://{DB1}"]

AGE_HEADER = b"age-encryption.org/v1\n"
USERS = ("app_owner", "app_rw", "app_ro")


def s3() -> Any:
    return boto3.client(
        "s3",
        endpoint_url=f"http://{VARS['example_store_address']}:{VARS['example_s3_port']}",
        region_name="us-east-1",
        aws_access_key_id=secret("s3-access-key-id"),
        aws_secret_access_key=secret("s3-secret-access-key"),
    )


def stored_keys(target: str) -> list[str]:
    pages = s3().get_paginator("list_objects_v2").paginate(Bucket=VARS["example_bucket"], Prefix=f"pgops/{target}/")
    return [o["Key"] for page in pages for o in page.get("Contents", [])]


def read(key: str) -> bytes:
    body: bytes = s3().get_object(Bucket=VARS["example_bucket"], Key=key)["Body"].read()
    return body


def test_every_stored_dump_is_an_age_file_for_the_teams_key() -> None:
    identity = pyrage.x25519.Identity.from_str((ephemeral() / "ops-prod.key").read_text().split("\n")[-2].strip())
    for target in ("db-prod-1", "db-prod-2"):
        dumps = [k for k in stored_keys(target) if k.rsplit("/", 1)[-1].startswith(("dump.", "globals."))]
        assert any("/appdb/" in k for k in dumps), (target, dumps)
        assert any("/@globals/" in k for k in dumps), (target, dumps)
        for key in dumps:
            assert key.endswith(".age"), key
            assert read(key).startswith(AGE_HEADER), key
        # The private key the README has the team put into the vault reads them.
        globals_dump = next(k for k in dumps if "/@globals/" in k)
        assert pyrage.decrypt(read(globals_dump), [identity])


def test_the_drill_restored_appdb_with_its_rows(db1: Any, drill: Any) -> None:
    rows = "SELECT count(*), sum(id), string_agg(item, ',' ORDER BY id) FROM orders"
    assert psql(db1, "SELECT count(*) FROM orders", db="appdb") == "1000"
    assert psql(drill, rows, db="appdb") == psql(db1, rows, db="appdb")
    assert "Restore drill passed: 1 database(s) of db-prod-1" in (ephemeral() / "drill-1.txt").read_text()


def test_the_roles_passwords_from_the_vault_work_and_others_do_not(db1: Any, db2: Any, drill: Any) -> None:
    for host, name in ((db1, "db-prod-1"), (db2, "db-prod-2"), (drill, "pg-drill-prod-1")):
        for user in USERS:
            ok = login(host, ADDRESSES[name], user, secret(user), "SELECT current_user")
            assert ok.rc == 0 and ok.stdout.strip() == user, (name, user, ok.stderr)
            wrong = login(host, ADDRESSES[name], user, f"CHANGE-ME-{user.replace('_', '-')}", "SELECT 1")
            assert wrong.rc != 0 and "password authentication failed" in wrong.stderr, (name, user, wrong.stderr)
    read_only = login(db1, ADDRESSES["db-prod-1"], "app_ro", secret("app_ro"), "SELECT count(*) FROM orders")
    assert read_only.rc == 0 and read_only.stdout.strip() == "1000", read_only.stderr


def test_only_the_drill_host_holds_the_age_identity(db1: Any, db2: Any, drill: Any) -> None:
    for host in (db1, db2):
        assert not host.file("/etc/pgops/age-identity.txt").exists
    identity = drill.file("/etc/pgops/age-identity.txt")
    assert identity.mode == 0o600 and identity.user == "postgres"


def test_the_schedules_are_the_examples(db1: Any, drill: Any) -> None:
    db_jobs = re.findall(r"^# (\w+)$", db1.file("/etc/cron.d/pgops").content_string, re.MULTILINE)
    assert db_jobs == ["backup", "retention", "verify"]
    assert not drill.file("/etc/cron.d/pgops-pgbackrest").exists  # a drill host never archives or backs up
    drill_jobs = re.findall(r"^# (\w+)$", drill.file("/etc/cron.d/pgops").content_string, re.MULTILINE)
    assert drill_jobs == ["restore_test"]


def test_each_server_archives_its_wal_into_its_own_stanza_in_the_same_bucket(db1: Any, db2: Any) -> None:
    """inventory/example's pgops_db: archive_mode on, pgBackRest's archive_command, a stanza per host (its
    inventory name), the repository under pgbackrest/ in pgops' bucket, encrypted, with a first full backup."""
    bucket = s3().list_objects_v2(Bucket=VARS["example_bucket"], Prefix="pgbackrest/")
    assert bucket["KeyCount"] > 0
    for host, stanza in ((db1, "db-prod-1"), (db2, "db-prod-2")):
        assert psql(host, "SHOW archive_command") == f"pgbackrest --stanza={stanza} archive-push %p"
        archiver = psql(
            host,
            "SELECT archived_count, last_archived_wal, "
            "last_archived_time > coalesce(last_failed_time, '-infinity') FROM pg_stat_archiver",
        ).split("|")
        assert int(archiver[0]) >= 1 and archiver[2] == "t", (stanza, archiver)
        out = host.run(f"runuser -u postgres -- pgbackrest --stanza={stanza} info --output=json")
        assert out.rc == 0, out.stderr
        (info,) = json.loads(out.stdout)
        assert info["status"]["code"] == 0, info["status"]
        assert info["cipher"] == "aes-256-cbc"
        assert [b["type"] for b in info["backup"]].count("full") >= 1
        assert info["archive"][0]["max"] >= archiver[1]  # what the server archived is in the repository
        for kind in ("archive", "backup"):
            keys = s3().list_objects_v2(Bucket=VARS["example_bucket"], Prefix=f"pgbackrest/{kind}/{stanza}/")
            assert keys["KeyCount"] > 0, (stanza, kind)
        assert not [k for k in stored_keys(stanza) if "pgbackrest" in k]


def prom_value(host: Any, name: str) -> float:
    prom = host.file("/var/lib/pgops/metrics/pgops.prom").content_string
    found = re.search(rf"^{name}\{{[^}}]*\}} (\S+)$", prom, re.MULTILINE)
    assert found, (name, prom[-2000:])
    return float(found.group(1))


def test_the_refresh_job_keeps_the_rpo_gauges_fresh_from_cron(db1: Any, db2: Any) -> None:
    """roles/pgbackrest schedules `pgops status --metrics-only` every minute; cron itself runs it here (nothing
    else writes the physical gauges before the status test below), quietly."""
    line = (
        "* * * * * postgres /opt/pgops/venv/bin/pgops status --metrics-only --env-file /etc/pgops/pgops.env "
        ">>/var/log/pgops/physical-refresh.log 2>&1"
    )
    for host in (db1, db2):
        cron = host.file("/etc/cron.d/pgops-pgbackrest").content_string
        assert re.findall(r"^# (\w+)$", cron, re.MULTILINE) == ["diff", "full", "refresh"]
        assert line in cron.splitlines()
    first = prom_value(db1, "pgops_physical_check_timestamp_seconds")
    deadline = time.monotonic() + 90
    while prom_value(db1, "pgops_physical_check_timestamp_seconds") == first and time.monotonic() < deadline:
        time.sleep(5)
    checked = prom_value(db1, "pgops_physical_check_timestamp_seconds")
    assert checked > first, "cron did not refresh the physical gauges within 90 s"
    for host in (db1, db2):
        now = float(host.check_output("date +%s"))
        assert now - prom_value(host, "pgops_physical_check_timestamp_seconds") < 120
        assert prom_value(host, "pgops_physical_ok") == 1
        assert 0 <= prom_value(host, "pgops_rpo_seconds") < 300
        log = host.file("/var/log/pgops/physical-refresh.log")
        assert log.exists and log.size == 0, log.content_string[-2000:]


def test_pgops_status_shows_the_current_rpo_as_a_number_and_exits_0() -> None:
    """inventory/example/README.md's step 5, as a team runs it: `pgops status` on every server, as postgres."""
    run = team(
        "ansible",
        "pgops_db",
        "-i",
        inventory(),
        "-m",
        "ansible.builtin.command",
        "-a",
        "/opt/pgops/venv/bin/pgops status",
        "--become-user",
        "postgres",
        *vault_pass(),
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    for name in ("db-prod-1", "db-prod-2"):
        assert re.search(rf"^{name} \| CHANGED \| rc=0 >>$", run.stdout, re.MULTILINE), run.stdout
    rpos = [int(s) for s in re.findall(r"^  current RPO  (\d+)s, ", run.stdout, re.MULTILINE)]
    assert len(rpos) == 2 and max(rpos) < 300, run.stdout
    assert run.stdout.count("  state: ok") == 2 and "STALE" not in run.stdout, run.stdout


def test_the_drill_hosts_scheduled_restore_test_restores_the_servers_backups(drill: Any) -> None:
    """cron's restore_test job on the drill host (postgresql_backup_restore_test_targets) restores db-prod-1's
    and db-prod-2's backups with the identity, not a sha256 check, and records it in each target."""
    job = drill.run("/usr/local/share/run-cron-job.sh /etc/cron.d/pgops restore_test")
    assert job.rc == 0, job.stderr
    log = drill.file("/var/log/pgops/restore-test.log").content_string
    assert "verify_without_key" not in log
    restored = set(re.findall(r"event=verify_ok id=(\S+) database=appdb mode=restore ", log))
    for target in ("db-prod-1", "db-prod-2"):
        keys = stored_keys(target)
        # The log names each backup by id; the ids are the target's own (<target>/appdb/<id>/...).
        ids = {k.split("/")[3] for k in keys if k.split("/")[2] == "appdb"}
        assert restored & ids, (target, sorted(ids), log[-2000:])
        assert any(k.startswith(f"pgops/{target}/appdb/") and k.endswith("-restore.json") for k in keys), keys


def test_a_second_drill_on_the_same_host_passes(drill: Any) -> None:
    """Depends on wt-drills (repeatable drills): the drill host drops the databases the last drill restored."""
    run = team(
        "ansible-playbook",
        "-i",
        inventory(),
        "playbooks/verify.yml",
        "-e",
        "pgops_restore_host=pg-drill-prod-1",
        "-e",
        "pgops_restore_from=db-prod-1",
        *vault_pass(),
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    assert "Restore drill passed: 1 database(s) of db-prod-1" in run.stdout
    assert "point the applications at" not in run.stdout
    assert psql(drill, "SELECT count(*) FROM orders", db="appdb") == "1000"
    leftovers = psql(drill, "SELECT datname FROM pg_database WHERE datname ~ '_pgops_old_'")
    assert leftovers == ""
    # A drill host never takes safety backups into the production bucket.
    assert [k for k in stored_keys("pg-drill-prod-1") if "/@cluster/" not in k] == []


def test_a_placeholder_left_unfilled_stops_site_yml_before_anything_changes(db1: Any) -> None:
    """Depends on wt-drills (placeholder rejection in the roles' validate tasks). The copy's vault still has
    vault_pgops_app_ro_password: "CHANGE-ME-app-ro"; everything else is filled in."""
    run = team("ansible-playbook", "-i", inventory(unfilled=True), "playbooks/site.yml", *vault_pass())
    output = run.stdout + run.stderr
    assert run.returncode != 0, output[-3000:]
    assert "postgresql_users[2].password" in output, output[-3000:]
    assert "CHANGE-ME-app-ro" not in output
    recap = dict(re.findall(r"^(\S+)\s+:\s+ok=\d+\s+changed=(\d+)", output.split("PLAY RECAP", 1)[-1], re.MULTILINE))
    assert recap and set(recap.values()) == {"0"}, recap
    # app_ro's real password still works; the placeholder never became one.
    ok = login(db1, ADDRESSES["db-prod-1"], "app_ro", secret("app_ro"), "SELECT 1")
    assert ok.rc == 0, ok.stderr
    placeholder = login(db1, ADDRESSES["db-prod-1"], "app_ro", "CHANGE-ME-app-ro", "SELECT 1")
    assert placeholder.rc != 0
