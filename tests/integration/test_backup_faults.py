"""RELIABILITY.md lines 1-4, 7-10: faults during a backup are caused for real and leave nothing behind."""

from __future__ import annotations

import contextlib
import os
import signal
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pgops.errors import ExitCode
from tests.fixtures.engine import Engine
from tests.fixtures.pg import SUPERUSER_PASSWORD, Cluster

BIG_DB = "big_for_faults"


@pytest.fixture(scope="module")
def big_db(pg: Cluster) -> str:
    if BIG_DB not in pg.databases():
        pg.create_database(BIG_DB)
        pg.pgbench_init(BIG_DB, scale=5)
    return BIG_DB


def children(pid: int, name: str, arg: str = "") -> list[int]:
    found = []
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat_file.read_text().rsplit(")", 1)[1].split()
            comm = stat_file.read_text().split("(", 1)[1].rsplit(")", 1)[0]
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid and comm == name:
            try:
                cmdline = (stat_file.parent / "cmdline").read_bytes().decode()
            except OSError:
                continue
            if arg in cmdline:
                found.append(int(stat_file.parent.name))
    return found


def wait_for(predicate, timeout: float = 30, what: str = "condition"):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


@contextlib.contextmanager
def frozen(pid: int) -> Iterator[None]:
    """SIGSTOP a running pgops so it is certainly mid-stream (pg_dump blocks on the full pipe) while
    the test applies its fault; SIGCONT afterwards. This removes every timing race from these tests."""
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


def slow_backup(engine: Engine, db: str):  # type: ignore[no-untyped-def]
    """A backup that is certainly still streaming when we strike: uncompressed, so many parts upload."""
    return engine.popen(["backup", "--databases", db, "--no-globals", "--compression", "none"])


def test_pg_dump_killed_mid_stream_aborts_upload(engine: Engine, big_db: str) -> None:
    proc = slow_backup(engine, big_db)
    wait_for(engine.leftovers, what="an upload in progress")
    dump_pid = wait_for(lambda: children(proc.pid, "pg_dump", "--format=custom"), what="pg_dump")[0]
    with frozen(proc.pid):
        os.kill(dump_pid, signal.SIGKILL)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == ExitCode.POSTGRES, err
    assert "pg_dump was killed by signal 9" in err
    assert engine.keys() == []  # no manifest, no data object under the final key
    assert engine.leftovers() == []  # multipart aborted / temp file removed


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_mid_upload_aborts_and_reaps(engine: Engine, big_db: str, sig: signal.Signals) -> None:
    proc = slow_backup(engine, big_db)
    wait_for(engine.leftovers, what="an upload in progress")
    dump_pid = wait_for(lambda: children(proc.pid, "pg_dump", "--format=custom"), what="pg_dump")[0]
    with frozen(proc.pid):
        proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == (ExitCode.TERMINATED if sig == signal.SIGTERM else ExitCode.INTERRUPTED), err
    assert not Path(f"/proc/{dump_pid}").exists() or "pg_dump" not in Path(f"/proc/{dump_pid}/comm").read_text()
    assert engine.keys() == []
    assert engine.leftovers() == []


def _fake_bindir(tmp: Path, pg: Cluster, body: str) -> Path:
    """A pg_dump that exits 0 with bad output: the one fault a real pg_dump will not produce on demand."""
    d = tmp / "fakebin"
    d.mkdir(exist_ok=True)
    script = d / "pg_dump"
    script.write_text(f'#!/bin/sh\nif [ "$1" = --version ]; then exec {pg.bindir}/pg_dump --version; fi\n{body}\n')
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return d


@pytest.mark.parametrize(
    "body",
    [
        "exit 0",  # empty output, exit 0
        '{bindir}/pg_dump "$@" | head -c 300000; exit 0',  # truncated mid-data, exit 0
        '{bindir}/pg_dump "$@"; exit 3',  # complete output, but pg_dump reports failure
    ],
    ids=["empty", "truncated", "nonzero-exit"],
)
def test_bad_dump_is_failed_never_committed(engine: Engine, pg: Cluster, big_db: str, body: str) -> None:
    bindir = _fake_bindir(engine.tmp, pg, body.format(bindir=pg.bindir))
    result = engine.run(["backup", "--databases", big_db, "--no-globals"], extra={"PGOPS_PG_BINDIR": str(bindir)})
    assert result.returncode in (ExitCode.INTEGRITY, ExitCode.POSTGRES), result.stderr
    assert engine.keys() == []
    assert engine.leftovers() == []


def test_overlapping_runs_second_gets_lock_held(engine: Engine, pg: Cluster, big_db: str) -> None:
    first = slow_backup(engine, big_db)
    wait_for(lambda: children(first.pid, "pg_dump", "--format=custom"), what="first backup's pg_dump")
    with frozen(first.pid):
        second = engine.run(["backup", "--databases", big_db, "--no-globals"])
    assert second.returncode == ExitCode.LOCK_HELD, second.stderr
    assert "holds the lock" in second.stderr
    _, err = first.communicate(timeout=120)
    assert first.returncode == 0, err
    listed = engine.run(["list", "--json"], check=True).stdout
    assert listed.count('"id"') == 1  # exactly the first run's backup, intact
    try:
        engine.run(["restore", "--database", big_db, "--target-db", "overlap_check"], check=True)
        assert pg.execute("overlap_check", "SELECT count(*) FROM pgbench_accounts") == [(500000,)]
    finally:
        pg.drop_database("overlap_check")


def test_unknown_setting_and_bad_value_fail_before_work(engine: Engine) -> None:
    typo = engine.run(["backup"], extra={"PGOPS_COMPRESION": "zstd"})
    assert typo.returncode == ExitCode.CONFIG
    assert "PGOPS_COMPRESION" in typo.stderr and "did you mean PGOPS_COMPRESSION" in typo.stderr
    bad = engine.run(["backup"], extra={"PGOPS_COMPRESSION": "lz4"})
    assert bad.returncode == ExitCode.CONFIG
    assert "valid values: zstd, gzip, none" in bad.stderr
    level = engine.run(["backup"], extra={"PGOPS_COMPRESSION_LEVEL": "-3"})
    assert level.returncode == ExitCode.CONFIG and "PGOPS_COMPRESSION_LEVEL" in level.stderr
    envfile = engine.tmp / "bad.env"
    envfile.write_text("PGOPS_STORAGE_URL=file:///x\nPGOPS_DATABSES=app\n")
    from_file = engine.run(["backup", "--env-file", str(envfile)])
    assert from_file.returncode == ExitCode.CONFIG and "PGOPS_DATABSES" in from_file.stderr
    assert engine.keys() == []


def test_refused_connection_fails_with_one_clear_line(engine: Engine) -> None:
    from tests.fixtures.pg import free_port

    result = engine.run(["backup"], extra={"PGOPS_PG_CONNINFO": f"host=127.0.0.1 port={free_port()} user=postgres"})
    assert result.returncode == ExitCode.POSTGRES
    errors = [line for line in result.stderr.splitlines() if "level=error" in line]
    assert len(errors) == 1 and "cannot connect" in errors[0]
    assert engine.keys() == []


def test_missing_named_database_is_a_config_error(engine: Engine) -> None:
    result = engine.run(["backup", "--databases", "no_such_db"])
    assert result.returncode == ExitCode.CONFIG
    assert "no_such_db" in result.stderr and "PGOPS_DATABASES" in result.stderr


def test_password_never_in_argv_logs_or_errors(engine: Engine, pg: Cluster, big_db: str) -> None:
    env = {"PGOPS_PG_CONNINFO": pg.tcp_conninfo, "PGOPS_PG_PASSWORD": SUPERUSER_PASSWORD, "PGOPS_LOG_LEVEL": "debug"}
    with pg.connect(big_db) as blocker:
        # pg_dump waits for this lock, so it is certainly alive while we read its /proc entries
        blocker.autocommit = False
        blocker.execute("LOCK TABLE pgbench_accounts IN ACCESS EXCLUSIVE MODE")
        proc = engine.popen(["backup", "--databases", big_db, "--no-globals", "--compression", "none"], extra=env)
        dump_pid = wait_for(lambda: children(proc.pid, "pg_dump", "--format=custom"), what="pg_dump")[0]
        argv = Path(f"/proc/{dump_pid}/cmdline").read_bytes().decode()
        environ = Path(f"/proc/{dump_pid}/environ").read_bytes().decode()
        pgops_argv = Path(f"/proc/{proc.pid}/cmdline").read_bytes().decode()
        blocker.rollback()
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "pg_dump" in argv and SUPERUSER_PASSWORD not in argv and SUPERUSER_PASSWORD not in pgops_argv
    assert f"PGPASSWORD={SUPERUSER_PASSWORD}" in environ  # it does reach pg_dump, through the environment
    assert "PGOPS_PG_PASSWORD" not in environ  # and only as PGPASSWORD
    assert SUPERUSER_PASSWORD not in err
    wrong = engine.run(["backup", "--no-globals"], extra={**env, "PGOPS_PG_PASSWORD": "Wrong-Pw-123"})
    assert wrong.returncode == ExitCode.POSTGRES
    assert "Wrong-Pw-123" not in wrong.stderr and "password authentication failed" in wrong.stderr
