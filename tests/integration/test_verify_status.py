"""verify (quick and restore drill), status, Prometheus metrics and the heartbeat, on every backend."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from pgops.errors import ExitCode
from tests.fixtures.engine import Engine
from tests.fixtures.pg import Cluster, free_port, make_tricky_database

DB = "verify_me"


@pytest.fixture(scope="module")
def verify_db(pg: Cluster) -> str:
    if DB not in pg.databases():
        make_tricky_database(pg, DB)
        pg.execute(DB, "ANALYZE")
    return DB


def _json(engine: Engine, args: list[str]) -> Any:
    return json.loads(engine.run([*args, "--json"], check=True).stdout)


def test_quick_verify_then_corruption_is_reported(engine: Engine, verify_db: str) -> None:
    engine.run(["backup", "--databases", verify_db], check=True)
    results = _json(engine, ["verify"])["results"]
    assert {(r["database"], r["mode"], r["ok"]) for r in results} == {(verify_db, "quick", True), (None, "quick", True)}
    stored = engine.keys()
    assert any("/verified-" in k and k.endswith("-quick.json") for k in stored)

    listed = json.loads(engine.run(["list", "--json"], check=True).stdout)["backups"]
    key = next(b["objects"][0]["key"] for b in listed if b["database"] == verify_db)
    st = engine.storage()
    data = bytearray(st.get_bytes(key))
    data[-100] ^= 0x40
    st.delete(key)
    st.put_bytes(key, bytes(data))
    st.close()
    bad = engine.run(["verify", "--database", verify_db])
    assert bad.returncode == ExitCode.INTEGRITY
    # the zstd frame checksum or the manifest's sha256, whichever sees it first
    assert "event=verify_failed" in bad.stderr
    assert "stream is corrupt" in bad.stderr or "does not match the manifest" in bad.stderr


def test_restore_drill_checks_tables_and_drops_scratch(engine: Engine, pg: Cluster, verify_db: str) -> None:
    engine.run(["backup", "--databases", verify_db, "--no-globals"], check=True)
    before = pg.databases()
    result = _json(engine, ["verify", "--restore-test", "--database", verify_db])["results"][0]
    assert result["ok"] and result["mode"] == "restore" and result["amcheck"] is True
    assert result["tables_checked"] >= 7 and result["restore_seconds"] > 0
    assert pg.databases() == before
    status = _json(engine, ["status"])
    row = next(d for d in status["databases"] if d["database"] == verify_db)
    assert row["last_restore_test_at"] is not None and row["stale"] is False


def test_restore_drill_fails_when_rows_disagree_with_manifest(engine: Engine, pg: Cluster, verify_db: str) -> None:
    engine.run(["backup", "--databases", verify_db, "--no-globals"], check=True)
    listed = json.loads(engine.run(["list", "--json"], check=True).stdout)["backups"]
    m = next(b for b in listed if b["database"] == verify_db)
    st = engine.storage()
    manifest = json.loads(st.get_bytes(m["key"]))
    for t in manifest["tables"]:
        if t["name"] == "pgbench_accounts":
            t["reltuples"] = t["n_live_tup"] = 5_000_000  # the archive holds 100,000
    st.delete(m["key"])
    st.put_bytes(m["key"], json.dumps(manifest).encode())
    st.close()
    before = pg.databases()
    bad = engine.run(["verify", "--restore-test", "--database", verify_db])
    assert bad.returncode == ExitCode.INTEGRITY
    assert "pgbench_accounts: 100000 rows, manifest estimate 5000000" in bad.stderr
    assert pg.databases() == before


def test_restore_drill_fails_when_pg_amcheck_finds_an_index_that_disagrees_with_its_table(
    engine: Engine, pg: Cluster
) -> None:
    """A real cause of what pg_amcheck reports: an expression index over a function declared IMMUTABLE that is not.
    The restore rebuilds the index with one set of values; pg_amcheck --heapallindexed recomputes them and finds
    heap tuples with no matching index entry. The drill fails as an integrity problem, records no restore test, and
    drops its scratch database."""
    db = "amcheck_lies"
    if db not in pg.databases():
        pg.execute("postgres", f"CREATE DATABASE {db}")
        pg.execute(
            db,
            "CREATE FUNCTION lies(i integer) RETURNS integer LANGUAGE plpgsql IMMUTABLE "
            "AS $$ BEGIN RETURN i + floor(random() * 1000000000)::integer; END $$",
        )
        pg.execute(db, "CREATE TABLE t AS SELECT i FROM generate_series(1, 2000) i")
        pg.execute(db, "CREATE INDEX t_lies ON t (lies(i))")
        pg.execute(db, "ANALYZE t")
    engine.run(["backup", "--databases", db, "--no-globals"], check=True)
    before = pg.databases()
    bad = engine.run(["verify", "--restore-test", "--database", db, "--json"])
    assert bad.returncode == ExitCode.INTEGRITY, bad.stderr
    assert "event=verify_failed" in bad.stderr and "pg_amcheck found problems in the restore of" in bad.stderr
    assert "lacks matching index tuple" in bad.stderr, bad.stderr
    (result,) = json.loads(bad.stdout)["results"]
    assert (result["database"], result["mode"], result["ok"]) == (db, "restore", False)
    assert pg.databases() == before
    status = json.loads(engine.run(["status", "--json"]).stdout)  # exit code aside: other tests' databases
    row = next(d for d in status["databases"] if d["database"] == db)
    assert row["last_restore_test_at"] is None


def test_status_is_a_nagios_check(engine: Engine, verify_db: str) -> None:
    empty = engine.run(["status"])
    assert empty.returncode == ExitCode.STALE and "no good backup" in empty.stdout
    engine.run(["backup", "--databases", verify_db], check=True)
    fresh = engine.run(["status"])
    assert fresh.returncode == 0 and verify_db in fresh.stdout and "ok" in fresh.stdout
    time.sleep(2.1)
    stale = engine.run(["status", "--max-age", "1s"])
    assert stale.returncode == ExitCode.STALE and "STALE" in stale.stdout


def _metrics(path: Path) -> dict[tuple[str, str], float]:
    out = {}
    for family in text_string_to_metric_families(path.read_text()):
        for sample in family.samples:
            out[(sample.name, sample.labels.get("database", ""))] = sample.value
    return out


def test_metrics_textfile_parses_and_keeps_last_success(engine: Engine, verify_db: str) -> None:
    metrics_dir = engine.tmp / "textfile"
    env = {"PGOPS_METRICS_DIR": str(metrics_dir)}
    engine.run(["backup", "--databases", verify_db], check=True, extra=env)
    first = _metrics(metrics_dir / "pgops.prom")
    assert first[("pgops_backup_last_attempt_success", verify_db)] == 1
    assert first[("pgops_backup_size_bytes", verify_db)] > 0
    ok_at = first[("pgops_backup_last_success_timestamp_seconds", verify_db)]
    assert abs(ok_at - time.time()) < 120

    failing = engine.run(
        ["backup", "--databases", verify_db], extra={**env, "PGOPS_PG_CONNINFO": f"host=127.0.0.1 port={free_port()}"}
    )
    assert failing.returncode == ExitCode.POSTGRES
    second = _metrics(metrics_dir / "pgops.prom")
    assert second[("pgops_backup_last_attempt_success", verify_db)] == 0
    assert second[("pgops_backup_last_success_timestamp_seconds", verify_db)] == ok_at

    engine.run(["verify", "--database", verify_db], check=True, extra=env)
    third = _metrics(metrics_dir / "pgops.prom")
    assert third[("pgops_verify_last_attempt_success", verify_db)] == 1
    assert not list(metrics_dir.glob("*.tmp*"))  # written atomically, no temp file left


def test_heartbeat_pings_start_success_and_failure_never_fatal(
    engine: Engine, verify_db: str, heartbeat_server: tuple[str, list[str]]
) -> None:
    url, paths = heartbeat_server
    ok = engine.run(["backup", "--databases", verify_db], check=True, extra={"PGOPS_HEARTBEAT_URL": url})
    assert paths == ["/ping/check-uuid-secret/start", "/ping/check-uuid-secret"]
    bad = engine.run(["backup", "--databases", "no_such_db"], extra={"PGOPS_HEARTBEAT_URL": url})
    assert bad.returncode == ExitCode.CONFIG
    assert paths[2:] == ["/ping/check-uuid-secret/start", f"/ping/check-uuid-secret/{int(ExitCode.CONFIG)}"]
    unreachable = f"http://127.0.0.1:{free_port()}/ping/check-uuid-secret"
    still_ok = engine.run(["backup", "--databases", verify_db], extra={"PGOPS_HEARTBEAT_URL": unreachable})
    assert still_ok.returncode == 0
    assert "event=heartbeat_failed" in still_ok.stderr
    assert "check-uuid-secret" not in ok.stderr + bad.stderr + still_ok.stderr
