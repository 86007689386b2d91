"""RELIABILITY.md lines 13-18: retention against real backups on every storage backend.

Each test makes one real backup with the pgops CLI, then forges a history from it (copies of its
objects under other ids, manifests that record other start times or statuses: tests/fixtures/history.py)
and calls run_retention() with settings built like the CLI builds them. `now` is passed explicitly
where a test needs leftovers to be older than the grace period.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import json
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING

import pytest

from pgops.catalog import Catalog
from pgops.errors import ExitCode, LockHeld
from pgops.manifest import Manifest, utcnow
from pgops.retention import RetentionReport, render_plan_table, run_retention
from pgops.retention.planner import (
    REASON_BROKEN_OLD,
    REASON_MAX_AGE,
    REASON_NO_RULE,
    REASON_ORPHAN_OLD,
    REASON_UNREADABLE_ONLY,
)
from pgops.settings import build_settings
from pgops.storage import Storage
from tests.fixtures.engine import Engine, base_env
from tests.fixtures.history import backup_id, forge, real_backups, rewrite
from tests.fixtures.objstore import empty_bucket, s3_env
from tests.fixtures.pg import Cluster

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

TARGET = "testhost"  # PGOPS_TARGET of the engine fixture
DAY = dt.timedelta(days=1)
HOUR = dt.timedelta(hours=1)
ALL_RULES_OFF = {
    "KEEP_LAST": "0",
    "KEEP_DAILY": "0",
    "KEEP_WEEKLY": "0",
    "KEEP_MONTHLY": "0",
    "KEEP_YEARLY": "0",
    "MAX_AGE": "0",
    "MIN_KEEP": "1",
    "GRACE_PERIOD": "36h",
    "RETENTION_TIMEZONE": "UTC",
}


@pytest.fixture
def small_db(pg: Cluster) -> Iterator[str]:
    name = f"ret_{uuid.uuid4().hex[:10]}"
    pg.create_database(name)
    pg.execute(name, "CREATE TABLE t AS SELECT i, 'v' || i AS v FROM generate_series(1, 200) i")
    yield name
    pg.drop_database(name)


@dataclasses.dataclass
class Run:
    """One real backup run: its database manifest and its globals manifest."""

    db: Manifest
    globals: Manifest


def real_run(engine: Engine, database: str) -> Run:
    engine.run(["backup", "--databases", database], check=True)
    with opened(engine) as st:
        found = real_backups(st, TARGET)
    db = next(m for m in found if m.database == database)
    return Run(db, next(m for m in found if m.kind == "globals" and m.id == db.id))


@contextlib.contextmanager
def opened(engine: Engine) -> Iterator[Storage]:
    st = engine.storage()
    try:
        yield st
    finally:
        st.close()


def forge_run(st: Storage, run: Run, new_id: str, started: dt.datetime) -> Manifest:
    """A forged good run: the database backup and its globals, same id and start."""
    forge(st, run.globals, new_id, started)
    return forge(st, run.db, new_id, started)


def retention(
    engine: Engine,
    policy: Mapping[str, str] | None = None,
    *,
    dry_run: bool = False,
    now: dt.datetime | None = None,
    **rules: str,
) -> RetentionReport:
    """run_retention with settings built like the CLI builds them; rules: PGOPS_ keys without the prefix."""
    env = {**engine.env, **{f"PGOPS_{k}": v for k, v in {**ALL_RULES_OFF, **(policy or {}), **rules}.items()}}
    with opened(engine) as st:
        return run_retention(build_settings(environ=env), st, dry_run=dry_run, now=now)


def dirs(keys: object) -> set[str]:
    """Backup directories of some keys."""
    assert isinstance(keys, tuple | list | set)
    return {str(k).rsplit("/", 1)[0] for k in keys}


def by_prefix(report: RetentionReport) -> dict[str, tuple[str, tuple[str, ...]]]:
    return {o.decision.candidate.prefix: (o.action, o.decision.reasons) for o in report.outcomes}


def listed_ids(engine: Engine, database: str, *, cli: bool = False) -> list[str]:
    """Ids of the database's backups as `pgops list` shows them (newest first), in-process or by the CLI."""
    if cli:
        out = json.loads(engine.run(["list", "--json", "--database", database], check=True).stdout)
        return [b["id"] for b in out["backups"]]
    with opened(engine) as st:
        return [m.id for m in Catalog.load(st, TARGET).select(database=database)]


# ---- RELIABILITY 13 --------------------------------------------------------------------------------------


def test_keep_last_with_newest_backups_failed_or_incomplete(engine: Engine, small_db: str) -> None:
    run = real_run(engine, small_db)
    t = run.db.started_at
    with opened(engine) as st:
        older = [forge_run(st, run, backup_id(t - d * DAY, "old000"), t - d * DAY) for d in (4, 3, 2)]
        failed = forge(st, run.db, backup_id(t + HOUR, "failed"), t + HOUR, status="failed")
        no_manifest = forge(st, run.db, backup_id(t + 2 * HOUR, "killed"), t + 2 * HOUR, manifest=False)
        no_data = forge(st, run.db, backup_id(t + 3 * HOUR, "nodata"), t + 3 * HOUR)
        st.delete(no_data.objects[0].key)  # manifest says ok, data is gone: incomplete
        garbage = forge(st, run.db, backup_id(t + 4 * HOUR, "garbag"), t + 4 * HOUR)
        st.delete(garbage.key)
        st.put_bytes(garbage.key, b"{truncated")
    broken = [failed, no_manifest, no_data, garbage]
    before = engine.keys()

    soon = retention(engine, KEEP_LAST="2", now=t + 5 * HOUR)
    decided = by_prefix(soon)
    assert decided[run.db.prefix][0] == "keep" and decided[older[2].prefix] == ("keep", ("last 2",))
    assert decided[older[0].prefix] == ("delete", (REASON_NO_RULE,))
    assert dirs(soon.deleted_keys) == {m.prefix for m in older[:2]} | {f"{TARGET}/@globals/{m.id}" for m in older[:2]}
    for m in broken:  # younger than the grace period: untouched for now
        assert decided[m.prefix][0] == "keep" and "within grace period" in decided[m.prefix][1][0]
    assert set(engine.keys()) == set(before) - set(soon.deleted_keys)

    later = retention(engine, KEEP_LAST="2", now=utcnow() + 2 * DAY)
    decided = by_prefix(later)
    assert decided[run.db.prefix][0] == decided[older[2].prefix][0] == "keep"  # no good backup goes
    for m in (failed, no_manifest, no_data):
        action, reasons = decided[m.prefix]
        assert action == "delete" and reasons[0] == (REASON_ORPHAN_OLD if m is no_manifest else REASON_BROKEN_OLD)
    # RELIABILITY 31: an unreadable manifest with no good backup after it may be the only copy: kept
    assert decided[garbage.prefix] == ("keep", (REASON_UNREADABLE_ONLY, decided[garbage.prefix][1][1]))
    assert dirs(engine.keys()) == {run.db.prefix, run.globals.prefix, older[2].prefix, garbage.prefix} | {
        f"{TARGET}/@globals/{older[2].id}"
    }
    assert listed_ids(engine, small_db) == [run.db.id, older[2].id]

    with opened(engine) as st:  # a good backup after it: now the unreadable one may go
        newer = forge_run(st, run, backup_id(t + 5 * HOUR, "newer0"), t + 5 * HOUR)
    last = by_prefix(retention(engine, KEEP_LAST="2", now=utcnow() + 2 * DAY))
    assert last[garbage.prefix][0] == "delete" and last[garbage.prefix][1][0] == REASON_BROKEN_OLD
    assert garbage.prefix not in dirs(engine.keys()) and newer.prefix in dirs(engine.keys())


# ---- RELIABILITY 14 ----------------------------------------------------------------------------------------


def test_everything_older_than_max_age_keeps_the_newest_good(engine: Engine, small_db: str) -> None:
    run = real_run(engine, small_db)
    now = utcnow()
    with opened(engine) as st:
        newest = rewrite(st, run.db, started_at=now - 400 * DAY)
        second = forge_run(st, run, backup_id(now - 401 * DAY, "second"), now - 401 * DAY)
        third = forge_run(st, run, backup_id(now - 402 * DAY, "third0"), now - 402 * DAY)
    report = retention(engine, MAX_AGE="30d", MIN_KEEP="2", KEEP_DAILY="7", KEEP_MONTHLY="12", now=now)
    decided = by_prefix(report)
    assert decided[newest.prefix][0] == "keep" and decided[newest.prefix][1][:2] == ("newest-good", "min-keep")
    assert decided[second.prefix][0] == "keep" and "past max age" in decided[second.prefix][1]
    assert decided[third.prefix][0] == "delete" and decided[third.prefix][1][0] == REASON_MAX_AGE
    assert listed_ids(engine, small_db) == [newest.id, second.id]
    assert report.exit_code == ExitCode.OK and report.locked == 0


# ---- RELIABILITY 15 ------------------------------------------------------------------------------------------


def test_clock_skew_ids_sorting_wrong_use_recorded_start(engine: Engine, small_db: str) -> None:
    run = real_run(engine, small_db)
    t = run.db.started_at
    with opened(engine) as st:
        # named by a clock 70 years ahead, but started two days before the real backup
        ahead = forge_run(st, run, "20991231T235959Z-ffffff", t - 2 * DAY)
        # named by a clock in 2000, but the newest of all
        behind = forge_run(st, run, "20000101T000000Z-000000", t + HOUR)
    report = retention(engine, KEEP_LAST="2", now=t + 2 * HOUR)
    decided = by_prefix(report)
    assert decided[behind.prefix] == ("keep", ("newest-good", "min-keep", "last 2"))
    assert decided[run.db.prefix] == ("keep", ("last 2",))
    assert decided[ahead.prefix] == ("delete", (REASON_NO_RULE,))
    assert listed_ids(engine, small_db, cli=True) == [behind.id, run.db.id]


# ---- RELIABILITY 16 ------------------------------------------------------------------------------------------


def test_objects_of_a_backup_in_progress_are_untouched(engine: Engine, small_db: str) -> None:
    """A dump is committed before its manifest: between the two, the run looks like an orphan."""
    run = real_run(engine, small_db)
    with opened(engine) as st:
        started = utcnow()
        in_progress = forge(st, run.db, backup_id(started, "inprog"), started, manifest=False)
    report = retention(engine, KEEP_LAST="1")
    action, reasons = by_prefix(report)[in_progress.prefix]
    assert action == "keep" and reasons[0] == "orphan, within grace period"
    keys = engine.keys()
    assert in_progress.objects[0].key in keys
    # once older than the grace period it is a killed run's leftover, and goes
    late = retention(engine, KEEP_LAST="1", now=utcnow() + 37 * HOUR)
    assert by_prefix(late)[in_progress.prefix] == ("delete", (REASON_ORPHAN_OLD, "orphan: no manifest.json"))
    assert late.deleted_keys == (in_progress.objects[0].key,)


def wait_for(predicate: Callable[[], bool], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_real_run_refuses_while_a_backup_holds_the_target_lock(engine: Engine, pg: Cluster, small_db: str) -> None:
    run = real_run(engine, small_db)
    with opened(engine) as st:
        old = forge_run(st, run, backup_id(run.db.started_at - 9 * DAY, "old000"), run.db.started_at - 9 * DAY)
    waiting = "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND wait_event_type = 'Lock'"
    with pg.connect(small_db) as blocker:
        blocker.autocommit = False
        blocker.execute("LOCK TABLE t IN ACCESS EXCLUSIVE MODE")  # pg_dump waits here: the run is in progress
        proc = engine.popen(["backup", "--databases", small_db])
        try:
            wait_for(lambda: pg.execute("postgres", waiting, (small_db,)) == [(1,)], "pg_dump to wait for the lock")
            before = engine.keys()
            with pytest.raises(LockHeld, match="holds the lock"):
                retention(engine, KEEP_LAST="1", now=utcnow() + 30 * DAY)
            assert engine.keys() == before  # nothing at all was deleted
            dry = retention(engine, KEEP_LAST="1", dry_run=True)  # a dry run takes no lock
            assert dirs(dry.planned_keys) == {old.prefix, f"{TARGET}/@globals/{old.id}"}
        finally:
            blocker.rollback()
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert len(listed_ids(engine, small_db)) == 3


# ---- RELIABILITY 18 ------------------------------------------------------------------------------------------


def test_dry_run_shows_exactly_what_the_real_run_deletes(engine: Engine, small_db: str) -> None:
    run = real_run(engine, small_db)
    t = run.db.started_at
    with opened(engine) as st:
        for d in range(1, 7):  # two a day for six days
            for h in (3, 15):
                when = t - d * DAY + h * HOUR
                forge_run(st, run, backup_id(when, f"d{d:02d}h{h:02d}"), when)
        forge(st, run.db, backup_id(t - 5 * DAY, "failed"), t - 5 * DAY, status="failed")
        forge(st, run.db, backup_id(t - 6 * DAY, "killed"), t - 6 * DAY, manifest=False)
        junk = forge(st, run.db, backup_id(t - 7 * DAY, "garbag"), t - 7 * DAY)
        st.delete(junk.key)
        st.put_bytes(junk.key, b"not a manifest")
    policy = {"KEEP_LAST": "3", "KEEP_DAILY": "4", "KEEP_WEEKLY": "2", "RETENTION_TIMEZONE": "America/New_York"}
    now = utcnow() + 2 * DAY  # the forged leftovers are older than the grace period
    before = engine.keys()

    dry = retention(engine, policy, dry_run=True, now=now)
    assert engine.keys() == before
    assert dry.planned_keys and dry.deleted_keys == ()
    table = render_plan_table(dry)
    assert "would-delete" in table and "dry run: would delete" in table
    real = retention(engine, policy, now=now)

    assert real.deleted_keys == dry.planned_keys  # the same keys, in the same order
    assert set(before) - set(engine.keys()) == set(dry.planned_keys)
    assert [(o.decision.candidate.prefix, o.decision.keep, o.decision.reasons) for o in dry.outcomes] == [
        (o.decision.candidate.prefix, o.decision.keep, o.decision.reasons) for o in real.outcomes
    ]
    assert (real.kept, real.deleted, real.locked) == (dry.kept, dry.deleted, 0)
    for doomed in real.plan.doomed:  # data first, manifest last
        if doomed.candidate.has_manifest:
            assert doomed.delete_keys[-1].endswith("/manifest.json")
    assert json.loads(json.dumps(real.to_json()))["counts"] == {"kept": real.kept, "deleted": real.deleted, "locked": 0}
    again = retention(engine, policy, now=now)
    assert again.deleted_keys == ()  # nothing left that the policy would remove


# ---- RELIABILITY 17 (S3 Object Lock) --------------------------------------------------------------------------


@pytest.fixture
def locked_engine(
    pg: Cluster, s3_server: str, s3_client: S3Client, s3_bucket: str, tmp_path: object
) -> Iterator[Engine]:
    """The engine on S3, in a bucket created with Object Lock enabled."""
    from pathlib import Path

    assert isinstance(tmp_path, Path)
    name = s3_bucket + "-lock"
    s3_client.create_bucket(Bucket=name, ObjectLockEnabledForBucket=True)
    yield Engine("s3", {**base_env(pg, tmp_path), **s3_env(s3_server, name)}, tmp_path)
    empty_bucket(s3_client, name)  # bypasses GOVERNANCE retention
    s3_client.delete_bucket(Bucket=name)


def test_object_lock_is_reported_and_the_manifest_stays(
    locked_engine: Engine, s3_client: S3Client, small_db: str
) -> None:
    engine = locked_engine
    run = real_run(engine, small_db)
    t = run.db.started_at
    with opened(engine) as st:
        data_locked = forge_run(st, run, backup_id(t - 3 * DAY, "datalk"), t - 3 * DAY)
        manifest_locked = forge_run(st, run, backup_id(t - 2 * DAY, "manilk"), t - 2 * DAY)
        free = forge_run(st, run, backup_id(t - DAY, "free00"), t - DAY)
    bucket = engine.env["PGOPS_STORAGE_URL"].removeprefix("s3://").split("/", 1)[0]
    until = utcnow() + DAY
    for key in (data_locked.objects[0].key, manifest_locked.key):
        s3_client.put_object_retention(
            Bucket=bucket, Key=f"backups/{key}", Retention={"Mode": "GOVERNANCE", "RetainUntilDate": until}
        )

    report = retention(engine, KEEP_LAST="1")
    assert report.locked == 2 and report.exit_code == ExitCode.LOCKED_OBJECTS
    assert set(report.locked_keys) == {data_locked.objects[0].key, manifest_locked.key}
    decided = {o.decision.candidate.prefix: o for o in report.outcomes}
    assert decided[data_locked.prefix].action == "locked" and decided[data_locked.prefix].deleted_keys == ()
    assert decided[manifest_locked.prefix].deleted_keys == (manifest_locked.objects[0].key,)  # data went first
    assert decided[free.prefix].action == "delete"
    assert report.deleted == 3  # free, its globals, and the globals of the half-deleted one
    spared = decided[f"{TARGET}/@globals/{data_locked.id}"]
    assert spared.action == "keep" and spared.note.startswith("spared")  # the whole locked one keeps its globals
    keys = engine.keys()
    assert data_locked.key in keys and data_locked.objects[0].key in keys  # still a whole, visible backup
    assert manifest_locked.key in keys and manifest_locked.objects[0].key not in keys
    assert "1 locked" not in render_plan_table(report) and "2 locked" in render_plan_table(report)

    again = retention(engine, KEEP_LAST="1")
    states = {o.decision.candidate.prefix: o.decision.candidate.state for o in again.outcomes}
    assert states[manifest_locked.prefix] == "incomplete"  # half-deleted shows as incomplete, never as good
    assert states[data_locked.prefix] == "good" and again.locked == 1
