"""RELIABILITY.md lines 5, 6, 19, 20, 22: restores never change a database without a safety copy,
never use corrupt bytes, and never pick a backup without a readable manifest."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest

from pgops.errors import ExitCode
from pgops.manifest import MANIFEST_NAME
from tests.fixtures.engine import Engine
from tests.fixtures.pg import Cluster, make_tricky_database


def scratch_databases(pg: Cluster) -> set[str]:
    return {d for d in pg.databases() if d.startswith("pgops_restore_")}


def backups(engine: Engine, *extra: str) -> list[dict[str, object]]:
    out: list[dict[str, object]] = json.loads(engine.run(["list", "--json", *extra], check=True).stdout)["backups"]
    return out


@pytest.fixture
def small_db(pg: Cluster, request: pytest.FixtureRequest) -> Iterator[str]:
    name = f"small_{request.node.callspec.id if hasattr(request.node, 'callspec') else 'x'}".replace("-", "_")
    pg.drop_database(name)
    pg.create_database(name)
    pg.execute(
        name,
        "CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t SELECT i, 'v' || i FROM generate_series(1, 1000) i",
    )
    yield name
    for d in pg.databases():
        if d.startswith(name):
            pg.drop_database(d)


def corrupt_one_byte(engine: Engine, key: str, offset: int = 2000) -> None:
    st = engine.storage()
    data = bytearray(st.get_bytes(key))
    data[min(offset, len(data) - 1)] ^= 0x01
    st.delete(key)
    st.put_bytes(key, bytes(data))
    st.close()


def dump_key(engine: Engine, database: str) -> str:
    return next(str(b["objects"][0]["key"]) for b in backups(engine) if b["database"] == database)  # type: ignore[index]


def test_restore_onto_existing_database_is_refused(engine: Engine, pg: Cluster, small_db: str) -> None:
    engine.run(["backup", "--databases", small_db, "--no-globals"], check=True)
    before = pg.dump(small_db)
    result = engine.run(["restore", "--database", small_db, "--target-db", small_db])
    assert result.returncode == ExitCode.REFUSED
    assert "--replace" in result.stderr
    assert pg.dump(small_db) == before
    assert scratch_databases(pg) == set()


def test_replace_takes_safety_backup_and_swaps(engine: Engine, pg: Cluster, small_db: str) -> None:
    engine.run(["backup", "--databases", small_db, "--no-globals"], check=True)
    backed_up = pg.dump(small_db)
    pg.execute(small_db, "INSERT INTO t VALUES (5000, 'written after the backup')")
    changed = pg.dump(small_db)

    result = engine.run(["restore", "--database", small_db, "--target-db", small_db, "--replace", "--json"], check=True)
    report = json.loads(result.stdout)
    assert pg.dump(small_db) == backed_up
    old = report["previous_renamed_to"]
    assert old and old.startswith(small_db + "_pgops_old_")
    assert pg.dump(old) == changed  # the original is kept aside, untouched
    safety = [b for b in backups(engine) if b["reason"] == "safety"]
    assert [b["id"] for b in safety] == [report["safety_backup_id"]]
    assert scratch_databases(pg) == set()


def test_replace_with_corrupt_backup_leaves_original_untouched(engine: Engine, pg: Cluster, small_db: str) -> None:
    engine.run(["backup", "--databases", small_db, "--no-globals"], check=True)
    corrupt_one_byte(engine, dump_key(engine, small_db))
    pg.execute(small_db, "INSERT INTO t VALUES (5000, 'must survive')")
    before = pg.dump(small_db)
    dbs_before = pg.databases()

    result = engine.run(["restore", "--database", small_db, "--target-db", small_db, "--replace"])
    assert result.returncode == ExitCode.INTEGRITY, result.stderr
    assert pg.dump(small_db) == before
    assert pg.databases() == dbs_before  # no scratch database, nothing renamed
    assert pg.execute("postgres", "SELECT datallowconn FROM pg_database WHERE datname = %s", (small_db,)) == [(True,)]


def test_corrupt_byte_refused_for_new_database(engine: Engine, pg: Cluster, small_db: str) -> None:
    engine.run(["backup", "--databases", small_db, "--no-globals", "--compression", "none"], check=True)
    corrupt_one_byte(engine, dump_key(engine, small_db), offset=5000)  # uncompressed: only the sha256 can tell
    result = engine.run(["restore", "--database", small_db, "--target-db", small_db + "_new"])
    assert result.returncode == ExitCode.INTEGRITY, result.stderr
    assert "does not match the manifest" in result.stderr
    assert small_db + "_new" not in pg.databases()
    assert scratch_databases(pg) == set()


def test_missing_or_unreadable_manifest_is_never_latest(engine: Engine, pg: Cluster, small_db: str) -> None:
    engine.run(["backup", "--databases", small_db, "--no-globals"], check=True)
    first = backups(engine)[0]
    time.sleep(1.1)  # backup ids carry the second
    pg.execute(small_db, "INSERT INTO t VALUES (7000, 'second')")
    engine.run(["backup", "--databases", small_db, "--no-globals"], check=True)
    time.sleep(1.1)
    engine.run(["backup", "--databases", small_db, "--no-globals"], check=True)
    newest, second = backups(engine)[:2]
    st = engine.storage()
    for b in (newest, second):  # neither manifest.json nor its copy is left readable
        st.delete(str(b["key"]))
        st.delete(str(b["key"]) + ".copy")
    st.put_bytes(str(second["key"]), b"{not json")  # second: manifest unreadable
    st.close()

    listed = json.loads(engine.run(["list", "--json"], check=True).stdout)
    assert [b["id"] for b in listed["backups"]] == [first["id"]]
    assert listed["unreadable_manifests"] == [second["key"]]
    result = engine.run(["restore", "--database", small_db, "--target-db", small_db + "_latest", "--json"], check=True)
    assert json.loads(result.stdout)["backup_id"] == first["id"]
    assert pg.execute(small_db + "_latest", "SELECT count(*) FROM t") == [(1000,)]
    assert str(second["key"]).endswith("/" + MANIFEST_NAME)


def test_a_rotten_manifest_is_read_from_its_copy(engine: Engine, pg: Cluster, small_db: str) -> None:
    """RELIABILITY 31: one bad object (bit rot in manifest.json) does not lose the backup."""
    engine.run(["backup", "--databases", small_db, "--no-globals"], check=True)
    (only,) = backups(engine)
    key = str(only["key"])
    st = engine.storage()
    assert st.get_bytes(key + ".copy") == st.get_bytes(key)  # the copy is written with every manifest
    rotten = bytearray(st.get_bytes(key))
    rotten[len(rotten) // 2] ^= 0x55
    st.delete(key)
    st.put_bytes(key, bytes(rotten))
    st.close()

    listed = engine.run(["list", "--json"], check=True)
    assert [b["id"] for b in json.loads(listed.stdout)["backups"]] == [only["id"]]
    assert "event=manifest_copy_used" in listed.stderr
    result = engine.run(["restore", "--database", small_db, "--target-db", small_db + "_copy", "--json"], check=True)
    assert json.loads(result.stdout)["backup_id"] == only["id"]
    assert pg.execute(small_db + "_copy", "SELECT count(*) FROM t") == [(1000,)]


def test_before_picks_latest_backup_started_at_or_before(engine: Engine, pg: Cluster, small_db: str) -> None:
    engine.run(["backup", "--databases", small_db, "--no-globals"], check=True)
    first = backups(engine)[0]
    time.sleep(1.1)
    engine.run(["backup", "--databases", small_db, "--no-globals"], check=True)
    result = engine.run(
        [
            "restore",
            "--database",
            small_db,
            "--target-db",
            small_db + "_pit",
            "--before",
            str(first["finished_at"]),
            "--json",
        ],
        check=True,
    )
    assert json.loads(result.stdout)["backup_id"] == first["id"]
    none = engine.run(["restore", "--database", small_db, "--before", "2001-01-01T00:00:00Z"])
    assert none.returncode == ExitCode.NOT_FOUND


def test_disaster_recovery_onto_fresh_server_with_globals(engine: Engine, pg: Cluster, fresh_server: Cluster) -> None:
    """A brand-new server (no roles, no databases) gets the same roles, grants and data from the store alone."""
    source = "dr_source"
    if source not in pg.databases():
        make_tricky_database(pg, source, pgbench=False)
    engine.run(["backup", "--databases", source], check=True)
    dr_env = {**engine.env, **fresh_server.env()}
    refused = engine.run(["restore", "--database", source, "--target-db", source], extra=fresh_server.env())
    assert refused.returncode == ExitCode.REFUSED and "--with-globals" in refused.stderr
    from tests.fixtures.engine import run_pgops

    run_pgops(["restore", "--database", source, "--target-db", source, "--with-globals"], dr_env, check=True)
    assert fresh_server.dump(source) == pg.dump(source)
    roles = "SELECT rolname, rolcanlogin, rolpassword FROM pg_authid WHERE rolname ILIKE '%pgops%' ORDER BY 1"
    assert fresh_server.execute("postgres", roles) == pg.execute("postgres", roles)
    assert len(fresh_server.execute("postgres", roles)) == 3


def test_restore_check_passes_or_keeps_the_original(engine: Engine, pg: Cluster, small_db: str) -> None:
    """--check (restore.yml uses it) compares the restored tables with the manifest before the switch."""
    engine.run(["backup", "--databases", small_db, "--no-globals"], check=True)
    ok = engine.run(["restore", "--database", small_db, "--target-db", small_db + "_chk", "--check", "--json"])
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["tables_checked"] == 1

    # The backup now claims a table the dump does not hold, and more rows than t has: what a dump that
    # silently lost data would look like. The manifest is rewritten in the store itself.
    listed = backups(engine)[0]
    st = engine.storage()
    manifest = json.loads(st.get_bytes(str(listed["key"])))
    manifest["tables"] = [
        {"schema": "public", "name": "t", "reltuples": 50000, "n_live_tup": 50000},
        {"schema": "public", "name": "ghost", "reltuples": 10, "n_live_tup": 10},
    ]
    st.delete(str(listed["key"]))
    st.put_bytes(str(listed["key"]), json.dumps(manifest).encode())
    st.close()
    pg.execute(small_db, "INSERT INTO t VALUES (5000, 'must survive')")
    before, dbs_before = pg.dump(small_db), pg.databases()

    bad = engine.run(["restore", "--database", small_db, "--target-db", small_db, "--replace", "--check"])
    assert bad.returncode == ExitCode.INTEGRITY, bad.stderr
    assert "public.t: 1000 rows, manifest estimate 50000" in bad.stderr and "public.ghost" in bad.stderr
    assert pg.dump(small_db) == before
    assert {d for d in pg.databases() if "_pgops_old_" not in d} == set(dbs_before)
    assert not [d for d in pg.databases() if d.startswith(small_db + "_pgops_old_")]
    assert scratch_databases(pg) == set()


def test_latest_after_replace_is_the_backup_not_the_safety_copy(engine: Engine, pg: Cluster, small_db: str) -> None:
    """The safety copy holds the state that --replace just threw out; "latest" must not bring it back."""
    engine.run(["backup", "--databases", small_db, "--no-globals"], check=True)
    backed_up = pg.dump(small_db)
    pg.execute(small_db, "INSERT INTO t VALUES (5000, 'thrown out by the replace')")
    time.sleep(1.1)  # backup ids carry the second
    replaced = json.loads(
        engine.run(
            ["restore", "--database", small_db, "--target-db", small_db, "--replace", "--json"], check=True
        ).stdout
    )
    again = engine.run(["restore", "--database", small_db, "--target-db", small_db + "_again", "--json"], check=True)
    assert json.loads(again.stdout)["backup_id"] == replaced["backup_id"] != replaced["safety_backup_id"]
    assert pg.dump(small_db + "_again") == backed_up
    by_id = ["restore", "--database", small_db, "--target-db", small_db + "_undo", "--id", replaced["safety_backup_id"]]
    engine.run(by_id, check=True)
    assert "thrown out by the replace" in pg.dump(small_db + "_undo")
