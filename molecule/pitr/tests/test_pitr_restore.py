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
import json
import re
import subprocess
import threading
import time
from typing import Any

from tests.fixtures.instances import ansible_playbook, psql, run_as_postgres

from conftest import DB12, STORE, archiver, host_of, info

testinfra_hosts = [f"podman://{DB12}"]
NEW12 = "pgops-pitr-new12"
PGOPS = "/opt/pgops/venv/bin/pgops"
ENV = "/etc/pgops/pgops.env"
ARCHIVE_TIMEOUT = 10  # host_vars/pgops-pitr-db12.yml
OUTAGE = 120  # seconds without the store (RELIABILITY.md case 37: "unreachable for minutes")
PROM = "/var/lib/pgops/metrics/pgops.prom"
PGWAL = "/var/lib/postgresql/15/main/pg_wal"
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
    return ansible_playbook("pitr-restore.yml", "-e", f"pgops_pitr_host={NEW12}", *extra)


def markers(host: object) -> set[int]:
    return {int(x) for x in psql(host, "SELECT id FROM pitr_marker").split()}


@dataclasses.dataclass
class Sample:
    """One `pgops status` on db12 during the store outage: its exit code, its text, and the RPO gauge it wrote."""

    at: float  # seconds into the outage when it ended
    rc: int
    stdout: str
    text: str  # stdout and stderr
    rpo_gauge: float | None


def status(db12: Any, started: float, *options: str) -> Sample:
    # With the repository unreachable, `pgbackrest info` retries each of its four info files until io-timeout
    # (60 s by default): one `pgops status` took 4 min 1 s here before the view passed its own short io-timeout
    # (pgbackrest.INFO_IO_TIMEOUT). A run must fit in the refresh job's minute.
    t0 = time.monotonic()
    result = db12.run(f"runuser -u postgres -- {PGOPS} status --env-file {ENV} {' '.join(options)}")
    took = time.monotonic() - t0
    assert took < 60, f"pgops status took {took:.0f} s"
    gauge = re.search(r"^pgops_rpo_seconds(?:\{[^}]*\})? ([0-9.e+]+)$", db12.file(PROM).content_string, re.M)
    at = time.monotonic() - started
    return Sample(at, result.rc, result.stdout, result.stdout + result.stderr, gauge and float(gauge.group(1)))


def store_outage(db12: Any, writer: Writer) -> None:
    """RELIABILITY.md case 37: the S3 front (HAProxy's TLS, the only way to the repository) is stopped for
    OUTAGE seconds while the writer commits. `pgops status` is run over and over meanwhile, as a monitoring job
    would. Then the store comes back, and archiving must catch up before this returns."""
    store = host_of(STORE)
    before = status(db12, time.monotonic())
    first = len(writer.acked)
    started = time.monotonic()
    assert store.run("systemctl stop pgops-s3-tls").rc == 0
    samples: list[Sample] = []
    ready_max = 0
    try:
        while time.monotonic() - started < OUTAGE:
            samples.append(status(db12, started))
            ready = db12.run(f"ls {PGWAL}/archive_status | grep -c '\\.ready$'").stdout.strip()
            ready_max = max(ready_max, int(ready or 0))
            time.sleep(max(0.0, min(10.0, OUTAGE - (time.monotonic() - started))))
    finally:
        assert store.run("systemctl start pgops-s3-tls").rc == 0
    back = time.monotonic()
    during = [i for i, _ in writer.acked[first:]]
    # Archiving catches up: every segment written during the outage is archived, and failures stop.
    segment = psql(db12, "SELECT pg_walfile_name(pg_current_wal_lsn())").strip()
    while archiver(db12)[2] < segment:
        assert time.monotonic() - back < 180, f"{segment} not archived 180 s after the outage: {archiver(db12)}"
        time.sleep(1)
    caught_up = time.monotonic() - back
    failed = archiver(db12)[1]
    time.sleep(ARCHIVE_TIMEOUT + 2)
    assert archiver(db12)[1] == failed, "archive_command still fails after the store came back"
    after = status(db12, started, "--json")
    rpo_after = json.loads(after.stdout)
    gauges = [s.rpo_gauge for s in samples if s.rpo_gauge is not None]
    print(
        f"Store outage {back - started:.0f} s: {len(during)} markers committed meanwhile; {len(samples)} status runs "
        f"({', '.join(f'{s.at:.0f}s rc={s.rc} rpo={s.rpo_gauge}' for s in samples)}); max RPO gauge "
        f"{max(gauges, default=0):.0f} s; up to {ready_max} WAL file(s) waiting in pg_wal; {failed} archive "
        f"failures; caught up {caught_up:.0f} s after the store returned; RPO then {after.rpo_gauge} s"
    )
    # During the outage status said so: exit 11, archiving failing by name, and the RPO gauge growing.
    failing = [s for s in samples if s.rc == 11 and "WAL archiving is failing" in s.text]
    assert failing, [(s.at, s.rc, s.text[-600:]) for s in samples]
    assert before.rpo_gauge is not None and max(gauges) > before.rpo_gauge + 30, (before.rpo_gauge, gauges)
    assert ready_max >= 1 and failed >= 1
    # And once the store is back, it is all over: not failing, RPO back within archive_timeout and a margin.
    archive = rpo_after["physical"]["archiver"]
    assert not archive["failing"] and archive["rpo_seconds"] <= ARCHIVE_TIMEOUT + 10, archive
    assert after.rpo_gauge is not None and after.rpo_gauge <= ARCHIVE_TIMEOUT + 10
    STATE["outage"] = during


def test_db12_written_to_during_a_backup_and_a_store_outage_then_killed_after_t() -> None:
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
    store_outage(db12, writer)
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
    outage: list[int] = STATE["outage"]  # type: ignore[assignment]
    assert outage and set(outage) <= present, sorted(set(outage) - present)[:10]
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


def timeline1_segments(host: Any) -> set[str]:
    """The timeline-1 WAL files in db12's stanza, as pgBackRest lists the repository (repo-ls)."""
    out = run_as_postgres(host, ["pgbackrest", f"--stanza={DB12}", "repo-ls", "--recurse", f"archive/{DB12}"])
    return {m.group(1) for m in re.finditer(r"\b(00000001[0-9A-F]{16})-[0-9a-f]{40}", out)}


def test_the_old_primary_comes_back_with_archiving_on_and_the_old_timeline() -> None:
    """The killed db12 is started again after new12 took the stanza over: its PostgreSQL comes up by itself
    (enabled, crash recovery) on timeline 1 with archive_mode on. What it does to the repository before anyone
    fences it is recorded here (and printed)."""
    new12 = host_of(NEW12)
    before = timeline1_segments(new12)
    subprocess.run(["podman", "start", DB12], check=True, capture_output=True)
    db12 = host_of(DB12)
    up = time.monotonic()
    while db12.run("runuser -u postgres -- pg_isready -q").rc != 0:
        assert time.monotonic() - up < 120, "db12's PostgreSQL did not come back"
        time.sleep(1)
    assert psql(db12, "SELECT pg_is_in_recovery()").strip() == "f"
    assert psql(db12, "SHOW archive_mode").strip() == "on"
    assert psql(db12, "SELECT timeline_id FROM pg_control_checkpoint()").strip() == "1"
    # The window before the fence, quiet: three archive_timeouts. Measured (2026-12-03): nothing archived, nothing
    # failed, no WAL file added to the stanza. The segment it was writing when killed is incomplete, and the
    # end-of-recovery checkpoint alone does not make archive_timeout switch.
    time.sleep(3 * ARCHIVE_TIMEOUT)
    quiet = archiver(db12), sorted(timeline1_segments(new12) - before)
    # Then one client writes to it (an application that still points at it) and the segment is switched.
    psql(db12, "INSERT INTO pitr_marker (at) VALUES (clock_timestamp())")
    psql(db12, "SELECT pg_switch_wal()")
    time.sleep(ARCHIVE_TIMEOUT)
    written = archiver(db12), sorted(timeline1_segments(new12) - before)
    print(
        f"db12 back before the fence: quiet for {3 * ARCHIVE_TIMEOUT} s: (archived, failed, last) {quiet[0]}, "
        f"timeline-1 WAL files added to the stanza {quiet[1] or 'none'}; after one write and a switch: "
        f"{written[0]}, added {written[1] or 'none'}"
    )


def test_restore_to_t_fences_the_reachable_old_primary_and_keeps_every_marker_up_to_t_and_none_after() -> None:
    acked: list[tuple[int, dt.datetime]] = STATE["acked"]  # type: ignore[assignment]
    t: dt.datetime = STATE["t"]  # type: ignore[assignment]
    # db12 answers now: the play must fence it by itself, without pgops_pitr_old_primary_lost.
    run = playbook("-e", "pgops_pitr_replace=true", "-e", f"pgops_pitr_time={t.isoformat()}")
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    present = markers(host_of(NEW12))
    before = {i for i, at in acked if at <= t}
    after = {i for i, at in acked if at > t}
    assert before and after
    assert before <= present, sorted(before - present)[:10]
    assert not (after & present), sorted(after & present)[:10]
    # db12 is fenced: PostgreSQL stopped and disabled, its cluster disabled, pgBackRest stopped for the stanza.
    db12 = host_of(DB12)
    assert not db12.service("postgresql@15-main").is_running
    assert not db12.service("postgresql").is_enabled
    assert db12.file("/etc/postgresql/15/main/start.conf").content_string.strip().endswith("disabled")
    segment = db12.run(f"ls {PGWAL} | grep -E '^[0-9A-F]{{24}}$' | tail -1").stdout.strip()
    assert segment
    listed = timeline1_segments(host_of(NEW12))
    push = db12.run(f"runuser -u postgres -- pgbackrest --stanza={DB12} archive-push {PGWAL}/{segment}")
    assert push.rc != 0 and "stop file exists" in push.stdout + push.stderr, (push.rc, push.stdout, push.stderr)
    assert timeline1_segments(host_of(NEW12)) == listed
