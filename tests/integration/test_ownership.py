"""One cluster per target (RELIABILITY 29), keys pgops did not write (30), safety copies (32) and a clock
running behind (33), against real PostgreSQL clusters and every storage backend."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from pgops.catalog import Catalog
from pgops.cluster import ClusterIdentity, claim, load_lineage
from pgops.errors import ClusterMismatch, ExitCode
from pgops.manifest import utcnow
from pgops.ownership import ensure_owner
from pgops.retention import RetentionReport, run_retention
from pgops.settings import build_settings
from pgops.storage import Storage
from tests.fixtures.engine import Engine
from tests.fixtures.history import backup_id, forge, real_backups
from tests.fixtures.pg import Cluster

TARGET = "testhost"
DAY = dt.timedelta(days=1)


@pytest.fixture
def db_a(pg: Cluster) -> Iterator[str]:
    """A database that only cluster A has."""
    pg.drop_database("owned_a")
    pg.create_database("owned_a")
    pg.execute("owned_a", "CREATE TABLE t (v text); INSERT INTO t VALUES ('cluster A')")
    yield "owned_a"
    pg.drop_database("owned_a")


def cluster_b(fresh_server: Cluster) -> Cluster:
    """A second cluster with a database of the same name and other data."""
    fresh_server.create_database("owned_a")
    fresh_server.execute("owned_a", "CREATE TABLE t (v text); INSERT INTO t VALUES ('cluster B')")
    return fresh_server


def sysid(c: Cluster) -> str:
    return str(c.execute("postgres", "SELECT system_identifier::text FROM pg_control_system()")[0][0])


def as_cluster(engine: Engine, c: Cluster) -> Engine:
    """The same store and target, but backing up (or restoring into) another cluster."""
    return Engine(engine.backend, {**engine.env, **c.env()}, engine.tmp, engine.proxy)


def errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "level=error" in line]


def retention(engine: Engine, now: dt.datetime, **rules: str) -> RetentionReport:
    env = {**engine.env, **{f"PGOPS_{k}": v for k, v in rules.items()}}
    st = engine.storage()
    try:
        return run_retention(build_settings(environ=env), st, dry_run=False, now=now)
    finally:
        st.close()


def restored_value(c: Cluster, db: str) -> str:
    return str(c.execute(db, "SELECT v FROM t")[0][0])


def test_a_second_cluster_on_the_same_target_is_refused(
    engine: Engine, pg: Cluster, fresh_server: Cluster, db_a: str
) -> None:
    engine.run(["backup", "--databases", db_a], check=True)
    a, b = sysid(pg), sysid(cluster_b(fresh_server))
    before = engine.all_keys()

    other = as_cluster(engine, fresh_server)
    refused = other.run(["backup", "--databases", db_a])
    assert refused.returncode == ExitCode.CONFIG, refused.stderr
    (line,) = errors(refused.stderr)
    assert "PGOPS_TARGET='testhost'" in line and a in line and b in line and f"--replaces {a}" in line
    assert engine.all_keys() == before  # nothing written, not even a claim

    listed = json.loads(engine.run(["list", "--json"], check=True).stdout)
    assert [o["system_identifier"] for o in listed["owners"][TARGET]] == [a]
    assert {b["cluster"]["system_identifier"] for b in listed["backups"]} == {a}

    # `pgops check` (the backup role runs it on converge) says so, without failing a DR provisioning
    checked = other.run(["check"], check=True)
    (warning,) = [x for x in checked.stderr.splitlines() if "event=check_target_owned_by_other" in x]
    assert a in warning and b in warning and f"--replaces {a}" in warning
    assert "event=check_target_owned_by_other" not in engine.run(["check"], check=True).stderr


def test_another_clusters_backup_is_never_latest_and_never_deleted(
    engine: Engine, pg: Cluster, fresh_server: Cluster, db_a: str, tmp_path: Path
) -> None:
    """A backup that got into the target from another cluster (two first runs racing, an old pgops,
    copied objects) is neither restored as 'latest' nor expired by the owner's retention."""
    engine.run(["backup", "--databases", db_a, "--no-globals"], check=True)
    cluster_b(fresh_server)
    # cluster B backs up under the same target name into a store of its own, then its objects land in ours
    side = tmp_path / "side"
    side.mkdir()
    b_engine = Engine("local", {**engine.env, **fresh_server.env(), "PGOPS_STORAGE_URL": side.as_uri()}, tmp_path)
    b_engine.run(["backup", "--databases", db_a, "--no-globals"], check=True)
    src, dst = b_engine.storage(), engine.storage()
    try:
        copied = [o.key for o in src.list(f"{TARGET}/") if "/@cluster/" not in o.key]
        for key in copied:
            dst.put_bytes(key, src.get_bytes(key))
    finally:
        src.close()
        dst.close()
    (b_backup,) = {k.split("/")[2] for k in copied}

    listed = json.loads(engine.run(["list", "--json", "--all-states"], check=True).stdout)
    states = {o["id"]: o["state"] for o in listed["backups"]}
    assert states[b_backup] == "other-cluster"
    result = engine.run(["restore", "--database", db_a, "--target-db", "latest_a", "--json"], check=True)
    assert json.loads(result.stdout)["backup_id"] != b_backup
    assert restored_value(pg, "latest_a") == "cluster A"
    pg.drop_database("latest_a")

    report = retention(engine, dt.datetime.now(dt.UTC) + 400 * DAY, KEEP_LAST="1", KEEP_DAILY="0", MAX_AGE="1d")
    decided = {o.decision.candidate.backup_id: o for o in report.outcomes}
    assert decided[b_backup].action == "keep" and decided[b_backup].decision.reasons[0].startswith("other-cluster")
    assert set(copied) <= set(engine.keys())


def test_adopt_hands_the_target_to_a_replacement_cluster(
    engine: Engine, pg: Cluster, fresh_server: Cluster, db_a: str
) -> None:
    """A DR rebuild: the new cluster adopts the target once, naming the one it replaces; the history
    continues across both; the old cluster can no longer write."""
    engine.run(["backup", "--databases", db_a, "--no-globals"], check=True)
    a, b = sysid(pg), sysid(cluster_b(fresh_server))
    new = as_cluster(engine, fresh_server)

    wrong = new.run(["adopt", "--replaces", "12345"])
    assert wrong.returncode == ExitCode.CONFIG and f"valid: --replaces {a}" in errors(wrong.stderr)[0]
    adopted = new.run(["adopt", "--replaces", a, "--json"], check=True)
    assert json.loads(adopted.stdout)["changed"] is True
    again = new.run(["adopt", "--replaces", a, "--json"], check=True)  # idempotent
    assert json.loads(again.stdout)["changed"] is False

    new.run(["backup", "--databases", db_a, "--no-globals"], check=True)
    old_refused = engine.run(["backup", "--databases", db_a, "--no-globals"])
    assert old_refused.returncode == ExitCode.CONFIG and b in errors(old_refused.stderr)[0]

    listed = json.loads(engine.run(["list", "--json"], check=True).stdout)
    assert [o["system_identifier"] for o in listed["owners"][TARGET]] == [a, b]
    ids = [o["id"] for o in listed["backups"]]
    assert len(ids) == 2  # both clusters' backups are one history
    new.run(["restore", "--database", db_a, "--target-db", "latest_b"], check=True)
    assert restored_value(fresh_server, "latest_b") == "cluster B"
    new.run(["restore", "--database", db_a, "--id", ids[1], "--target-db", "older_a"], check=True)
    assert restored_value(fresh_server, "older_a") == "cluster A"


def test_two_first_backups_racing_the_earliest_claim_wins(storage: Storage) -> None:
    """Two clusters back up into an empty target at the same moment: both saw no owner and both claim.
    The earliest claim wins on every host; the loser is refused and withdraws its own claim."""
    a = ClusterIdentity("7000000000000000001", 15, "/srv/a", 5432, "db1")
    b = ClusterIdentity("7000000000000000002", 15, "/srv/b", 5433, "db1")
    empty = Catalog.load(storage, TARGET)  # what both runs saw before either claimed
    claim(storage, TARGET, b, at=utcnow() - dt.timedelta(seconds=1), replaces=None, reason="first backup")
    with pytest.raises(ClusterMismatch, match=b.system_identifier):
        ensure_owner(storage, TARGET, a, empty)
    claims = [o.key for o in storage.list(f"{TARGET}/@cluster/")]
    assert len(claims) == 1  # only the winner's claim is left
    assert [c.identity for c in load_lineage(storage, TARGET)] == [b]
    ensure_owner(storage, TARGET, b, Catalog.load(storage, TARGET))  # the winner goes on


def test_a_clock_behind_the_newest_backup_is_refused(engine: Engine, db_a: str) -> None:
    """RELIABILITY 33: a backup that would start before the newest good one is refused, naming both times."""
    engine.run(["backup", "--databases", db_a, "--no-globals"], check=True)
    st = engine.storage()
    try:
        (real,) = real_backups(st, TARGET)
        ahead = real.started_at + DAY  # what a host whose clock now runs a day behind wrote yesterday
        forge(st, real, backup_id(ahead, "ahead0"), ahead)
    finally:
        st.close()
    before = engine.all_keys()
    refused = engine.run(["backup", "--databases", db_a, "--no-globals"])
    assert refused.returncode == ExitCode.CONFIG, refused.stderr
    (line,) = errors(refused.stderr)
    assert "--allow-clock-behind" in line and ahead.strftime("%Y-%m-%dT%H:%M:%S") in line
    assert engine.all_keys() == before
    engine.run(["backup", "--databases", db_a, "--no-globals", "--allow-clock-behind"], check=True)


def test_keys_pgops_did_not_write_are_never_deleted(engine: Engine, db_a: str) -> None:
    """RELIABILITY 30: an operator's files under the target and a second pgops nested inside it."""
    engine.run(["backup", "--databases", db_a], check=True)
    nested = Engine(
        engine.backend,
        {**engine.env, "PGOPS_STORAGE_URL": engine.env["PGOPS_STORAGE_URL"].rstrip("/") + f"/{TARGET}"},
        engine.tmp,
        engine.proxy,
    )
    nested.run(["backup", "--databases", db_a, "--target", "inner"], check=True)
    st = engine.storage()
    try:
        operator = [f"{TARGET}/archive/2023/old.sql", f"{TARGET}/notes.txt", f"{TARGET}/{db_a}/keep-me/dump.pgc.zst"]
        for key in operator:
            st.put_bytes(key, b"the operator's own bytes")
    finally:
        st.close()
    theirs = [k for k in engine.all_keys() if k.startswith(f"{TARGET}/inner/") or k in operator]
    assert len(theirs) > len(operator)

    far = dt.datetime.now(dt.UTC) + 800 * DAY
    dry = engine.run(["retention", "--dry-run", "--json"], check=True)
    assert json.loads(dry.stdout)["ignored_keys"] == sorted(theirs)
    report = retention(engine, far, KEEP_LAST="1", MAX_AGE="1d", GRACE_PERIOD="1h")
    assert not set(theirs) & set(report.deleted_keys)
    assert set(theirs) <= set(engine.all_keys())
    inner = json.loads(nested.run(["list", "--json", "--target", "inner"], check=True).stdout)
    assert {b["database"] for b in inner["backups"]} == {db_a, None}  # the nested pgops keeps its backups


def test_a_safety_copy_never_evicts_the_backup_it_was_restored_from(engine: Engine, pg: Cluster, db_a: str) -> None:
    """RELIABILITY 32: restore --replace takes a safety copy; with KEEP_LAST=1 the scheduled backup stays,
    'latest' stays the scheduled backup, and the safety copy goes after KEEP_SAFETY."""
    engine.run(["backup", "--databases", db_a, "--no-globals"], check=True)
    pg.execute(db_a, "UPDATE t SET v = 'bad data'")
    engine.run(["restore", "--database", db_a, "--target-db", db_a, "--replace"], check=True)
    assert restored_value(pg, db_a) == "cluster A"
    listed = json.loads(engine.run(["list", "--json", "--database", db_a], check=True).stdout)
    scheduled, safety = sorted(listed["backups"], key=lambda b: b["reason"] == "safety")
    assert (scheduled["reason"], safety["reason"]) == ("scheduled", "safety")

    soon = retention(
        engine, dt.datetime.now(dt.UTC) + DAY, KEEP_LAST="1", KEEP_DAILY="0", KEEP_WEEKLY="0", KEEP_MONTHLY="0"
    )
    kept = {o.decision.candidate.backup_id: o.decision.reasons for o in soon.outcomes if o.action == "keep"}
    assert scheduled["id"] in kept and safety["id"] in kept
    assert kept[safety["id"]] == ("safety copy, kept for KEEP_SAFETY",)
    result = engine.run(["restore", "--database", db_a, "--target-db", "after_safety", "--json"], check=True)
    assert json.loads(result.stdout)["backup_id"] == scheduled["id"]
    assert restored_value(pg, "after_safety") == "cluster A"
    pg.drop_database("after_safety")

    later = retention(
        engine, dt.datetime.now(dt.UTC) + 15 * DAY, KEEP_LAST="1", KEEP_DAILY="0", KEEP_WEEKLY="0", KEEP_MONTHLY="0"
    )
    gone = {o.decision.candidate.backup_id for o in later.outcomes if o.action == "delete"}
    assert gone == {safety["id"]}
    for name in pg.databases():
        if name.startswith(f"{db_a}_pgops_old_"):
            pg.drop_database(name)
