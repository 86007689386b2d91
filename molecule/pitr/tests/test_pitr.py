"""What roles/pgbackrest must leave behind (issue 12): a proven stanza, secrets only in 0640 files, working
WAL archiving, scheduled full backups in the repository, and a refusal of a second cluster under one stanza.

The last test points db13 at db12's stanza, then converges it back to its own; keep it last in this file.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time

import pytest
from tests.fixtures.instances import psql

from conftest import CONFIG, DB12, DB13, SECRETS, STANZA, ephemeral, host_of, info

# Each test names its hosts itself; run each once.
testinfra_hosts = [f"podman://{DB12}"]
PGOPS = "/opt/pgops/venv/bin/pgops"
ENV = "/etc/pgops/pgops.env"


@pytest.mark.parametrize("name", [DB12, DB13])
def test_the_stanza_is_ok_and_holds_the_scheduled_full_backup(name: str) -> None:
    stanza = info(host_of(name), STANZA[name])
    assert stanza["status"]["code"] == 0, stanza["status"]
    assert [b["type"] for b in stanza["backup"]].count("full") >= 1
    (db,) = stanza["db"]
    system_id = psql(host_of(name), "SELECT system_identifier FROM pg_control_system()").strip()
    assert str(db["system-id"]) == system_id
    assert stanza["cipher"] == "aes-256-cbc"
    # The backup came through pgops (the scheduled command), which records it in its metrics.
    prom = host_of(name).file("/var/lib/pgops/metrics/pgops.prom").content_string
    assert re.search(
        r'^pgops_physical_backup_last_attempt_success\{[^}]*database="@pgbackrest/full"[^}]*\} 1\.0$', prom, re.M
    ), prom


@pytest.mark.parametrize("name", [DB12, DB13])
def test_the_configuration_is_0640_root_postgres_and_encrypts(name: str) -> None:
    conf = host_of(name).file(CONFIG)
    assert (conf.mode, conf.user, conf.group) == (0o640, "root", "postgres")
    text = conf.content_string
    assert "repo1-cipher-type=aes-256-cbc" in text
    assert "archive-push-queue-max" not in text
    assert re.search(r"^compress-type=zst$", text, re.M)
    assert re.search(r"^start-fast=y$", text, re.M)
    assert re.search(r"^archive-async=y$", text, re.M)


def test_the_scheduled_jobs_are_exactly_pgops_physical_backup_as_postgres() -> None:
    db12, db13 = host_of(DB12), host_of(DB13)
    cron = db12.file("/etc/cron.d/pgops-pgbackrest").content_string
    assert f"0 1 * * 0 postgres {PGOPS} physical-backup --type full --env-file {ENV} " in cron
    assert f"0 1 * * 1-6 postgres {PGOPS} physical-backup --type diff --env-file {ENV} " in cron
    for job, calendar in (("full", "Sun *-*-* 01:00:00"), ("diff", "Mon..Sat *-*-* 01:00:00")):
        unit = db13.file(f"/etc/systemd/system/pgops-pgbackrest-{job}.service").content_string
        assert f"ExecStart={PGOPS} physical-backup --type {job} --env-file {ENV}\n" in unit
        assert "User=postgres\n" in unit
        timer = db13.file(f"/etc/systemd/system/pgops-pgbackrest-{job}.timer").content_string
        assert f"OnCalendar={calendar}\n" in timer
        assert db13.service(f"pgops-pgbackrest-{job}.timer").is_enabled
    # The env file names the stanza, through roles/postgresql_backup.
    assert f"PGOPS_PGBACKREST_STANZA='{DB12}'" in db12.file(ENV).content_string


@pytest.mark.parametrize("name", [DB12, DB13])
def test_archiving_works_segments_arrive_and_nothing_fails(name: str) -> None:
    host = host_of(name)
    assert psql(host, "SHOW archive_mode").strip() == "on"
    assert psql(host, "SHOW archive_command").strip() == f"pgbackrest --stanza={STANZA[name]} archive-push %p"
    assert psql(host, "SHOW wal_level").strip() == "replica"
    # Archive attempts made before the stanza existed (archive_mode is on from the server role, which runs
    # first) may have failed; count from now.
    psql(host, "SELECT pg_stat_reset_shared('archiver')")
    psql(host, "CREATE TABLE IF NOT EXISTS pitr_probe (t timestamptz); INSERT INTO pitr_probe VALUES (now())")
    segment = psql(host, "SELECT pg_walfile_name(pg_switch_wal())").strip()
    deadline = time.monotonic() + 60
    while True:
        archived, last, failed = (
            psql(host, "SELECT archived_count, coalesce(last_archived_wal, ''), failed_count FROM pg_stat_archiver")
            .strip()
            .split("|")
        )
        if int(archived) >= 1 and last >= segment:
            break
        assert time.monotonic() < deadline, f"{segment} not archived: {archived=} {last=} {failed=}"
        time.sleep(1)
    assert int(failed) == 0
    # And the repository has it (pgBackRest's own view of the archive).
    archive = info(host, STANZA[name])["archive"]
    assert max(a["max"] for a in archive) >= segment


@pytest.mark.parametrize("name", [DB12, DB13])
def test_no_secret_in_ps_logs_or_journal(name: str) -> None:
    host = host_of(name)
    places = {
        "ps": host.run("ps -eo args").stdout,
        "journal": host.run("journalctl --no-pager -o cat").stdout,
        "logs": host.run(
            "cat /var/log/pgbackrest/*.log /var/log/pgops/*.log /var/log/postgresql/*.log 2>/dev/null"
        ).stdout,
    }
    # Ansible logs each module's arguments to the journal ("Invoked with"), unless the task is no_log; and
    # pgBackRest logs each command's options (it redacts its secure ones): both must be there to check.
    assert "Invoked with" in places["journal"], "no Ansible module invocations in the journal: nothing was checked"
    assert "command begin" in places["logs"]
    for where, text in places.items():
        for secret in SECRETS:
            assert secret not in text, f"a secret in {where} on {name}"


def test_no_secret_in_the_check_mode_converge_output() -> None:
    text = ephemeral("check-mode-run.txt").read_text()
    assert "pgops-pitr-db13" in text  # side_effect.yml's check-mode run is limited to db13
    for secret in SECRETS:
        assert secret not in text


def test_a_second_cluster_under_the_same_stanza_is_refused_before_its_server_archives_there() -> None:
    """db13 (PostgreSQL 17) converged with db12's stanza and S3 repository, as a copy-pasted inventory would."""
    db12 = host_of(DB12)
    before = info(db12, DB12)
    intruder = {
        "pgbackrest_stanza": DB12,
        "pgbackrest_repo_type": "s3",
        "pgbackrest_repo_region": "us-east-1",
        "pgbackrest_repo_port": 9443,
        "pgbackrest_repo_s3_uri_style": "path",
        "pgbackrest_repo_s3_key": "pitr",
        "pgbackrest_repo_s3_key_secret": "pitr-s3-secret",
    }
    run = subprocess.run(
        [
            "ansible-playbook",
            "--inventory",
            os.environ["MOLECULE_INVENTORY_FILE"],
            "--limit",
            DB13,
            "--extra-vars",
            json.dumps(intruder),
            os.path.join(os.environ["MOLECULE_SCENARIO_DIRECTORY"], "converge.yml"),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "ANSIBLE_NOCOLOR": "1", "ANSIBLE_FORCE_COLOR": "0"},
        check=False,
    )
    output = run.stdout + run.stderr
    assert run.returncode != 0
    assert f"Stanza {DB12} in the repository belongs to another cluster" in output
    assert "Nothing was changed in the repository" in output
    for secret in SECRETS:
        assert secret not in output
    # Refused before roles/postgresql ran (site.yml's pre_tasks): db13 still archives into its own stanza, and the
    # scratch configuration the check used is gone.
    assert "TASK [postgresql : " not in run.stdout
    db13 = host_of(DB13)
    assert psql(db13, "SHOW archive_command").strip() == f"pgbackrest --stanza={DB13} archive-push %p"
    assert not db13.file("/etc/pgbackrest/preflight.conf").exists
    failed = int(psql(db13, "SELECT failed_count FROM pg_stat_archiver").strip())
    archived = int(psql(db13, "SELECT archived_count FROM pg_stat_archiver").strip())
    psql(db13, "CREATE TABLE IF NOT EXISTS pitr_intruder (t timestamptz); INSERT INTO pitr_intruder VALUES (now())")
    psql(db13, "SELECT pg_switch_wal()")
    deadline = time.monotonic() + 60
    while int(psql(db13, "SELECT archived_count FROM pg_stat_archiver").strip()) == archived:
        assert time.monotonic() < deadline, "db13 stopped archiving into its own stanza"
        time.sleep(1)
    assert int(psql(db13, "SELECT failed_count FROM pg_stat_archiver").strip()) == failed
    after = info(db12, DB12)
    assert after["status"]["code"] == 0
    assert after["db"] == before["db"]
    assert [b["label"] for b in after["backup"]] == [b["label"] for b in before["backup"]]
    assert [a["database"] for a in after["archive"]] == [a["database"] for a in before["archive"]]
