"""The retention planner, rule by rule (RELIABILITY 13-15 and the grace period), plus a property test.

Histories are built as a listing of objects with manifest bytes, and go through the same
candidates_from_listing() that run_retention uses, so classification is tested too.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import random
import re
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pgops.catalog import FAILED, FOREIGN, GOOD, INCOMPLETE, ORPHAN, UNREADABLE, Catalog
from pgops.catalog import Backup as Candidate
from pgops.errors import ObjectNotFound
from pgops.manifest import GLOBALS_KEY, Manifest, StoredObject, database_key, manifest_key
from pgops.retention import Plan, Policy, plan
from pgops.retention.planner import (
    REASON_BROKEN_OLD,
    REASON_MAX_AGE,
    REASON_MIN_KEEP,
    REASON_NEWEST,
    REASON_NO_RULE,
    REASON_ORPHAN_OLD,
    REASON_PAST_MAX_AGE,
    REASON_VERIFIED,
)
from pgops.storage.base import ObjectInfo

TARGET = "h"
DAY = dt.timedelta(days=1)
HOUR = dt.timedelta(hours=1)
NOW = dt.datetime(2026, 11, 20, 12, 0, tzinfo=dt.UTC)
ONLY_LAST = Policy(keep_last=0, min_keep=1, grace_period=36 * HOUR)


def make_manifest(db: str | None, backup_id: str, started: dt.datetime, status: str = "ok", size: int = 10) -> Manifest:
    group = GLOBALS_KEY if db is None else database_key(db)
    name = "globals.sql.zst" if db is None else "dump.pgc.zst"
    return Manifest(
        id=backup_id,
        kind="globals" if db is None else "database",
        target=TARGET,
        database=db,
        status=status,
        started_at=started,
        finished_at=started + dt.timedelta(seconds=5),
        objects=(StoredObject(f"{TARGET}/{group}/{backup_id}/{name}", "dump", size, "a" * 64, 20, "b" * 64),),
        server_version="15.1",
        server_version_num=150001,
        tool_version="pg_dump 15",
        dump_format="custom",
        compression={"algorithm": "zstd", "level": 3, "threads": 0},
        encryption={"algorithm": "none"},
        host="h",
        engine_version="0.1.0",
    )


@dataclasses.dataclass
class Store:
    """A listing plus manifest bytes: the planner's whole view of a bucket."""

    objects: dict[str, ObjectInfo] = dataclasses.field(default_factory=dict)
    data: dict[str, bytes] = dataclasses.field(default_factory=dict)

    def put(self, key: str, data: bytes, modified: dt.datetime) -> None:
        self.objects[key] = ObjectInfo(key, len(data), modified)
        self.data[key] = data

    def read(self, key: str) -> bytes:
        if key not in self.data:
            raise ObjectNotFound(key)
        return self.data[key]

    def delete(self, keys: tuple[str, ...]) -> None:
        for k in keys:
            del self.objects[k]
            self.data.pop(k, None)

    def candidates(self) -> tuple[list[Candidate], list[str]]:
        catalog = Catalog.from_listing(self.objects.values(), self.read)
        return list(catalog.backups), list(catalog.ignored_keys)

    def mark_verified(self, verified: frozenset[str]) -> None:
        """A `pgops verify` record in each backup directory whose id or `<target>/<group>/<id>` is given."""
        for key in [k for k in self.objects if k.endswith("/manifest.json")]:
            prefix = key.rsplit("/", 1)[0]
            if prefix in verified or prefix.rsplit("/", 1)[-1] in verified:
                self.put(f"{prefix}/verified-20261120T000000Z-quick.json", b"{}", NOW - DAY)

    def plan(self, policy: Policy, now: dt.datetime = NOW, verified: frozenset[str] = frozenset()) -> Plan:
        self.mark_verified(verified)
        cands, stray = self.candidates()
        return plan(cands, policy, now, ignored_keys=stray)

    def add(
        self,
        db: str | None,
        backup_id: str,
        started: dt.datetime,
        state: str = GOOD,
        *,
        modified: dt.datetime | None = None,
        also_names: str | None = None,
    ) -> str:
        """One backup directory in the given state; returns its prefix. `also_names`: another
        object the manifest names (outside its directory, like an incremental's base)."""
        m = make_manifest(db, backup_id, started, status="failed" if state == FAILED else "ok")
        obj = m.objects[0]
        if also_names:
            m = dataclasses.replace(m, objects=(obj, dataclasses.replace(obj, key=also_names)))
        when = modified or started + dt.timedelta(seconds=5)
        if state != INCOMPLETE:
            self.put(obj.key, b"x" * obj.size, when)
        key = manifest_key(TARGET, db, backup_id)
        if state in (GOOD, FAILED, INCOMPLETE):
            self.put(key, m.dumps(), when)
        elif state == UNREADABLE:
            self.put(key, b"{not json", when)
        elif state == FOREIGN:
            self.put(key, json.dumps({"format_version": 2, "parts": [obj.key]}).encode(), when)
        return key.rsplit("/", 1)[0]


@dataclasses.dataclass
class CatalogView:
    """What Catalog.load reads through."""

    store: Store

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        return iter([o for k, o in sorted(self.store.objects.items()) if k.startswith(prefix)])

    def get_bytes(self, key: str) -> bytes:
        return self.store.read(key)


def decisions(p: Plan) -> dict[str, tuple[bool, tuple[str, ...]]]:
    """backup id -> (kept, reasons), for a single-group plan."""
    return {d.candidate.backup_id: (d.keep, d.reasons) for d in p.decisions}


def kept_ids(p: Plan, group: str = "app") -> list[str]:
    return [d.candidate.backup_id for d in p.decisions if d.keep and d.candidate.group == group]


def bid(t: dt.datetime, suffix: str = "aaaaaa") -> str:
    """A backup id of pgops' pattern; a readable label that is not 6 hex digits is hashed into one."""
    if not re.fullmatch("[0-9a-f]{6}", suffix):
        suffix = hashlib.sha256(suffix.encode()).hexdigest()[:6]
    return t.strftime("%Y%m%dT%H%M%SZ") + "-" + suffix


# ---- classification --------------------------------------------------------------------------------


def test_states_are_classified_from_listing_and_manifest() -> None:
    s = Store()
    t = NOW - 3 * DAY
    for i, state in enumerate([GOOD, FAILED, INCOMPLETE, UNREADABLE, ORPHAN, FOREIGN]):
        s.add("app", bid(t + i * HOUR), t + i * HOUR, state)
    s.put(f"{TARGET}/stray-file", b"?", t)
    s.put(f"{TARGET}/app/stray-dir-object", b"?", t)
    wrong_size = make_manifest("app", bid(t, "bbbbbb"), t)
    s.put(wrong_size.objects[0].key, b"short", t)
    s.put(manifest_key(TARGET, "app", wrong_size.id), wrong_size.dumps(), t)
    cands, stray = s.candidates()
    assert [c.state for c in cands] == [GOOD, INCOMPLETE, FAILED, INCOMPLETE, UNREADABLE, ORPHAN, FOREIGN]
    assert "has 5 bytes, manifest says 10" in cands[1].detail
    assert stray == [f"{TARGET}/app/stray-dir-object", f"{TARGET}/stray-file"]
    p = s.plan(ONLY_LAST)
    assert set(p.ignored_keys) == set(stray)
    assert not set(stray) & set(p.delete_keys)


def test_manifest_in_the_wrong_place_is_foreign_and_left_alone() -> None:
    s = Store()
    m = make_manifest("other", bid(NOW - 90 * DAY), NOW - 90 * DAY)
    s.put(f"{TARGET}/app/{m.id}/manifest.json", m.dumps(), NOW - 90 * DAY)
    (c,), _ = s.candidates()
    assert c.state == FOREIGN and "not where it is stored" in c.detail
    assert s.plan(ONLY_LAST).delete_keys == ()


# ---- keep rules -------------------------------------------------------------------------------------


def test_keep_last_ignores_failed_and_incomplete_newest_backups() -> None:
    """RELIABILITY 13: the newest runs failed; they do not count toward N and no good backup goes."""
    s = Store()
    good = [bid(NOW - (10 - i) * DAY, f"g{i:05d}") for i in range(5)]
    for i, b in enumerate(good):
        s.add("app", b, NOW - (10 - i) * DAY)
    broken = {FAILED: NOW - 4 * HOUR, INCOMPLETE: NOW - 3 * HOUR, UNREADABLE: NOW - 2 * HOUR, ORPHAN: NOW - HOUR}
    for state, t in broken.items():
        s.add("app", bid(t, state[:6].ljust(6, "x")), t, state)
    p = s.plan(dataclasses.replace(ONLY_LAST, keep_last=3))
    d = decisions(p)
    assert [b for b in good if d[b][0]] == good[2:]
    assert d[good[4]][1] == (REASON_NEWEST, REASON_MIN_KEEP, "last 3")
    assert d[good[3]][1] == ("last 3",)
    assert d[good[1]] == (False, (REASON_NO_RULE,))
    for state, t in broken.items():
        keep, reasons = d[bid(t, state[:6].ljust(6, "x"))]
        assert keep and reasons[0] == f"{state}, within grace period"


def test_daily_buckets_follow_the_timezone_across_a_dst_change() -> None:
    """Europe/Berlin leaves summer time on 2026-10-25: 00:00 local is 22:00 UTC before, 23:00 after."""
    s = Store()
    times = [dt.datetime(2026, 10, d, h, 30, tzinfo=dt.UTC) for d, h in ((23, 23), (24, 23), (25, 22), (26, 23))]
    ids = [bid(t) for t in times]
    for b, t in zip(ids, times, strict=True):
        s.add("app", b, t)
    now = dt.datetime(2026, 10, 27, 12, tzinfo=dt.UTC)
    berlin = s.plan(Policy(keep_daily=3, timezone="Europe/Berlin"), now)
    # local days: 10-24 01:30, 10-25 01:30 (CEST), 10-25 23:30 (CET), 10-27 00:30
    assert decisions(berlin)[ids[3]][1] == (REASON_NEWEST, REASON_MIN_KEEP, "daily 2026-10-27")
    assert decisions(berlin)[ids[2]][1] == ("daily 2026-10-25",)
    assert decisions(berlin)[ids[1]] == (False, (REASON_NO_RULE,))  # same local day as ids[2], older
    assert decisions(berlin)[ids[0]][1] == ("daily 2026-10-24",)
    utc = s.plan(Policy(keep_daily=3, timezone="UTC"), now)
    assert set(kept_ids(utc)) == set(ids[1:])


def test_monthly_and_weekly_buckets_across_a_month_boundary() -> None:
    """2026-12-01T03:00Z is still 30 November in New York: a November backup there, not a December one."""
    s = Store()
    times = [dt.datetime(2026, 11, 15, 12, tzinfo=dt.UTC), dt.datetime(2026, 12, 1, 3, tzinfo=dt.UTC)]
    times.append(dt.datetime(2026, 12, 2, 12, tzinfo=dt.UTC))
    ids = [bid(t) for t in times]
    for b, t in zip(ids, times, strict=True):
        s.add("app", b, t)
    now = dt.datetime(2026, 12, 3, tzinfo=dt.UTC)
    ny = decisions(s.plan(Policy(keep_monthly=2, keep_weekly=1, keep_yearly=1, timezone="America/New_York"), now))
    assert ny[ids[2]][1] == (REASON_NEWEST, REASON_MIN_KEEP, "weekly 2026-W49", "monthly 2026-12", "yearly 2026")
    assert ny[ids[1]][1] == ("monthly 2026-11",)
    assert ny[ids[0]] == (False, (REASON_NO_RULE,))
    utc = decisions(s.plan(Policy(keep_monthly=2, timezone="UTC"), now))
    assert utc[ids[0]][1] == ("monthly 2026-11",) and not utc[ids[1]][0]


def test_buckets_without_backups_do_not_use_up_the_count() -> None:
    """Like restic/borg --keep-daily: the last N days that HAVE backups, not the last N calendar days."""
    s = Store()
    days = [NOW - 40 * DAY, NOW - 20 * DAY, NOW - 20 * DAY + HOUR, NOW - 2 * DAY]
    ids = [bid(t) for t in days]
    for b, t in zip(ids, days, strict=True):
        s.add("app", b, t)
    assert kept_ids(s.plan(Policy(keep_daily=2))) == [ids[3], ids[2]]


def test_all_backups_older_than_max_age_keeps_the_newest_good() -> None:
    """RELIABILITY 14: max age is a hard bound, except for min-keep and the newest good backup."""
    s = Store()
    times = [NOW - (400 + i) * DAY for i in range(5)]
    ids = [bid(t) for t in times]
    for b, t in zip(ids, times, strict=True):
        s.add("app", b, t)
    s.add("app", bid(NOW - HOUR, "failed"), NOW - HOUR, FAILED)  # a newer failed one changes nothing
    p = s.plan(Policy(keep_daily=7, keep_monthly=12, max_age=30 * DAY, min_keep=2))
    d = decisions(p)
    assert d[ids[0]] == (True, (REASON_NEWEST, REASON_MIN_KEEP, "daily 2025-10-16", "monthly 2025-10", "past max age"))
    assert d[ids[1]] == (True, (REASON_MIN_KEEP, "daily 2025-10-15", "past max age"))
    assert d[ids[2]] == (False, (REASON_MAX_AGE, "overrides daily 2025-10-14"))
    assert not d[ids[3]][0] and not d[ids[4]][0]


def test_max_age_overrides_gfs_but_not_verified() -> None:
    s = Store()
    times = [NOW - DAY, NOW - 100 * DAY, NOW - 200 * DAY]
    ids = [bid(t) for t in times]
    for b, t in zip(ids, times, strict=True):
        s.add("app", b, t)
    policy = Policy(keep_monthly=12, max_age=90 * DAY)
    assert kept_ids(s.plan(policy)) == [ids[0]]
    verified = s.plan(policy, verified=frozenset({ids[2]}))
    assert decisions(verified)[ids[2]] == (True, (REASON_VERIFIED, "monthly 2026-05", REASON_PAST_MAX_AGE))
    assert not decisions(verified)[ids[1]][0]
    by_dir = s.plan(policy, verified=frozenset({f"{TARGET}/app/{ids[1]}"}))
    assert kept_ids(by_dir) == ids[:2]


def test_clock_skew_orders_by_recorded_start_not_by_id() -> None:
    """RELIABILITY 15: ids from a skewed clock sort the other way round; started_at decides."""
    s = Store()
    times = [NOW - 3 * DAY, NOW - 2 * DAY, NOW - DAY]
    ids = ["20300101T000000Z-cccccc", "20250101T000000Z-bbbbbb", "19990101T000000Z-aaaaaa"]  # oldest sorts last
    for b, t in zip(ids, times, strict=True):
        s.add("app", b, t)
    p = s.plan(Policy(keep_last=2))
    assert kept_ids(p) == [ids[2], ids[1]]
    assert decisions(p)[ids[2]][1][0] == REASON_NEWEST
    assert p.delete_keys == (f"{TARGET}/app/{ids[0]}/dump.pgc.zst", f"{TARGET}/app/{ids[0]}/manifest.json")


# ---- grace period ------------------------------------------------------------------------------------


def test_failed_incomplete_and_orphans_go_only_after_the_grace_period() -> None:
    s = Store()
    old, young = NOW - 40 * HOUR, NOW - 30 * HOUR
    prefixes = {
        (state, age): s.add("app", bid(t, f"{state[:4]}{age}"), t, state)
        for state in (FAILED, INCOMPLETE, UNREADABLE, ORPHAN)
        for age, t in (("o", old), ("y", young))
    }
    # started long ago by its clock, but written an hour ago: the newest time counts
    skewed = s.add("app", bid(NOW - 90 * DAY, "skewed"), NOW - 90 * DAY, FAILED, modified=NOW - HOUR)
    s.add("app", bid(NOW - 20 * HOUR), NOW - 20 * HOUR)  # newer than all of them: an unreadable one may go
    p = s.plan(Policy(grace_period=36 * HOUR))
    by_prefix = {d.candidate.prefix: d for d in p.decisions}
    for (state, age), prefix in prefixes.items():
        d = by_prefix[prefix]
        assert d.keep == (age == "y"), (state, age)
        if age == "o":
            assert d.reasons[0] == (REASON_ORPHAN_OLD if state == ORPHAN else REASON_BROKEN_OLD)
            assert d.delete_keys and all(k.startswith(prefix + "/") for k in d.delete_keys)
            if state != ORPHAN:
                assert d.delete_keys[-1] == prefix + "/manifest.json"  # manifest last
    assert by_prefix[skewed].keep
    assert s.plan(Policy(grace_period=36 * HOUR), NOW + 2 * DAY).doomed  # and later it goes


def test_broken_backups_go_even_when_a_group_has_no_good_backup() -> None:
    s = Store()
    s.add("app", bid(NOW - 5 * DAY), NOW - 5 * DAY, FAILED)
    s.add("app", bid(NOW - 4 * DAY), NOW - 4 * DAY, ORPHAN)
    p = s.plan(Policy(min_keep=3))
    assert len(p.doomed) == 2 and len(p.delete_keys) == 3


# ---- globals --------------------------------------------------------------------------------------------


def test_globals_are_kept_for_every_kept_database_backup() -> None:
    s = Store()
    a, b, c, d = (NOW - 300 * DAY, NOW - 3 * DAY, NOW - 2 * DAY, NOW - DAY)
    for t in (a, b, c):
        s.add("app", bid(t), t)
        s.add(None, bid(t), t)
    s.add("other", bid(a), a)  # only backup of 'other': kept as its newest, with the globals of run a
    s.add("late", bid(d, "dddddd"), d)  # no globals of its own run: the newest older one (c) serves it
    p = s.plan(Policy(keep_last=1, max_age=30 * DAY))
    g = {x.candidate.backup_id: x for x in p.decisions if x.candidate.group == GLOBALS_KEY}
    assert g[bid(a)].keep and g[bid(a)].reasons == ("globals for 1 kept database backup(s)", REASON_PAST_MAX_AGE)
    assert not g[bid(b)].keep
    assert g[bid(c)].keep and g[bid(c)].reasons[-1] == "globals for 2 kept database backup(s)"


def test_globals_fallback_skips_a_failed_globals_of_the_same_run() -> None:
    s = Store()
    older, newer = NOW - 3 * DAY, NOW - DAY
    s.add(None, bid(older), older)
    s.add(None, bid(newer), newer, FAILED)
    s.add("app", bid(newer), newer)
    p = s.plan(Policy(grace_period=HOUR))
    kept_globals = [d.candidate.backup_id for d in p.kept if d.candidate.group == GLOBALS_KEY]
    assert kept_globals == [bid(older)]


# ---- what is never deleted -------------------------------------------------------------------------------


def test_newer_format_is_left_alone_and_its_referenced_keys_are_protected() -> None:
    s = Store()
    orphan = s.add("app", bid(NOW - 90 * DAY, "orphan"), NOW - 90 * DAY, ORPHAN)
    foreign = s.add("app", bid(NOW - 80 * DAY, "future"), NOW - 80 * DAY, FOREIGN)
    raw = json.dumps({"format_version": 7, "base": f"{orphan}/dump.pgc.zst"}).encode()
    s.put(foreign + "/manifest.json", raw, NOW - 80 * DAY)
    s.add("app", bid(NOW - DAY), NOW - DAY)
    p = s.plan(Policy())
    by = {d.candidate.prefix: d for d in p.decisions}
    assert by[foreign].keep and "format_version 7" in by[foreign].reasons[0]
    assert not by[orphan].keep and by[orphan].delete_keys == ()


def test_keys_named_by_a_kept_manifest_are_never_deleted() -> None:
    s = Store()
    old = s.add("app", bid(NOW - 9 * DAY), NOW - 9 * DAY)
    m = make_manifest("app", bid(NOW - DAY), NOW - DAY)
    shared = dataclasses.replace(m, objects=(*m.objects, dataclasses.replace(m.objects[0], key=old + "/dump.pgc.zst")))
    s.put(m.objects[0].key, b"x" * 10, NOW - DAY)
    s.put(manifest_key(TARGET, "app", m.id), shared.dumps(), NOW - DAY)
    p = s.plan(Policy(keep_last=1))
    doomed = {d.candidate.prefix: d for d in p.doomed}
    assert doomed[old].delete_keys == (old + "/manifest.json",)


def test_plan_needs_an_aware_now_and_distinct_directories() -> None:
    s = Store()
    s.add("app", bid(NOW), NOW)
    cands, _ = s.candidates()
    with pytest.raises(ValueError, match="timezone-aware"):
        plan(cands, Policy(), NOW.replace(tzinfo=None))
    with pytest.raises(ValueError, match="twice"):
        plan([*cands, *cands], Policy(), NOW)


# ---- property test -----------------------------------------------------------------------------------------

BROKEN_STATES = [FAILED, INCOMPLETE, UNREADABLE, ORPHAN, FOREIGN]
GROUPS: list[str | None] = ["app", "b.x", None]
T_BASE = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
MINUTE = dt.timedelta(minutes=1)


@st.composite
def histories(draw: st.DrawFn) -> tuple[Store, dt.datetime, frozenset[str]]:
    s = Store()
    latest = T_BASE
    ids: list[str] = []
    dumps: dict[str | None, list[str]] = {g: [] for g in GROUPS}
    for i in range(draw(st.integers(1, 14))):
        started = T_BASE + draw(st.integers(0, 700 * 24 * 60)) * MINUTE
        skew = draw(st.sampled_from([0, 0, 0, -3 * 24 * 60, 5 * 24 * 60])) * MINUTE  # the id's clock
        backup_id = bid(started + skew, f"{i:06d}")
        ids.append(backup_id)
        for g in GROUPS:
            state = draw(st.sampled_from([GOOD, GOOD, GOOD, "absent", *BROKEN_STATES]))
            if state == "absent":
                continue
            # objects are written after the start, or (the store's clock, or the host's) before it
            modified = started + draw(st.integers(-2 * 24 * 60, 3 * 24 * 60)) * MINUTE
            base = draw(st.sampled_from([None, None, *dumps[g]]))
            prefix = s.add(g, backup_id, started, state, modified=modified, also_names=base)
            dumps[g].append(f"{prefix}/{'globals.sql.zst' if g is None else 'dump.pgc.zst'}")
            latest = max(latest, started, modified)
    now = latest + draw(st.integers(0, 5 * 24 * 60)) * MINUTE
    verified = frozenset(draw(st.lists(st.sampled_from(ids), max_size=3)))
    return s, now, verified


policies = st.builds(
    Policy,
    keep_last=st.integers(0, 4),
    keep_daily=st.integers(0, 5),
    keep_weekly=st.integers(0, 3),
    keep_monthly=st.integers(0, 3),
    keep_yearly=st.integers(0, 2),
    max_age=st.none() | st.integers(1, 400).map(lambda d: d * DAY),
    min_keep=st.integers(1, 4),
    timezone=st.sampled_from(["UTC", "Europe/Berlin", "America/New_York", "Australia/Lord_Howe", "Asia/Kathmandu"]),
    grace_period=st.integers(0, 72).map(lambda h: h * HOUR),
)


def newest(cands: list[Candidate]) -> Candidate | None:
    return max(cands, key=lambda c: (c.started_at, c.backup_id), default=None)


@settings(max_examples=200, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(history=histories(), policy=policies, seed=st.integers(0, 2**32))
def test_retention_invariants(history: tuple[Store, dt.datetime, frozenset[str]], policy: Policy, seed: int) -> None:
    s, now, verified = history
    s.mark_verified(verified)
    cands, _ = s.candidates()
    p = plan(cands, policy, now)
    kept = {d.candidate.prefix for d in p.kept}
    deleted = set(p.delete_keys)

    # deterministic, whatever the input order
    shuffled = [*cands]
    random.Random(seed).shuffle(shuffled)
    assert plan(shuffled, policy, now) == p
    assert len(deleted) == len(p.delete_keys)

    groups: dict[str, list[Candidate]] = {}
    for c in cands:
        groups.setdefault(c.group, []).append(c)
    for members in groups.values():
        good = [c for c in members if c.state == GOOD]
        top = newest(good)
        assert top is None or top.prefix in kept  # the newest good backup survives
        assert sum(c.prefix in kept for c in good) >= min(policy.min_keep, len(good))
        top_verified = newest([c for c in good if c.backup_id in verified])
        assert top_verified is None or top_verified.prefix in kept

    for c in cands:
        if c.prefix in kept:  # no kept backup loses anything it needs
            assert not c.referenced_keys & deleted
        if c.state == FOREIGN:
            assert c.prefix in kept
        if c.state != GOOD and (
            any(now - o.modified <= policy.grace_period for o in c.objects)
            or (c.started_at is not None and now - c.started_at <= policy.grace_period)
        ):
            assert c.prefix in kept  # young leftovers (maybe a run in progress) are untouched
    listed = {c.prefix: set(c.keys) for c in cands}
    for d in p.doomed:  # only a doomed backup's own objects are deleted, and its manifest last
        assert set(d.delete_keys) <= listed[d.candidate.prefix]
        assert d.candidate.manifest_key not in d.delete_keys[:-1]

    # restore --with-globals of every kept backup still finds the globals it found before
    before = Catalog.load(CatalogView(s), TARGET)  # type: ignore[arg-type]
    state = {c.prefix: c.state for c in cands}
    after_store = Store(dict(s.objects), dict(s.data))
    after_store.delete(p.delete_keys)
    after = Catalog.load(CatalogView(after_store), TARGET)  # type: ignore[arg-type]
    for c in cands:
        if c.group == GLOBALS_KEY or c.state != GOOD or c.prefix not in kept:
            continue
        assert c.manifest is not None
        try:
            picked = before.globals_for(c.manifest)
        except Exception:  # noqa: S112 - no globals before: nothing to keep
            continue
        if state.get(picked.prefix) == GOOD:
            assert after.globals_for(c.manifest).prefix == picked.prefix

    # idempotent: planning again on what is left deletes nothing more
    again, _ = after_store.candidates()
    assert plan(again, policy, now).delete_keys == ()
