"""`pgops physical-restore` (RELIABILITY.md case 38): point-in-time recovery with real pgBackRest 2.45, a real
primary killed with SIGKILL, a restore to a time onto a new data directory (a drill), and a restore to the
latest WAL onto the lost primary's own directory; plus the refusals, each with nothing changed."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import psycopg

from pgops.errors import ExitCode
from tests.fixtures.pg import Cluster, free_port
from tests.fixtures.pgbackrest_run import PgopsAsPostgres, Repo, archive_command, kill_hard, pg_ctl, postgres_dir

log = logging.getLogger(__name__)

ARCHIVE_TIMEOUT = 1  # archive_timeout of the fixture's primary, seconds
WRITE_EVERY = 0.1  # the writer commits one marker every 100 ms


@dataclasses.dataclass
class MarkerWriter:
    """Commits one row every 100 ms and records each acknowledged (id, at). On request it notes a time T
    from the server's clock half-way between two commits, so every marker is clearly before or after it."""

    dsn: str
    acked: list[tuple[int, dt.datetime]] = dataclasses.field(default_factory=list)
    mark_at: dt.datetime | None = None
    _want_mark: threading.Event = dataclasses.field(default_factory=threading.Event)
    _marked: threading.Event = dataclasses.field(default_factory=threading.Event)
    _stop: threading.Event = dataclasses.field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="marker-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            with psycopg.connect(self.dsn, autocommit=True) as c:
                while not self._stop.is_set():
                    row = c.execute("INSERT INTO marker (at) VALUES (clock_timestamp()) RETURNING id, at").fetchone()
                    assert row is not None
                    self.acked.append((row[0], row[1]))
                    if self._want_mark.is_set() and not self._marked.is_set():
                        time.sleep(WRITE_EVERY / 2)
                        (now,) = c.execute("SELECT clock_timestamp()").fetchone() or (None,)
                        self.mark_at = now
                        self._marked.set()
                        time.sleep(WRITE_EVERY / 2)
                    else:
                        time.sleep(WRITE_EVERY)
        except psycopg.Error:
            pass  # the server was killed: what was acknowledged is recorded

    def mark(self) -> dt.datetime:
        self._want_mark.set()
        assert self._marked.wait(10), "the writer never noted T"
        assert self.mark_at is not None
        return self.mark_at

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)


def _markers(dsn: str) -> set[int]:
    with psycopg.connect(dsn, autocommit=True) as c:
        return {r[0] for r in c.execute("SELECT id FROM marker").fetchall()}


def _start_as_new_host(data: Path, port: int, sockdir: Path, command: str) -> None:
    """What the new host's own configuration says (its port, socket and archive_command with its own
    pgbackrest.conf), after the restored copy of the old primary's postgresql.conf."""
    with (data / "postgresql.conf").open("a") as f:
        f.write(f"port = {port}\nunix_socket_directories = '{sockdir}'\nlisten_addresses = ''\n")
        f.write(f"archive_command = '{command}'\n")
    pg_ctl(data, "start")


def _archiver(dsn: str) -> dict[str, Any]:
    with psycopg.connect(dsn, autocommit=True) as c:
        cur = c.execute("SELECT archived_count, failed_count, last_archived_wal, last_failed_wal FROM pg_stat_archiver")
        row = cur.fetchone()
        assert row is not None and cur.description is not None
        return dict(zip([d.name for d in cur.description], row, strict=True))


def _switch_wal(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("CREATE TABLE IF NOT EXISTS after_restore (x int)")
        c.execute("INSERT INTO after_restore VALUES (1)")
        c.execute("SELECT pg_switch_wal()")


def _state(pgops_pg: PgopsAsPostgres) -> Path:
    return Path(pgops_pg.env["PGOPS_PGBACKREST_CONFIG"]).parent / "state"


def test_pitr_to_a_time_then_to_latest_after_losing_the_primary(
    pgops_pg: PgopsAsPostgres, pgbr_repo: Repo, pgbr_primary: Cluster
) -> None:
    primary = pgbr_primary
    primary.execute("postgres", "CREATE TABLE marker (id serial PRIMARY KEY, at timestamptz NOT NULL)")
    writer = MarkerWriter(primary.dsn("postgres"))
    writer.start()
    try:
        backup = pgops_pg.run(["physical-backup", "--type", "full"])
        assert backup.returncode == 0, backup.stderr
        time.sleep(2)
        t = writer.mark()
        time.sleep(3)
        kill_hard(primary.data)  # no clean shutdown, no last archive_command
    finally:
        writer.stop()
    (label,) = [b["label"] for b in pgbr_repo.backups()]
    before_t = {i for i, at in writer.acked if at <= t}
    after_t = {i for i, at in writer.acked if at > t}
    assert len(before_t) > 20 and len(after_t) > 20, (len(before_t), len(after_t))
    state_dir = _state(pgops_pg)

    # 1. A new host, to time T, as a drill: every marker up to T, none after, and nothing pushed to the repo.
    new_root = postgres_dir("pgops-newhost-")
    try:
        _restore_to_time_on_a_new_host(
            pgops_pg, pgbr_repo=pgbr_repo, new_root=new_root, t=t, label=label, before_t=before_t, after_t=after_t
        )
    finally:
        pg_ctl(new_root / "data", "-m", "immediate", "stop", check=False)
        shutil.rmtree(new_root, ignore_errors=True)

    # 2. The same host after the loss, to the end of the archived WAL: what is missing is the RPO.
    data_before = sorted(p.name for p in primary.data.iterdir())
    refused = pgops_pg.run(["physical-restore", "--state-dir", str(state_dir)])
    assert refused.returncode == ExitCode.REFUSED, refused.stderr
    assert "is not empty; pass --replace" in refused.stderr and "nothing was changed" in refused.stderr
    assert sorted(p.name for p in primary.data.iterdir()) == data_before
    assert not (state_dir / "physical-restore.json").exists()

    archive_before = pgbr_repo.archive_files()
    latest = pgops_pg.run(["physical-restore", "--to", "latest", "--replace", "--state-dir", str(state_dir)])
    assert latest.returncode == 0, latest.stderr
    assert "event=physical_restore_stale_pid_removed" in latest.stderr
    state = json.loads((state_dir / "physical-restore.json").read_text())
    assert state["target"] == {"type": "latest", "value": None} and state["drill"] is False

    # --finish before anyone started the server: a clear failure, and the state is kept for the next try
    early = pgops_pg.run(["physical-restore", "--finish", "--timeout", "2", "--state-dir", str(state_dir)])
    assert early.returncode == ExitCode.POSTGRES, early.stderr
    assert "not up and promoted within --timeout=2s" in early.stderr
    assert (state_dir / "physical-restore.json").exists()

    primary.start()
    finish = pgops_pg.run(["physical-restore", "--finish", "--timeout", "120", "--state-dir", str(state_dir)])
    assert finish.returncode == 0, finish.stderr
    assert not (state_dir / "physical-restore.json").exists()
    acked = [i for i, _ in writer.acked]
    present = _markers(primary.dsn("postgres"))
    lost = [i for i in acked if i not in present]
    assert lost == acked[len(acked) - len(lost) :], "only the newest markers may be lost, never one in the middle"
    log.warning(
        "measured RPO: %d of %d acknowledged markers lost (%.1f s of writes)",
        len(lost),
        len(acked),
        len(lost) * WRITE_EVERY,
    )
    print(f"measured RPO: {len(lost)} acknowledged markers lost ({len(lost) * WRITE_EVERY:.1f} s of writes)")
    assert len(lost) <= (ARCHIVE_TIMEOUT + 3) / WRITE_EVERY, f"RPO too large: {len(lost)} markers lost"

    # 3. Not a drill: the new timeline archives into the repository, with no duplicate-WAL errors.
    _switch_wal(primary.dsn("postgres"))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        archiver = _archiver(primary.dsn("postgres"))
        if (archiver["last_archived_wal"] or "").startswith("00000002") or archiver["failed_count"]:
            break
        time.sleep(0.2)
    assert archiver["failed_count"] == 0, archiver
    assert (archiver["last_archived_wal"] or "").startswith("00000002"), archiver
    new_files = pgbr_repo.archive_files() - archive_before
    assert any(f.endswith("/00000002.history") for f in new_files), sorted(new_files)
    # and the restored primary goes on with its schedule: a differential on top of the same full
    diff = pgops_pg.run(["physical-backup", "--type", "diff"])
    assert diff.returncode == 0, diff.stderr
    assert [b["type"] for b in pgbr_repo.backups()] == ["full", "diff"]

    prom = (Path(pgops_pg.env["PGOPS_METRICS_DIR"]) / "pgops.prom").read_text()
    for kind in ("drill", "restore"):
        assert f'pgops_physical_restore_last_rto_seconds{{database="@pgbackrest/{kind}",target="testhost"}}' in prom


def _restore_to_time_on_a_new_host(
    pgops_pg: PgopsAsPostgres,
    *,
    pgbr_repo: Repo,
    new_root: Path,
    t: dt.datetime,
    label: str,
    before_t: set[int],
    after_t: set[int],
) -> None:
    state_dir = _state(pgops_pg)
    new_data, new_port = new_root / "data", free_port()
    new_conf = pgbr_repo.host_conf(pgbr_repo.root / "newhost.conf", new_data, new_root, new_port)
    archive_before = pgbr_repo.archive_files()
    restore = pgops_pg.run(  # no --pgdata: the new host's pg1-path
        ["physical-restore", "--to-time", t.isoformat(), "--drill", "--state-dir", str(state_dir)],
        extra={"PGOPS_PGBACKREST_CONFIG": str(new_conf)},
    )
    assert restore.returncode == 0, restore.stderr
    state = json.loads((state_dir / "physical-restore.json").read_text())
    assert state["target"] == {"type": "time", "value": t.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S.%f+00")}
    assert state["set"] == label and state["drill"] is True and state["pgdata"] == str(new_data)
    _start_as_new_host(new_data, new_port, new_root, archive_command(pgbr_repo, new_conf))
    new_conninfo = f"host={new_root} port={new_port} user=postgres"
    finish = pgops_pg.run(
        ["physical-restore", "--finish", "--timeout", "120", "--json", "--state-dir", str(state_dir)],
        extra={"PGOPS_PG_CONNINFO": new_conninfo},
    )
    assert finish.returncode == 0, finish.stderr
    done = json.loads(finish.stdout)
    assert done["target"]["type"] == "time" and done["set"] == label and done["drill"] is True
    assert done["rto_seconds"] > 0 and "postgres" in done["databases"]
    new_dsn = f"{new_conninfo} dbname=postgres"
    present = _markers(new_dsn)
    assert before_t <= present, f"{len(before_t - present)} markers committed before T are missing"
    assert not present & after_t, f"{len(present & after_t)} markers committed after T are present"
    with psycopg.connect(new_dsn, autocommit=True) as c:
        assert c.execute("SHOW archive_mode").fetchone() == ("off",)
    _switch_wal(new_dsn)
    time.sleep(ARCHIVE_TIMEOUT + 2)
    archiver = _archiver(new_dsn)
    assert (archiver["archived_count"], archiver["failed_count"]) == (0, 0), archiver
    assert pgbr_repo.archive_files() == archive_before, "a drill wrote into the repository"
    log.info("pitr to time: %d markers before T restored, %d after T absent", len(before_t), len(after_t))


def _tree(path: Path) -> list[tuple[str, int, int]]:
    """Every entry under path with its size and mtime: "nothing changed" compares these."""
    return sorted((str(p.relative_to(path)), p.lstat().st_size, p.lstat().st_mtime_ns) for p in path.rglob("*"))


def test_refusals_change_nothing(pgops_pg: PgopsAsPostgres, pgbr_repo: Repo, pgbr_primary: Cluster) -> None:
    state_dir = _state(pgops_pg)
    state = state_dir / "physical-restore.json"
    running_before = _tree(pgbr_primary.data / "global")
    pid_before = (pgbr_primary.data / "postmaster.pid").read_text()

    # a server running on the data directory: refused even with --replace
    on_running = pgops_pg.run(["physical-restore", "--replace", "--state-dir", str(state_dir)])
    assert on_running.returncode == ExitCode.REFUSED, on_running.stderr
    assert "a PostgreSQL server is running on" in on_running.stderr and "nothing was changed" in on_running.stderr
    assert (pgbr_primary.data / "postmaster.pid").read_text() == pid_before
    assert _tree(pgbr_primary.data / "global") == running_before
    assert pgbr_primary.execute("postgres", "SELECT 1") == [(1,)]

    # a non-empty directory without --replace
    other = postgres_dir("pgops-nonempty-")
    try:
        (other / "keep.txt").write_text("an operator's file\n")
        other_before = _tree(other)
        nonempty = pgops_pg.run(["physical-restore", "--pgdata", str(other), "--state-dir", str(state_dir)])
        assert nonempty.returncode == ExitCode.REFUSED, nonempty.stderr
        assert "is not empty; pass --replace" in nonempty.stderr
        assert _tree(other) == other_before

        # bad input: one line naming the option and what is valid, before anything happens
        empty = other / "empty"
        empty.mkdir()
        bad = {
            ("--to-time", "2026-12-03 10:00:00"): "--to-time='2026-12-03 10:00:00' is not a time with a zone",
            ("--to-time", "yesterday"): "--to-time='yesterday' is not a time with a zone",
            ("--to-lsn", "0/XYZ"): "--to-lsn='0/XYZ' is not an LSN; valid: two hex numbers",
            ("--to", "yesterday"): "--to='yesterday' is not valid; valid: latest, immediate",
            ("--to-name", ""): "--to-name='' is not a restore point name",
            ("--set", "latest-ish"): "--set='latest-ish' is not a pgBackRest backup label",
        }
        for (option, value), message in bad.items():
            result = pgops_pg.run(
                ["physical-restore", option, value, "--pgdata", str(empty), "--state-dir", str(state_dir)]
            )
            assert result.returncode == ExitCode.CONFIG, (option, value, result.stderr)
            lines = [line for line in result.stderr.splitlines() if line.strip()]
            assert len(lines) == 1 and message in lines[0], (message, lines)
        both = pgops_pg.run(["physical-restore", "--to", "latest", "--to-lsn", "0/1", "--pgdata", str(empty)])
        assert both.returncode == ExitCode.CONFIG and "--to and --to-lsn were both given" in both.stderr
        assert list(empty.iterdir()) == []
        assert _tree(other) == sorted([*other_before, ("empty", empty.lstat().st_size, empty.lstat().st_mtime_ns)])
    finally:
        shutil.rmtree(other, ignore_errors=True)
    assert not state.exists()
    finish = pgops_pg.run(["physical-restore", "--finish", "--state-dir", str(state_dir)])
    assert finish.returncode == ExitCode.CONFIG and "no physical restore to finish" in finish.stderr


def _switch_and_wait_archived(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as c:
        (segment,) = c.execute("SELECT pg_walfile_name(pg_switch_wal())").fetchone() or ("",)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            (last,) = c.execute("SELECT last_archived_wal FROM pg_stat_archiver").fetchone() or (None,)
            if last is not None and last >= segment:
                return
            time.sleep(0.1)
    raise AssertionError(f"segment {segment} was not archived within 30 s")


def test_restore_point_lsn_and_immediate_targets(
    pgops_pg: PgopsAsPostgres, pgbr_repo: Repo, pgbr_primary: Cluster
) -> None:
    """The other targets, each onto the same scratch directory (--replace after the first): a named restore
    point (the "undo the migration" of backup.yml), an LSN, and the end of the backup (immediate)."""
    primary = pgbr_primary
    primary.execute("postgres", "CREATE TABLE step (name text PRIMARY KEY)")
    primary.execute("postgres", "INSERT INTO step VALUES ('in-backup')")
    assert pgops_pg.run(["physical-backup", "--type", "full"]).returncode == 0
    primary.execute("postgres", "INSERT INTO step VALUES ('before-migration')")
    primary.execute("postgres", "SELECT pg_create_restore_point('before-migration')")
    primary.execute("postgres", "INSERT INTO step VALUES ('lsn-included')")
    ((lsn,),) = primary.execute("postgres", "SELECT pg_current_wal_insert_lsn()::text")
    primary.execute("postgres", "INSERT INTO step VALUES ('after-all-targets')")
    _switch_and_wait_archived(primary.dsn("postgres"))

    root = postgres_dir("pgops-targets-")
    data, port = root / "data", free_port()
    conf = pgbr_repo.host_conf(pgbr_repo.root / "scratch.conf", data, root, port)
    state_dir = str(_state(pgops_pg))
    dsn = f"host={root} port={port} user=postgres dbname=postgres"
    expected = {
        ("--to-name", "before-migration"): {"in-backup", "before-migration"},
        ("--to-lsn", lsn): {"in-backup", "before-migration", "lsn-included"},
        ("--to", "immediate"): {"in-backup"},
    }
    try:
        for i, ((option, value), steps) in enumerate(expected.items()):
            args = ["physical-restore", option, value, "--drill", "--state-dir", state_dir]
            restore = pgops_pg.run(args + (["--replace"] if i else []), extra={"PGOPS_PGBACKREST_CONFIG": str(conf)})
            assert restore.returncode == 0, (option, restore.stderr)
            _start_as_new_host(data, port, root, archive_command(pgbr_repo, conf))
            finish = pgops_pg.run(
                ["physical-restore", "--finish", "--timeout", "120", "--state-dir", state_dir],
                extra={"PGOPS_PG_CONNINFO": dsn.removesuffix(" dbname=postgres")},
            )
            assert finish.returncode == 0, (option, finish.stderr)
            with psycopg.connect(dsn, autocommit=True) as c:
                got = {r[0] for r in c.execute("SELECT name FROM step").fetchall()}
                assert c.execute("SELECT pg_is_in_recovery()").fetchone() == (False,)
            assert got == steps, (option, value, got)
            pg_ctl(data, "-m", "fast", "stop")
    finally:
        pg_ctl(data, "-m", "immediate", "stop", check=False)
        shutil.rmtree(root, ignore_errors=True)
