"""The PITR drill (issue 12, "Drills"; ANCHORS.md PITR rule 9): playbooks/verify.yml -e pgops_pitr_drill_host
restores db13's GCS stanza onto the bare Debian 13 drill host while db13 keeps running and archiving. The drill
host restores with pgBackRest's --archive-mode=off and never writes to the repository; db13 is never fenced;
the measured RTO lands in the drill host's metrics; a second drill replaces the first one's cluster. A drill
onto the stanza's primary itself is refused before anything changes. This is also the PITR restore on Debian 13
and PostgreSQL 17.

Runs after test_pitr.py (file order), which leaves db13 converged on its own stanza. The tests here run in order.
"""

from __future__ import annotations

import re
import subprocess
import time
from typing import Any

from tests.fixtures.instances import ansible_playbook, psql

from conftest import DB13, archiver, host_of, info

testinfra_hosts = [f"podman://{DB13}"]
DRILL13 = "pgops-pitr-drill13"
PROM = "/var/lib/pgops/metrics/pgops.prom"
RTO = re.compile(
    r'^pgops_physical_restore_last_rto_seconds\{[^}]*database="@pgbackrest/drill"[^}]*\} ([0-9.e+]+)$',
    re.M,
)
STATE: dict[str, Any] = {}


def drill(host: str) -> subprocess.CompletedProcess[str]:
    return ansible_playbook("verify.yml", "-e", f"pgops_pitr_drill_host={host}")


def write_marker_and_archive_it(host: Any, label: str) -> None:
    """A marker row on db13, then a segment switch; returns once db13 has archived that segment."""
    psql(host, "CREATE TABLE IF NOT EXISTS drill_marker (label text PRIMARY KEY, at timestamptz DEFAULT now())")
    assert re.fullmatch(r"[a-z0-9-]+", label), label
    psql(host, f"INSERT INTO drill_marker (label) VALUES ('{label}')")  # noqa: S608 (a fixed word, checked above)
    segment = psql(host, "SELECT pg_walfile_name(pg_switch_wal())").strip()
    deadline = time.monotonic() + 60
    while archiver(host)[2] < segment:
        assert time.monotonic() < deadline, f"db13 did not archive {segment}: {archiver(host)}"
        time.sleep(1)


def timelines(host: Any) -> set[str]:
    """The timelines of every WAL range in db13's stanza (pgBackRest's view of the archive)."""
    archive = info(host, DB13)["archive"]
    return {a[edge][:8] for a in archive for edge in ("min", "max") if a.get(edge)}


def postmaster_start(host: Any) -> str:
    return psql(host, "SELECT pg_postmaster_start_time()").strip()


def test_a_drill_onto_the_stanzas_primary_is_refused_before_anything_changes() -> None:
    db13 = host_of(DB13)
    write_marker_and_archive_it(db13, "before-refusal")
    started = postmaster_start(db13)
    run = drill(DB13)
    output = run.stdout + run.stderr
    assert run.returncode != 0, output[-3000:]
    assert f"pgops_pitr_host={DB13} is not a drill host" in output, output[-3000:]
    assert "Nothing was changed" in output
    assert "PLAY [Look at the host" not in output and "TASK [Reach the old primary" not in output
    assert postmaster_start(db13) == started
    assert psql(db13, "SELECT count(*) FROM drill_marker").strip() == "1"
    assert not host_of(DRILL13).package("postgresql-17").is_installed


def test_the_drill_restores_db13s_stanza_and_never_touches_db13_or_the_repository() -> None:
    db13, drill13 = host_of(DB13), host_of(DRILL13)
    write_marker_and_archive_it(db13, "drill-1")
    archived, failed, _ = archiver(db13)
    before_timelines = timelines(db13)
    started = postmaster_start(db13)
    t0 = time.monotonic()
    run = drill(DRILL13)
    seconds = time.monotonic() - t0
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    passed = re.search(r"PITR drill passed: stanza pgops-pitr-db13 restored onto pgops-pitr-drill13 [^\"]*", run.stdout)
    assert passed, run.stdout[-3000:]
    assert "point the applications at" not in run.stdout
    # The drill host: every marker written before the drill, promoted, and archiving off.
    labels = set(psql(drill13, "SELECT label FROM drill_marker").split())
    assert {"before-refusal", "drill-1"} <= labels, labels
    assert psql(drill13, "SELECT pg_is_in_recovery()").strip() == "f"
    assert psql(drill13, "SHOW archive_mode").strip() == "off"
    assert archiver(drill13)[:2] == (0, 0)
    rto = RTO.search(drill13.file(PROM).content_string)
    assert rto and float(rto.group(1)) > 0, drill13.file(PROM).content_string
    STATE["rto"] = float(rto.group(1))
    print(f"PITR drill 1 onto {DRILL13}: RTO {rto.group(1)} s, the whole play {seconds:.0f} s: {passed.group(0)}")
    # db13 was never fenced: the same postmaster, still enabled, pgBackRest not stopped, still archiving.
    assert postmaster_start(db13) == started
    assert db13.service("postgresql").is_enabled
    assert db13.file("/etc/postgresql/17/main/start.conf").content_string.strip().endswith("auto")
    write_marker_and_archive_it(db13, "after-drill-1")
    archived_after, failed_after, _ = archiver(db13)
    assert archived_after > archived and failed_after == failed, (archived, failed, archived_after, failed_after)
    # The drill's new timeline never reached the stanza: only db13's timeline 1 is in the archive.
    assert timelines(db13) == before_timelines == {"00000001"}, (before_timelines, timelines(db13))
    assert info(db13, DB13)["status"]["code"] == 0


def test_a_second_drill_onto_the_same_host_replaces_the_first() -> None:
    db13, drill13 = host_of(DB13), host_of(DRILL13)
    psql(drill13, "CREATE TABLE only_in_drill_1 (x int)")
    write_marker_and_archive_it(db13, "drill-2")
    _, failed, _ = archiver(db13)
    run = drill(DRILL13)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert "PITR drill passed" in run.stdout, run.stdout[-3000:]
    labels = set(psql(drill13, "SELECT label FROM drill_marker").split())
    assert {"before-refusal", "drill-1", "after-drill-1", "drill-2"} <= labels, labels
    # The first drill's cluster is gone: a table made there only is not in the second one.
    assert psql(drill13, "SELECT to_regclass('only_in_drill_1') IS NULL").strip() == "t"
    rto = RTO.search(drill13.file(PROM).content_string)
    assert rto and float(rto.group(1)) > 0
    print(f"PITR drill 2 onto {DRILL13}: RTO {rto.group(1)} s (drill 1: {STATE.get('rto')} s)")
    assert archiver(db13)[1] == failed
    assert timelines(db13) == {"00000001"}
