"""The retention planner: which backups to keep, which to delete, and why. Pure: no storage, no clock.

Input: backups as the catalog classified them (pgops.catalog: good, failed, incomplete, unreadable,
orphan, foreign, other-cluster).

Keep rules for good backups, per group (target + database, and each target's @globals)
    Good backups are ordered by the manifest's recorded started_at, newest first, never by key or
    id (ids come from the host clock and may sort wrong); the id only breaks exact ties.

    last N      the N newest.                                    reason "last N"
    daily D, weekly W, monthly M, yearly Y
                restic/borg semantics (--keep-daily etc.): walking from the newest, the newest backup
                of each calendar bucket is kept, for the D (W, M, Y) most recent buckets that HAVE a
                backup; empty days do not use up the count, and every rule counts on its own. Buckets
                are the started_at converted to RETENTION_TIMEZONE: local date ("daily 2026-11-20"),
                ISO week ("weekly 2026-W47"), month ("monthly 2026-11"), year ("yearly 2026"). A DST
                change only moves the local clock, so a backup at 00:30 local time is in that local day.
    min-keep    the MIN_KEEP newest are always kept.             reason "min-keep"
    newest      the newest good backup is always kept.           reason "newest-good"
    verified    the newest good backup that is verified (the catalog found a `pgops verify` record in
                its directory) is always kept.                   reason "newest-verified"
    max age     a good backup that started more than MAX_AGE ago is deleted even if last N or a
                daily/weekly/monthly/yearly rule would keep it: max age is a hard upper bound, EXCEPT
                for min-keep, newest-good, newest-verified and the globals rule below, which keep the
                last good backups whatever their age (RELIABILITY 14). Reason "older than max age",
                followed by "overrides <rule>" for each keep rule it overrode.
    otherwise   reason "not kept by any rule".

Safety copies
    The backup `restore --replace` takes of the database it replaces is a good backup, but it is no
    part of the series: it never counts for last N, min-keep, newest-good, newest-verified or any
    calendar rule, and it is never 'latest'. It is kept for KEEP_SAFETY after it started (reason
    "safety copy, kept for KEEP_SAFETY"), then deleted ("safety copy older than KEEP_SAFETY").

Globals
    `restore --with-globals` takes the globals of the same run, else the newest globals that started
    at or before the database backup (Catalog.globals_for). So for every kept good database backup
    of a target, the good globals backup that rule picks (same id if that globals backup is good, else
    the newest good one started at or before it) is kept too, whatever its own rules or its age say:
    reason "globals for N kept database backup(s)". Deleting other globals never changes that pick,
    since deleting cannot bring a newer backup into play. The @globals group also gets the keep
    rules above on its own.

Failed, incomplete, unreadable and orphan backups
    Deleted once older than GRACE_PERIOD, whatever happens to good backups, except an unreadable one
    (neither manifest.json nor its copy can be read): it is kept while its database has no good backup
    that started after both its id's time and its objects' last write, since it may be the only copy.
    Their age is measured from the LATEST of the recorded started_at (if a manifest can be read) and the
    modified time of each of their objects: anything touched recently is left alone, even if the host
    that wrote it has a clock that runs late. Reasons "failed/incomplete and older than grace period"
    and "orphan objects without manifest older than grace period"; while younger, "<state>, within grace
    period". A backup in progress is never touched: its objects are younger than the grace period (and
    the executor also holds the target lock that backups take).

Foreign and other-cluster backups
    Never deleted and never counted: a newer pgops, or another cluster, wrote them.

Deleting
    A doomed backup's keys are deleted data first, then manifest.json.copy, and manifest.json last;
    database backups come before globals in the plan, so a globals backup goes after the database
    backups it served. A key that any kept backup lists or that a kept manifest names is never
    deleted. Keys that do not fit pgops' layout never reach the planner (the catalog ignores them).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import zoneinfo
from collections import defaultdict
from collections.abc import Sequence
from typing import TYPE_CHECKING

from pgops.catalog import FOREIGN, GOOD, ORPHAN, OTHER_CLUSTER, UNREADABLE, Backup
from pgops.manifest import GLOBALS_KEY

if TYPE_CHECKING:
    from pgops.settings import Settings

REASON_MIN_KEEP = "min-keep"
REASON_NEWEST = "newest-good"
REASON_VERIFIED = "newest-verified"
REASON_NO_RULE = "not kept by any rule"
REASON_MAX_AGE = "older than max age"
REASON_BROKEN_OLD = "failed/incomplete and older than grace period"
REASON_ORPHAN_OLD = "orphan objects without manifest older than grace period"
REASON_PAST_MAX_AGE = "past max age"
REASON_SAFETY_KEPT = "safety copy, kept for KEEP_SAFETY"
REASON_SAFETY_OLD = "safety copy older than KEEP_SAFETY"
REASON_UNREADABLE_ONLY = "unreadable, and no newer good backup of its database: may be the only copy"


@dataclasses.dataclass(frozen=True)
class Policy:
    keep_last: int = 0
    keep_daily: int = 0
    keep_weekly: int = 0
    keep_monthly: int = 0
    keep_yearly: int = 0
    max_age: dt.timedelta | None = None  # None: off
    min_keep: int = 1
    timezone: str = "UTC"
    grace_period: dt.timedelta = dt.timedelta(hours=36)
    keep_safety: dt.timedelta = dt.timedelta(days=14)

    @classmethod
    def from_settings(cls, s: Settings) -> Policy:
        return cls(
            keep_last=s.keep_last,
            keep_daily=s.keep_daily,
            keep_weekly=s.keep_weekly,
            keep_monthly=s.keep_monthly,
            keep_yearly=s.keep_yearly,
            max_age=dt.timedelta(seconds=s.max_age) if s.max_age else None,
            min_keep=s.min_keep,
            timezone=s.retention_timezone,
            grace_period=dt.timedelta(seconds=s.grace_period),
            keep_safety=dt.timedelta(seconds=s.keep_safety),
        )

    def to_json(self) -> dict[str, object]:
        return {
            "keep_last": self.keep_last,
            "keep_daily": self.keep_daily,
            "keep_weekly": self.keep_weekly,
            "keep_monthly": self.keep_monthly,
            "keep_yearly": self.keep_yearly,
            "max_age_seconds": int(self.max_age.total_seconds()) if self.max_age else 0,
            "min_keep": self.min_keep,
            "timezone": self.timezone,
            "grace_period_seconds": int(self.grace_period.total_seconds()),
            "keep_safety_seconds": int(self.keep_safety.total_seconds()),
        }


@dataclasses.dataclass(frozen=True)
class Decision:
    candidate: Backup
    keep: bool
    reasons: tuple[str, ...]  # the first one is the deciding reason
    delete_keys: tuple[str, ...] = ()  # data first, manifest.json last; empty when kept

    @property
    def manifest_key(self) -> str | None:
        """The manifest.json among delete_keys (always the last one), if any."""
        k = self.candidate.manifest_key
        return k if self.delete_keys and self.delete_keys[-1] == k else None

    @property
    def data_keys(self) -> tuple[str, ...]:
        return self.delete_keys[:-1] if self.manifest_key else self.delete_keys


@dataclasses.dataclass(frozen=True)
class Plan:
    policy: Policy
    now: dt.datetime
    decisions: tuple[Decision, ...]  # by target, database groups then @globals, newest first
    ignored_keys: tuple[str, ...] = ()

    @property
    def delete_keys(self) -> tuple[str, ...]:
        return tuple(k for d in self.decisions for k in d.delete_keys)

    @property
    def kept(self) -> tuple[Decision, ...]:
        return tuple(d for d in self.decisions if d.keep)

    @property
    def doomed(self) -> tuple[Decision, ...]:
        return tuple(d for d in self.decisions if not d.keep)


def _order(c: Backup) -> tuple[dt.datetime, str]:
    """Newest first by recorded start time; the id only breaks exact ties."""
    assert c.started_at is not None
    return (c.started_at, c.backup_id)


def _buckets(t: dt.datetime, tz: zoneinfo.ZoneInfo) -> dict[str, str]:
    local = t.astimezone(tz)
    year, week, _ = local.isocalendar()
    return {
        "daily": local.date().isoformat(),
        "weekly": f"{year}-W{week:02d}",
        "monthly": f"{local.year}-{local.month:02d}",
        "yearly": f"{local.year}",
    }


def _rule_reasons(good: list[Backup], policy: Policy) -> dict[str, tuple[list[str], list[str]]]:
    """For each good backup (newest first): (hard reasons, soft reasons). Hard ones survive max age."""
    tz = zoneinfo.ZoneInfo(policy.timezone)
    out: dict[str, tuple[list[str], list[str]]] = {c.prefix: ([], []) for c in good}
    if good:
        out[good[0].prefix][0].append(REASON_NEWEST)
    for c in good[: policy.min_keep]:
        out[c.prefix][0].append(REASON_MIN_KEEP)
    newest_verified = next((c for c in good if c.verified), None)
    if newest_verified is not None:
        out[newest_verified.prefix][0].append(REASON_VERIFIED)
    for c in good[: policy.keep_last]:
        out[c.prefix][1].append(f"last {policy.keep_last}")
    buckets = {c.prefix: _buckets(c.started_at, tz) for c in good if c.started_at is not None}
    for rule, n in (
        ("daily", policy.keep_daily),
        ("weekly", policy.keep_weekly),
        ("monthly", policy.keep_monthly),
        ("yearly", policy.keep_yearly),
    ):
        seen: list[str] = []
        for c in good:
            if len(seen) >= n:
                break
            bucket = buckets[c.prefix][rule]
            if not seen or seen[-1] != bucket:
                seen.append(bucket)
                out[c.prefix][1].append(f"{rule} {bucket}")
    return out


def plan(
    backups: Sequence[Backup],
    policy: Policy,
    now: dt.datetime,
    *,
    ignored_keys: Sequence[str] = (),
) -> Plan:
    """Decide every backup. Deterministic: the order of `backups` does not matter."""
    if now.tzinfo is None:
        raise ValueError("plan() needs a timezone-aware 'now'")
    by_prefix = {c.prefix: c for c in backups}
    if len(by_prefix) != len(backups):
        raise ValueError("plan() got the same backup directory twice")
    groups: dict[tuple[str, str], list[Backup]] = defaultdict(list)
    for c in sorted(backups, key=lambda c: c.prefix):
        groups[(c.target, c.group)].append(c)

    keep: dict[str, bool] = {}
    reasons: dict[str, list[str]] = {}
    for members in groups.values():
        good = sorted((c for c in members if c.state == GOOD), key=_order, reverse=True)
        regular = [c for c in good if not c.is_safety]
        rules = _rule_reasons(regular, policy)
        newest_good = good[0].started_at if good else None
        for c in members:
            keep[c.prefix], reasons[c.prefix] = _decide(c, rules, policy, now, newest_good)

    _keep_globals(groups, keep, reasons)

    protected: set[str] = set()
    for prefix, kept in keep.items():
        if kept:
            protected |= by_prefix[prefix].referenced_keys
    decisions: list[Decision] = []
    # databases before globals: globals are deleted after the database backups they might serve
    for (_, _), members in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1] == GLOBALS_KEY, kv[0][1])):
        for c in sorted(members, key=_display_order):
            delete: tuple[str, ...] = ()
            if not keep[c.prefix]:
                delete = tuple(k for k in c.deletion_order if k not in protected)
            decisions.append(Decision(c, keep[c.prefix], tuple(r for r in reasons[c.prefix] if r), delete))
    return Plan(policy, now, tuple(decisions), tuple(sorted(ignored_keys)))


def _decide_good(
    c: Backup, hard: list[str], soft: list[str], policy: Policy, now: dt.datetime
) -> tuple[bool, list[str]]:
    assert c.started_at is not None
    expired = policy.max_age is not None and now - c.started_at > policy.max_age
    if hard:
        return True, hard + soft + ([REASON_PAST_MAX_AGE] if expired else [])
    if expired:
        return False, [REASON_MAX_AGE] + [f"overrides {r}" for r in soft]
    if soft:
        return True, soft
    return False, [REASON_NO_RULE]


def _decide(
    c: Backup,
    rules: dict[str, tuple[list[str], list[str]]],
    policy: Policy,
    now: dt.datetime,
    newest_good: dt.datetime | None,
) -> tuple[bool, list[str]]:
    if c.state == GOOD and c.is_safety:
        return _decide_safety(c, policy, now)
    if c.state == GOOD:
        return _decide_good(c, *rules[c.prefix], policy, now)
    return _decide_other(c, policy, now, newest_good)


def _decide_safety(c: Backup, policy: Policy, now: dt.datetime) -> tuple[bool, list[str]]:
    """A safety copy (restore --replace) is kept for KEEP_SAFETY, outside every other rule."""
    assert c.started_at is not None
    if now - c.started_at > policy.keep_safety:
        return False, [REASON_SAFETY_OLD]
    return True, [REASON_SAFETY_KEPT]


def _decide_other(
    c: Backup, policy: Policy, now: dt.datetime, newest_good: dt.datetime | None
) -> tuple[bool, list[str]]:
    if c.state in (FOREIGN, OTHER_CLUSTER):
        return True, [f"{c.state}, left alone: {c.detail}"]
    if now - c.age_anchor <= policy.grace_period:
        return True, [f"{c.state}, within grace period", c.detail]
    if c.state == UNREADABLE and (newest_good is None or newest_good <= max(c.age_anchor, c.id_time)):
        return True, [REASON_UNREADABLE_ONLY, c.detail]
    return False, [REASON_ORPHAN_OLD if c.state == ORPHAN else REASON_BROKEN_OLD, f"{c.state}: {c.detail}"]


def _display_order(c: Backup) -> tuple[int, float, str]:
    """Those with a readable manifest newest first by start time, then the rest by directory."""
    if c.started_at is not None:
        return (0, -c.started_at.timestamp(), c.backup_id)
    return (1, 0.0, c.backup_id)


def _keep_globals(
    groups: dict[tuple[str, str], list[Backup]], keep: dict[str, bool], reasons: dict[str, list[str]]
) -> None:
    """Keep the globals that Catalog.globals_for would pick for every kept good database backup."""
    for (target, group), members in groups.items():
        if group != GLOBALS_KEY:
            continue
        good = sorted((c for c in members if c.state == GOOD), key=_order, reverse=True)
        by_id = {c.backup_id: c for c in good}
        good = [c for c in good if not c.is_safety]  # only a run's own globals pick a safety copy
        users: dict[str, int] = defaultdict(int)
        for (t, g), dbs in groups.items():
            if t != target or g == GLOBALS_KEY:
                continue
            for d in dbs:
                if d.state != GOOD or not keep[d.prefix]:
                    continue
                assert d.started_at is not None
                start = d.started_at
                pick = by_id.get(d.backup_id) or next((c for c in good if _order(c)[0] <= start), None)
                if pick is not None:
                    users[pick.prefix] += 1
        for prefix, n in users.items():
            why = f"globals for {n} kept database backup(s)"
            if keep[prefix]:
                reasons[prefix].append(why)
                continue
            old = reasons[prefix]
            keep[prefix] = True
            reasons[prefix] = [why, *(r.removeprefix("overrides ") for r in old if r.startswith("overrides "))]
            if REASON_MAX_AGE in old:
                reasons[prefix].append(REASON_PAST_MAX_AGE)
