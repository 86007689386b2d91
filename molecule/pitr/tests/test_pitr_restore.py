"""Point-in-time recovery as an operator runs it (issue 12; RELIABILITY.md cases 38 and 39): db12 is written to
without pause, backed up while it is written to, killed with no clean shutdown, and playbooks/pitr-restore.yml
rebuilds it on the bare new12 from the repository: first to the latest archived WAL (the lost markers are the
RPO), then to a time T (every marker committed up to T, none after it).

Runs after test_pitr.py (file order), whose tests need db12 alive. The tests here run in order and share the
writer's record; each needs the one before it.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import re
import subprocess
import threading
import time
from pathlib import Path

from tests.fixtures.instances import psql, run_as_postgres

from conftest import DB12, host_of, info

testinfra_hosts = [f"podman://{DB12}"]
NEW12 = "pgops-pitr-new12"
PGOPS = "/opt/pgops/venv/bin/pgops"
ENV = "/etc/pgops/pgops.env"
ARCHIVE_TIMEOUT = 10  # host_vars/pgops-pitr-db12.yml
WRITE_EVERY = 0.1
# One INSERT per loop through psql: each acknowledged row is printed as "id|commit time" once committed.
INSERT = "INSERT INTO pitr_marker (at) VALUES (clock_timestamp()) RETURNING id, at"
WRITER = "while :; do psql -XAtq -c '" + INSERT + "' || exit 0; sleep " + str(WRITE_EVERY) + "; done"


@dataclasses.dataclass
class Writer:
    proc: subprocess.Popen[str]
    acked: list[tuple[int, dt.datetime]] = dataclasses.field(default_factory=list)

    def read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            m = re.match(r"^(\d+)\|(.+)$", line.strip())
            if m:
                self.acked.append((int(m.group(1)), dt.datetime.fromisoformat(m.group(2))))

    def wait_for(self, n: int, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while len(self.acked) < n:
            assert time.monotonic() < deadline, f"the writer acknowledged {len(self.acked)} of {n} rows"
            time.sleep(0.05)


STATE: dict[str, object] = {}


def playbook(*extra: str) -> subprocess.CompletedProcess[str]:
    project = Path(os.environ["MOLECULE_PROJECT_DIRECTORY"])
    env = {
        **os.environ,
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_FORCE_COLOR": "0",
        "ANSIBLE_ROLES_PATH": str(project / "roles"),
        "PGOPS_DIST": str(project / "dist"),
    }
    argv = ["ansible-playbook", "--inventory", os.environ["MOLECULE_INVENTORY_FILE"]]
    argv += [str(project / "playbooks" / "pitr-restore.yml"), "-e", f"pgops_pitr_host={NEW12}", *extra]
    return subprocess.run(argv, capture_output=True, text=True, env=env, check=False, timeout=1800)


def markers(host: object) -> set[int]:
    return {int(x) for x in psql(host, "SELECT id FROM pitr_marker").split()}


def test_db12_written_to_during_a_backup_then_killed_after_t() -> None:
    db12 = host_of(DB12)
    psql(db12, "CREATE TABLE pitr_marker (id bigserial PRIMARY KEY, at timestamptz NOT NULL)")
    proc = subprocess.Popen(
        ["podman", "exec", DB12, "runuser", "-u", "postgres", "--", "bash", "-c", WRITER],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    writer = Writer(proc)
    threading.Thread(target=writer.read, daemon=True).start()
    writer.wait_for(10)
    # A differential backup while the writer commits (its WAL range holds writes).
    run_as_postgres(db12, [PGOPS, "physical-backup", "--type", "diff", "--env-file", ENV])
    writer.wait_for(len(writer.acked) + 20)
    # T: half-way between two commits, on the server's clock (the commit times are the server's).
    k = len(writer.acked)
    writer.wait_for(k + 1)
    t = writer.acked[k - 1][1] + (writer.acked[k][1] - writer.acked[k - 1][1]) / 2
    # One archive_timeout and a margin after T: a segment switch after T puts T's WAL in the repository.
    time.sleep(ARCHIVE_TIMEOUT + 5)
    subprocess.run(["podman", "kill", "--signal", "KILL", DB12], check=True, capture_output=True)
    proc.wait(timeout=30)
    time.sleep(0.5)
    acked = list(writer.acked)
    assert len(acked) > 150 and acked[-1][1] > t + dt.timedelta(seconds=ARCHIVE_TIMEOUT)
    STATE.update(acked=acked, t=t)


def test_an_unreachable_old_primary_stops_the_restore_before_anything_changes() -> None:
    run = playbook()
    output = run.stdout + run.stderr
    assert run.returncode != 0, output[-3000:]
    assert f"{DB12} (stanza {DB12}) cannot be reached" in output, output[-3000:]
    assert "Nothing was restored" in output
    new12 = host_of(NEW12)
    assert not new12.package("postgresql-15").is_installed
    assert not new12.file("/etc/pgbackrest/pgbackrest.conf").exists


def test_restore_to_latest_on_a_new_host_loses_at_most_one_archive_timeout() -> None:
    acked: list[tuple[int, dt.datetime]] = STATE["acked"]  # type: ignore[assignment]
    run = playbook("-e", "pgops_pitr_old_primary_lost=true")
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    rto = re.search(r'rto_seconds\\?": ([0-9.]+)', run.stdout)
    assert rto, run.stdout[-3000:]
    new12 = host_of(NEW12)
    present = markers(new12)
    ids = [i for i, _ in acked]
    missing = [i for i in ids if i not in present]
    # What is lost is the newest writes only (a suffix of the acknowledged ones), never a hole.
    assert missing == ids[len(ids) - len(missing) :], missing[:10]
    lost_seconds = (acked[-1][1] - acked[len(ids) - len(missing) - 1][1]).total_seconds() if missing else 0.0
    print(f"RPO: {len(missing)} of {len(ids)} acknowledged markers lost ({lost_seconds:.1f} s); RTO {rto.group(1)} s")
    assert lost_seconds <= ARCHIVE_TIMEOUT + 5, (len(missing), lost_seconds)
    assert psql(new12, "SELECT pg_is_in_recovery()").strip() == "f"
    # The new timeline archives into db12's stanza without errors (pgBackRest's check ran in the play, too).
    psql(new12, "SELECT pg_switch_wal()")
    deadline = time.monotonic() + 60
    while psql(new12, "SELECT archived_count FROM pg_stat_archiver").strip() == "0":
        assert time.monotonic() < deadline, "new12 archived nothing"
        time.sleep(1)
    assert psql(new12, "SELECT failed_count FROM pg_stat_archiver").strip() == "0"
    stanza = info(new12, DB12)
    assert stanza["status"]["code"] == 0
    assert any(a["max"].startswith("00000002") for a in stanza["archive"] if a.get("max")), stanza["archive"]
    assert new12.file("/etc/cron.d/pgops-pgbackrest").contains("physical-backup --type full")


def test_restore_to_t_keeps_every_marker_up_to_t_and_none_after() -> None:
    acked: list[tuple[int, dt.datetime]] = STATE["acked"]  # type: ignore[assignment]
    t: dt.datetime = STATE["t"]  # type: ignore[assignment]
    lost, replace = "pgops_pitr_old_primary_lost=true", "pgops_pitr_replace=true"
    run = playbook("-e", lost, "-e", replace, "-e", f"pgops_pitr_time={t.isoformat()}")
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    present = markers(host_of(NEW12))
    before = {i for i, at in acked if at <= t}
    after = {i for i, at in acked if at > t}
    assert before and after
    assert before <= present, sorted(before - present)[:10]
    assert not (after & present), sorted(after & present)[:10]
