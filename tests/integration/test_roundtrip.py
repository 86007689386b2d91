"""Back up, then restore into a new database: the restored database must equal the source exactly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.fixtures.engine import run_pgops
from tests.fixtures.pg import Cluster, database_level, make_tricky_database


@pytest.fixture(scope="module")
def tricky_db(pg: Cluster) -> str:
    name = 'Tricky "DB" ☃ Mixed'
    make_tricky_database(pg, name)
    return name


def test_roundtrip_tricky_database_is_identical(pg: Cluster, tricky_db: str, engine_env: dict[str, str]) -> None:
    run_pgops(["backup", "--databases", tricky_db], engine_env, check=True)
    listed = json.loads(run_pgops(["list", "--json"], engine_env, check=True).stdout)["backups"]
    assert {b["database"] for b in listed} == {tricky_db, None}  # the database and the run's globals
    assert len({b["id"] for b in listed}) == 1

    restored = "restored copy ☃"
    result = run_pgops(["restore", "--database", tricky_db, "--target-db", restored, "--json"], engine_env, check=True)
    assert json.loads(result.stdout)["database"] == restored
    try:
        assert pg.dump(restored) == pg.dump(tricky_db)
        assert database_level(pg, restored) == database_level(pg, tricky_db)
        # the large object, the sequence position and a row with awkward text survived
        assert pg.execute(restored, "SELECT count(*) FROM pg_largeobject_metadata") == [(1,)]
        assert pg.execute(restored, 'SELECT last_value FROM "MiXeD"."Weird Seq"') == [(4242,)]
        assert pg.execute(restored, "SELECT count(*) FROM pgbench_accounts") == [(100000,)]
    finally:
        pg.drop_database(restored)


def test_parallel_restore_from_spool_is_identical(
    pg: Cluster, tricky_db: str, engine_env: dict[str, str], tmp_path: Path
) -> None:
    run_pgops(["backup", "--databases", tricky_db, "--no-globals"], engine_env, check=True)
    spool = tmp_path / "spool"
    spool.mkdir()
    restored = "tricky_parallel"
    run_pgops(
        ["restore", "--database", tricky_db, "--target-db", restored, "--jobs", "2", "--spool-dir", str(spool)],
        engine_env,
        check=True,
    )
    try:
        assert pg.dump(restored) == pg.dump(tricky_db)
        assert list(spool.iterdir()) == []  # the spooled copy is removed
    finally:
        pg.drop_database(restored)
