"""RELIABILITY.md lines 20 and 34, and issue 10 section 4: the --replace swap leaves no unconnectable
database after a crash at any step; sessions it ends are logged and reported (or it refuses); a database
that cannot be connected to is a failed unit of 'all'; NAME_pgops_old_<time> and killed restores'
scratch databases are leftovers: out of 'all', shown by status, dropped by `pgops leftovers --drop`."""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from pgops.errors import ExitCode
from tests.fixtures.engine import Engine
from tests.fixtures.pg import Cluster


@pytest.fixture
def local(engine_env: dict[str, str], tmp_path: Path) -> Engine:
    return Engine("local", engine_env, tmp_path)


@pytest.fixture
def swapdb(pg: Cluster, request: pytest.FixtureRequest) -> Iterator[str]:
    name = "swap_" + str(abs(hash(request.node.name)) % 10**6)
    for d in pg.databases():
        if d.startswith(name) or d.startswith("pgops_restore_"):
            pg.drop_database(d)
    pg.create_database(name)
    pg.execute(name, "CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t SELECT generate_series(1, 100)")
    yield name
    for d in pg.databases():
        if d.startswith(name) or d.startswith("pgops_restore_"):
            pg.drop_database(d)


KILL_AT_ENV = "_PGOPS_KILL_AT"  # pgops.faults: SIGKILL at a named step (spelt out so old code can be tested)


def unconnectable(pg: Cluster) -> list[str]:
    return [r[0] for r in pg.execute("postgres", "SELECT datname FROM pg_database WHERE NOT datallowconn")]


BEFORE_COMMIT = ["safety_taken", "restored", "swap_sessions_ended", "swap_renamed"]


@pytest.mark.parametrize("step", [*BEFORE_COMMIT, "swap_committed"])
def test_kill_9_at_any_step_of_replace_leaves_every_database_connectable(
    local: Engine, pg: Cluster, swapdb: str, step: str
) -> None:
    local.run(["backup", "--databases", swapdb, "--no-globals"], check=True)
    backed_up = pg.dump(swapdb)
    pg.execute(swapdb, "INSERT INTO t VALUES (5000)")
    changed = pg.dump(swapdb)
    session = psycopg.connect(pg.dsn(swapdb), autocommit=True, application_name="app-worker")

    killed = local.run(["restore", "--database", swapdb, "--target-db", swapdb, "--replace"], extra={KILL_AT_ENV: step})
    assert killed.returncode == -signal.SIGKILL, killed.stderr

    assert unconnectable(pg) == ["template0"]
    olds = [d for d in pg.databases() if d.startswith(swapdb + "_pgops_old_")]
    scratch = [d for d in pg.databases() if d.startswith("pgops_restore_")]
    if step in BEFORE_COMMIT:
        assert pg.dump(swapdb) == changed and olds == []
        assert len(scratch) == (0 if step == "safety_taken" else 1)
    else:
        assert pg.dump(swapdb) == backed_up and len(olds) == 1 and pg.dump(olds[0]) == changed and scratch == []
    session.close()

    # The next nightly run of 'all' backs up the database under its name and none of the leftovers.
    nightly = local.run(["backup", "--json"])
    assert nightly.returncode == 0, nightly.stderr
    stored = {b["database"] for b in json.loads(nightly.stdout)["backups"]}
    assert swapdb in stored and not (set(olds) | set(scratch)) & stored
    listed = json.loads(local.run(["leftovers", "--json"], check=True).stdout)["leftovers"]
    assert {x["database"] for x in listed} >= set(olds) | set(scratch)


def test_unconnectable_database_is_a_failed_unit_of_all(local: Engine, pg: Cluster, swapdb: str) -> None:
    pg.execute("postgres", f"ALTER DATABASE {swapdb} ALLOW_CONNECTIONS false")
    try:
        result = local.run(["backup", "--json"])
    finally:
        pg.execute("postgres", f"ALTER DATABASE {swapdb} ALLOW_CONNECTIONS true")
    assert result.returncode == ExitCode.PARTIAL, result.stderr
    assert json.loads(result.stdout)["failed"] == [swapdb]
    failed = [line for line in result.stderr.splitlines() if "event=backup_failed" in line]
    assert len(failed) == 1 and swapdb in failed[0] and "not currently accepting connections" in failed[0]


def test_replace_reports_the_sessions_it_terminated(local: Engine, pg: Cluster, swapdb: str) -> None:
    local.run(["backup", "--databases", swapdb, "--no-globals"], check=True)
    session = psycopg.connect(pg.dsn(swapdb), autocommit=True, application_name="billing-worker")
    out = local.run(["restore", "--database", swapdb, "--target-db", swapdb, "--replace", "--json"])
    assert out.returncode == 0, out.stderr
    ended = json.loads(out.stdout)["sessions_terminated"]
    assert ended == {"count": 1, "users": ["postgres"], "applications": ["billing-worker"]}
    line = next(x for x in out.stderr.splitlines() if "event=sessions_terminated" in x)
    assert "count=1" in line and "billing-worker" in line and swapdb in line
    with pytest.raises(psycopg.OperationalError):
        session.execute("SELECT 1")
    session.close()


def test_refuse_if_connected_changes_nothing(local: Engine, pg: Cluster, swapdb: str) -> None:
    local.run(["backup", "--databases", swapdb, "--no-globals"], check=True)
    before, dbs = pg.dump(swapdb), pg.databases()
    with psycopg.connect(pg.dsn(swapdb), autocommit=True, application_name="billing-worker") as session:
        out = local.run(["restore", "--database", swapdb, "--target-db", swapdb, "--replace", "--refuse-if-connected"])
        assert out.returncode == ExitCode.REFUSED, out.stderr
        assert "1 session(s)" in out.stderr and "billing-worker" in out.stderr
        assert session.execute("SELECT 1").fetchone() == (1,)  # still connected
    assert pg.dump(swapdb) == before and pg.databases() == dbs
    listed = json.loads(local.run(["list", "--json"], check=True).stdout)["backups"]
    assert [b["reason"] for b in listed] == ["scheduled"]  # not even a safety backup was needed
    idle = local.run(["restore", "--database", swapdb, "--target-db", swapdb, "--replace", "--refuse-if-connected"])
    assert idle.returncode == 0, idle.stderr


def test_leftovers_are_shown_by_status_and_dropped_on_request(local: Engine, pg: Cluster, swapdb: str) -> None:
    local.run(["backup", "--databases", swapdb, "--no-globals"], check=True)
    out = local.run(["restore", "--database", swapdb, "--target-db", swapdb, "--replace", "--json"], check=True)
    old = json.loads(out.stdout)["previous_renamed_to"]

    status = json.loads(local.run(["status", "--json"]).stdout)
    assert old in {x["database"] for x in status["leftovers"]}
    assert old in local.run(["status"]).stdout

    wrong = local.run(["leftovers", "--drop", swapdb])
    assert wrong.returncode == ExitCode.CONFIG and "--drop" in wrong.stderr and old in wrong.stderr
    assert swapdb in pg.databases()
    dropped = json.loads(local.run(["leftovers", "--drop", old, "--json"], check=True).stdout)["dropped"]
    assert [x["database"] for x in dropped] == [old] and dropped[0]["kind"] == "replaced"
    assert old not in pg.databases()
