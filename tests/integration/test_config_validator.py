"""pgops-validate, the role's judge of candidate configuration files, against a real PostgreSQL cluster.

RELIABILITY.md 25 and 36: a candidate is judged without ever touching the live file, so a validator that is
killed at its worst moment (SIGKILL, SIGTERM, SIGHUP, SIGINT), a frozen server, or a second validator at the
same time leave the live pg_hba.conf byte-identical, and the server restarts. The script runs with the
system python3, as on a host; the throwaway cluster's data directory plays /etc/postgresql/VERSION/CLUSTER.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.pg import BINDIR, PG_MAJOR, Cluster, running_cluster

VALIDATOR = Path(__file__).resolve().parents[2] / "roles/postgresql/files/pgops-validate.py"
SYSTEM_PYTHON = "/usr/bin/python3"

GOOD = (
    "local all all trust\n"
    "host all all 127.0.0.1/32 scram-sha-256\n"
    "hostssl all all 10.0.0.0/8 scram-sha-256 clientcert=verify-full\n"
    "host all @admins 192.0.2.0/24 scram-sha-256\n"  # a file next to the live pg_hba.conf
)
BAD_LINE = "host all all 10.0.0.0/40 scram-sha-256\n"
FROZEN = "frozen-users"  # a FIFO: whoever parses `@frozen-users` blocks in open() until it is released


@pytest.fixture(scope="module")
def live() -> Iterator[Cluster]:
    """The live server; its data directory holds the live pg_hba.conf and plays the configuration directory."""
    with running_cluster() as c:
        (c.data / "admins").write_text("postgres\n")
        yield c


@pytest.fixture
def tmpbase() -> Iterator[Path]:
    """The validator's --tmpdir, so that what it leaves behind can be seen (postgres must traverse it)."""
    d = Path(tempfile.mkdtemp(prefix="pgops-vtest-"))
    d.chmod(0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def argv(live: Cluster, tmpbase: Path, mode: str, *args: str) -> list[str]:
    common = ["--confdir", str(live.data), "--bindir", str(BINDIR), "--tmpdir", str(tmpbase), "--timeout", "60"]
    return [SYSTEM_PYTHON, str(VALIDATOR), mode, *common, str(PG_MAJOR), "main", *args]


def validate(live: Cluster, tmpbase: Path, candidate: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv(live, tmpbase, "hba", "-"), input=candidate, capture_output=True, text=True, timeout=120)


def snapshot(path: Path) -> tuple[bytes, int, int]:
    st = path.stat()
    return path.read_bytes(), st.st_mtime_ns, st.st_ino


def assert_restarts(live: Cluster) -> None:
    live.stop()
    live.start()  # pg_ctl -w: raises when the server cannot start (`could not load pg_hba.conf`)
    assert live.execute("postgres", "SELECT count(*) FROM pg_hba_file_rules WHERE error IS NOT NULL") == [(0,)]


def processes_under(path: Path) -> list[int]:
    found = []
    for proc in Path("/proc").iterdir():
        with contextlib.suppress(OSError):
            if proc.name.isdigit() and os.fsencode(path) in (proc / "cmdline").read_bytes():
                found.append(int(proc.name))
    return found


def wait_for(what: str, probe: object, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not probe():  # type: ignore[operator]
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


def blocked_on_fifo(pid: int) -> bool:
    with contextlib.suppress(OSError):
        proc = Path(f"/proc/{pid}")
        wchan = (proc / "wchan").read_text()
        return wchan == "wait_for_partner" or (wchan == "0" and (proc / "syscall").read_text().startswith("257 "))
    return False


def judge_blocked_on_fifo(tmpbase: Path) -> bool:
    return any(blocked_on_fifo(p) for p in processes_under(tmpbase))


@contextlib.contextmanager
def frozen_include(live: Cluster, tmp_path: Path) -> Iterator[Path]:
    """A candidate whose parsing blocks at a FIFO until released: the judge is then at its worst moment."""
    fifo = live.data / FROZEN
    os.mkfifo(fifo)
    fifo.chmod(0o666)
    candidate = tmp_path / "candidate"
    candidate.write_text(GOOD + f"host all @{FROZEN} 192.0.2.0/24 scram-sha-256\n" + BAD_LINE)
    try:
        yield candidate
    finally:
        release(fifo)
        fifo.unlink()


def release(fifo: Path) -> None:
    """Give a reader blocked on FIFO its end of file (ENXIO: nobody waits)."""
    with contextlib.suppress(OSError):
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))


def start_validator(live: Cluster, tmpbase: Path, candidate: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        argv(live, tmpbase, "hba", str(candidate)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


# ------------------------------------------------------------------------------------------------ verdicts


def test_good_candidate_is_accepted_and_nothing_is_left(live: Cluster, tmpbase: Path) -> None:
    before = snapshot(live.data / "pg_hba.conf")
    cand = tmpbase / "candidate"
    cand.write_text(GOOD)
    r = subprocess.run(argv(live, tmpbase, "hba", str(cand)), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert snapshot(live.data / "pg_hba.conf") == before
    assert sorted(p.name for p in tmpbase.iterdir()) == ["candidate"]


def test_bad_candidate_is_rejected_with_the_servers_message(live: Cluster, tmpbase: Path) -> None:
    before = snapshot(live.data / "pg_hba.conf")
    r = validate(live, tmpbase, GOOD + BAD_LINE + "host all @missing 192.0.2.0/24 scram-sha-256\n")
    assert r.returncode == 5
    assert f"pg_hba.conf candidate rejected by PostgreSQL {PG_MAJOR}:" in r.stderr
    assert 'line 5: invalid CIDR mask in address "10.0.0.0/40"' in r.stderr
    # a relative @file resolves against the live configuration directory, and the message says so
    assert f'line 6: could not open secondary authentication file "@missing" as "{live.data}/missing"' in r.stderr
    assert snapshot(live.data / "pg_hba.conf") == before
    assert list(tmpbase.iterdir()) == []


def test_candidate_without_entries_is_rejected(live: Cluster, tmpbase: Path) -> None:
    """pg_hba_file_rules shows no error for it, but the postmaster would refuse to start."""
    r = validate(live, tmpbase, "# only comments\n\n")
    assert r.returncode == 5
    assert f'configuration file "{live.data}/pg_hba.conf" contains no entries' in r.stderr


def test_frozen_server_cannot_hang_the_validator(live: Cluster, tmpbase: Path) -> None:
    before = snapshot(live.data / "pg_hba.conf")
    postmaster = int((live.data / "postmaster.pid").read_text().split()[0])
    os.kill(postmaster, signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        good = validate(live, tmpbase, GOOD)
        bad = validate(live, tmpbase, GOOD + BAD_LINE)
        elapsed = time.monotonic() - t0
    finally:
        os.kill(postmaster, signal.SIGCONT)
    assert good.returncode == 0, good.stderr
    assert bad.returncode == 5
    assert "invalid CIDR mask" in bad.stderr
    assert elapsed < 50
    assert snapshot(live.data / "pg_hba.conf") == before
    assert_restarts(live)


# ------------------------------------------------------------------------------------------------ faults


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM, signal.SIGHUP, signal.SIGINT], ids=lambda s: s.name)
def test_validator_killed_at_its_worst_moment(
    live: Cluster, tmpbase: Path, tmp_path: Path, sig: signal.Signals
) -> None:
    """Killed while the server parses the candidate: the live file is untouched and the server restarts.

    SIGTERM, SIGHUP and SIGINT clean up at once; a SIGKILL leaves only a private directory (no process),
    which the next run removes.
    """
    before = snapshot(live.data / "pg_hba.conf")
    with frozen_include(live, tmp_path) as candidate:
        proc = start_validator(live, tmpbase, candidate)
        try:
            wait_for("the judge to block on the candidate's FIFO", lambda: judge_blocked_on_fifo(tmpbase))
            proc.send_signal(sig)
            _, stderr = proc.communicate(timeout=30)
        finally:
            proc.kill()
            proc.wait()
        assert proc.returncode == (-sig if sig == signal.SIGKILL else 128 + sig), stderr
        assert snapshot(live.data / "pg_hba.conf") == before
        wait_for("no process left in the private directory", lambda: not processes_under(tmpbase), timeout=10)
        left = list(tmpbase.iterdir())
        if sig == signal.SIGKILL:
            assert [p.name[: len("pgops-validate.")] for p in left] == ["pgops-validate."]
        else:
            assert f"stopped by {sig.name}" in stderr
            assert left == []
    assert_restarts(live)
    nxt = validate(live, tmpbase, GOOD)
    assert nxt.returncode == 0, nxt.stderr
    assert list(tmpbase.iterdir()) == []  # the next run removed what the SIGKILL left


def test_two_validators_at_once(live: Cluster, tmpbase: Path, tmp_path: Path) -> None:
    """A second validator neither disturbs the first (its directory is locked) nor sees its candidate."""
    before = snapshot(live.data / "pg_hba.conf")
    with frozen_include(live, tmp_path) as candidate:
        first = start_validator(live, tmpbase, candidate)
        try:
            wait_for("the first judge to block on its FIFO", lambda: judge_blocked_on_fifo(tmpbase))
            [first_run] = list(tmpbase.iterdir())
            second = validate(live, tmpbase, GOOD)
            assert second.returncode == 0, second.stderr
            assert snapshot(live.data / "pg_hba.conf") == before
            assert first.poll() is None
            assert first_run.is_dir()
            release(live.data / FROZEN)
            _, stderr = first.communicate(timeout=60)
        finally:
            first.kill()
            first.wait()
    assert first.returncode == 5  # its own candidate, with its bad line, judged to the end
    assert "line 6: invalid CIDR mask" in stderr
    assert snapshot(live.data / "pg_hba.conf") == before
    assert list(tmpbase.iterdir()) == []


# ------------------------------------------------------------------------------------------------ conf.d


@pytest.fixture
def confdir(live: Cluster, tmpbase: Path) -> Path:
    """A Debian-style configuration directory for the live cluster."""
    d = tmpbase / "etc"
    (d / "conf.d").mkdir(parents=True)
    (d / "postgresql.conf").write_text(
        f"data_directory = '{live.data}'\nhba_file = '{live.data}/pg_hba.conf'\n"
        f"ident_file = '{live.data}/pg_ident.conf'\ninclude_dir = 'conf.d'\n"
    )
    (d / "conf.d" / "10-pgops-server.conf").write_text("max_connections = 50\n")
    return d


def conf_argv(live: Cluster, tmpbase: Path, confdir: Path, candidate: str) -> list[str]:
    a = argv(live, tmpbase, "conf", "90-pgops-settings.conf", candidate)
    a[a.index("--confdir") + 1] = str(confdir)
    return a


def test_conf_dropin_judged_by_the_server_binary(live: Cluster, tmpbase: Path, confdir: Path) -> None:
    good = subprocess.run(
        conf_argv(live, tmpbase, confdir, "-"), input="work_mem = '8MB'\n", capture_output=True, text=True
    )
    bad = subprocess.run(
        conf_argv(live, tmpbase, confdir, "-"), input="vacuum_cost_delay = 'soon'\n", capture_output=True, text=True
    )
    assert good.returncode == 0, good.stderr
    assert bad.returncode == 5
    assert "conf.d/90-pgops-settings.conf rejected by PostgreSQL" in bad.stderr
    assert 'invalid value for parameter "vacuum_cost_delay": "soon"' in bad.stderr
    assert sorted(p.name for p in tmpbase.iterdir()) == ["etc"]
    assert not (confdir / "conf.d" / "90-pgops-settings.conf").exists()


def test_conf_check_stopped_by_sigterm_kills_the_server_binary(
    live: Cluster, tmpbase: Path, confdir: Path, tmp_path: Path
) -> None:
    fifo = tmpbase / "frozen.conf"
    os.mkfifo(fifo)
    fifo.chmod(0o666)
    candidate = tmp_path / "90-pgops-settings.conf"
    candidate.write_text(f"include '{fifo}'\n")
    proc = subprocess.Popen(conf_argv(live, tmpbase, confdir, str(candidate)), stderr=subprocess.PIPE, text=True)
    try:
        wait_for("postgres -C to block on the FIFO", lambda: judge_blocked_on_fifo(tmpbase))
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=30)
    finally:
        proc.kill()
        proc.wait()
        release(fifo)
    assert proc.returncode == 143, stderr
    wait_for("no process left in the private directory", lambda: not processes_under(tmpbase / "pgops-validate."), 10)
    assert sorted(p.name for p in tmpbase.iterdir()) == ["etc", "frozen.conf"]


def test_bad_arguments_are_one_clear_line(live: Cluster, tmpbase: Path) -> None:
    r = subprocess.run([*argv(live, tmpbase, "hba", "-")[:-3], "15", "../x", "-"], capture_output=True, text=True)
    assert r.returncode == 2
    assert "CLUSTER must be a cluster name" in r.stderr
    r = subprocess.run([SYSTEM_PYTHON, str(VALIDATOR), "sync", str(tmpbase / "nope")], capture_output=True, text=True)
    assert r.returncode == 6
    assert str(tmpbase / "nope") in r.stderr
