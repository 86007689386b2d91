"""`pgops retention`: list the target once, plan (planner.py), then delete data first and manifests last.

Locking: a real run holds the per-target lock that `pgops backup` takes (pgops.lock.target_lock) from
before the listing until the last delete, so retention and a backup of the same target never run at
once; a second one gets LockHeld (exit 7) and does nothing. A dry run takes no lock: it changes
nothing, and it must work while cron's backup runs. A backup in progress is safe even without the
lock (a restore's safety backup, another host writing the same target): its objects are younger
than the grace period, and uploads in progress are not listed at all.

Dry run: `dry_run=True` plans exactly like a real run given the same store and `now`, and reports
the keys a real run would delete, in the order it would delete them. Only the store can say that an
object is locked, so locked objects show up on real runs only.

Deleting one doomed backup: its data objects first, then manifest.json last, so an interrupted run
leaves a backup that is incomplete (manifest without data), never one that looks good. If a data
object is locked (S3 Object Lock, a GCS retention policy or hold), the backup's remaining objects
and its manifest are left in place, it is reported as locked, not deleted, and the run goes on with
the next backup; `report.exit_code` is then LOCKED_OBJECTS. Database backups are deleted before
globals, and a doomed globals backup that such a locked, still whole database backup would restore
with is spared (reported as kept, with a note), so every backup that is still listed keeps its
globals. An object that vanished meanwhile counts as gone. Any other storage error stops the run at
once (nothing more is deleted while an error is pending) and propagates. In a versioned bucket a
delete only adds a delete marker.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import logging
import zoneinfo
from typing import Any

from pgops.catalog import GOOD, Catalog
from pgops.errors import ExitCode, ObjectLocked, ObjectNotFound, PgOpsError
from pgops.lock import target_lock
from pgops.log import q
from pgops.manifest import GLOBALS_KEY, iso, utcnow
from pgops.retention.planner import Decision, Plan, Policy, plan
from pgops.settings import Settings
from pgops.storage.base import Storage

log = logging.getLogger(__name__)

KEEP = "keep"
DELETE = "delete"
WOULD_DELETE = "would-delete"
LOCKED = "locked"
SPARED_NOTE = "spared: the globals of a database backup that Object Lock kept"


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What happened to one backup: kept, deleted, would be deleted (dry run), or locked."""

    decision: Decision
    action: str
    deleted_keys: tuple[str, ...] = ()
    locked_keys: tuple[str, ...] = ()
    vanished_keys: tuple[str, ...] = ()  # already gone when we deleted them
    note: str = ""  # why the executor did not follow the plan

    def to_json(self) -> dict[str, Any]:
        c = self.decision.candidate
        return {
            "target": c.target,
            "database": c.database,
            "id": c.backup_id,
            "prefix": c.prefix,
            "state": c.state,
            "started_at": iso(c.started_at) if c.started_at else None,
            "last_modified": iso(max(o.modified for o in c.objects)),
            "decision": KEEP if self.decision.keep else DELETE,
            "action": self.action,
            "reasons": list(self.decision.reasons),
            "planned_keys": list(self.decision.delete_keys),
            "deleted_keys": list(self.deleted_keys),
            "locked_keys": list(self.locked_keys),
            "vanished_keys": list(self.vanished_keys),
            "note": self.note,
        }


@dataclasses.dataclass(frozen=True)
class RetentionReport:
    target: str
    dry_run: bool
    plan: Plan
    outcomes: tuple[Outcome, ...]

    @property
    def kept(self) -> int:
        return sum(o.action == KEEP for o in self.outcomes)

    @property
    def deleted(self) -> int:
        """Backups deleted (in a dry run: that a real run would delete)."""
        return sum(o.action in (DELETE, WOULD_DELETE) for o in self.outcomes)

    @property
    def locked(self) -> int:
        """Backups that could not be deleted because an object is locked."""
        return sum(o.action == LOCKED for o in self.outcomes)

    @property
    def planned_keys(self) -> tuple[str, ...]:
        return self.plan.delete_keys

    @property
    def deleted_keys(self) -> tuple[str, ...]:
        """Keys this run deleted, in order. Empty for a dry run."""
        return tuple(k for o in self.outcomes for k in o.deleted_keys)

    @property
    def locked_keys(self) -> tuple[str, ...]:
        return tuple(k for o in self.outcomes for k in o.locked_keys)

    @property
    def exit_code(self) -> ExitCode:
        return ExitCode.LOCKED_OBJECTS if self.locked else ExitCode.OK

    def to_json(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "dry_run": self.dry_run,
            "now": iso(self.plan.now),
            "policy": self.plan.policy.to_json(),
            "counts": {"kept": self.kept, "deleted": self.deleted, "locked": self.locked},
            "backups": [o.to_json() for o in self.outcomes],
            "planned_keys": list(self.planned_keys),
            "deleted_keys": list(self.deleted_keys),
            "locked_keys": list(self.locked_keys),
            "ignored_keys": list(self.plan.ignored_keys),
            "exit_code": int(self.exit_code),
        }


def build_plan(storage: Storage, target: str, policy: Policy, now: dt.datetime) -> Plan:
    """The catalog (one listing of `<target>/`, every manifest read once), then the pure planner."""
    catalog = Catalog.load(storage, target)
    return plan(catalog.backups, policy, now, ignored_keys=catalog.ignored_keys)


def run_retention(
    settings: Settings,
    storage: Storage,
    *,
    dry_run: bool,
    now: dt.datetime | None = None,
) -> RetentionReport:
    """Apply the retention policy of `settings` to its target. See the module docstring for the rules.

    `now`: the time the policy is applied at (default: the current time, read before the listing).
    """
    policy = Policy.from_settings(settings)
    lock = contextlib.nullcontext() if dry_run else target_lock(settings.lock_dir, settings.target)
    with lock:
        when = now or utcnow()
        p = build_plan(storage, settings.target, policy, when)
        log.info(
            "event=retention_start target=%s dry_run=%s backups=%d to_delete=%d keys=%d storage=%s",
            q(settings.target),
            str(dry_run).lower(),
            len(p.decisions),
            len(p.doomed),
            len(p.delete_keys),
            q(storage.url),
        )
        if p.ignored_keys:
            log.info(
                "event=retention_ignored target=%s keys=%d detail=%s",
                q(settings.target),
                len(p.ignored_keys),
                q("not in pgops' layout; never deleted"),
            )
        outcomes = [_apply(storage, d, dry_run) for d in p.decisions if d.candidate.group != GLOBALS_KEY]
        spare = _globals_of_locked(p, outcomes)
        for d in p.decisions:
            if d.candidate.group != GLOBALS_KEY:
                continue
            if d.candidate.prefix in spare:
                outcomes.append(Outcome(d, KEEP, note=SPARED_NOTE))
                _log_decision(d, KEEP, dry_run, SPARED_NOTE)
            else:
                outcomes.append(_apply(storage, d, dry_run))
    report = RetentionReport(settings.target, dry_run, p, tuple(outcomes))
    log.info(
        "event=retention_done target=%s dry_run=%s kept=%d deleted=%d locked=%d keys_deleted=%d",
        q(settings.target),
        str(dry_run).lower(),
        report.kept,
        report.deleted,
        report.locked,
        len(report.deleted_keys),
    )
    return report


def _globals_of_locked(p: Plan, outcomes: list[Outcome]) -> set[str]:
    """Doomed globals that a database backup left whole by Object Lock still needs for restore
    --with-globals (Catalog.globals_for: same id, else the newest good one started before it)."""
    whole = [o.decision.candidate for o in outcomes if o.action == LOCKED and not o.deleted_keys]
    good = sorted(
        (d.candidate for d in p.decisions if d.candidate.group == GLOBALS_KEY and d.candidate.state == GOOD),
        key=lambda c: (c.started_at, c.backup_id),
        reverse=True,
    )
    spare: set[str] = set()
    for c in whole:
        if c.state != GOOD or c.started_at is None:
            continue
        start = c.started_at
        same = [g for g in good if g.target == c.target and g.backup_id == c.backup_id]
        older = [
            g
            for g in good
            if g.target == c.target and not g.is_safety and g.started_at is not None and g.started_at <= start
        ]
        spare.update(g.prefix for g in (same or older)[:1])
    return {d.candidate.prefix for d in p.doomed} & spare


def _log_decision(d: Decision, action: str, dry_run: bool, note: str = "") -> None:
    c = d.candidate
    log.info(
        "event=retention_decision target=%s database=%s id=%s state=%s started_at=%s decision=%s action=%s "
        "reasons=%s keys=%d dry_run=%s",
        q(c.target),
        q(c.database),
        q(c.backup_id),
        c.state,
        iso(c.started_at) if c.started_at else "-",
        KEEP if d.keep else DELETE,
        action,
        q("; ".join([*d.reasons, note] if note else d.reasons)),
        len(d.delete_keys),
        str(dry_run).lower(),
    )


def _apply(storage: Storage, d: Decision, dry_run: bool) -> Outcome:
    if d.keep or dry_run:
        action = KEEP if d.keep else WOULD_DELETE
        _log_decision(d, action, dry_run)
        return Outcome(d, action)
    deleted: list[str] = []
    vanished: list[str] = []
    locked: list[str] = []
    try:
        for key in d.data_keys:
            if not _delete(storage, key, deleted, vanished, locked):
                break
        if d.manifest_key is not None:
            if locked:
                log.warning(
                    "event=retention_manifest_kept key=%s detail=%s",
                    q(d.manifest_key),
                    q("a data object is locked; the manifest stays so the backup stays visible"),
                )
            else:
                _delete(storage, d.manifest_key, deleted, vanished, locked)
    except PgOpsError as e:
        c = d.candidate
        log.error(
            "event=retention_aborted database=%s id=%s deleted=%d error=%s",
            q(c.database),
            q(c.backup_id),
            len(deleted),
            q(e),
        )
        raise
    outcome = Outcome(d, LOCKED if locked else DELETE, tuple(deleted), tuple(locked), tuple(vanished))
    _log_decision(d, outcome.action, dry_run)
    return outcome


def _delete(storage: Storage, key: str, deleted: list[str], vanished: list[str], locked: list[str]) -> bool:
    """Delete one key; False if it is locked (then nothing more of this backup is deleted)."""
    try:
        storage.delete(key)
    except ObjectLocked as e:
        locked.append(key)
        log.warning("event=retention_locked key=%s error=%s", q(key), q(e))
        return False
    except ObjectNotFound:
        vanished.append(key)
        log.info("event=retention_vanished key=%s", q(key))
        return True
    deleted.append(key)
    log.info("event=retention_deleted key=%s", q(key))
    return True


# ---- human output -----------------------------------------------------------------------------------


def render_plan_table(report: RetentionReport) -> str:
    """One row per backup: database, id, start time in the retention time zone, state, action, reasons."""
    tz = zoneinfo.ZoneInfo(report.plan.policy.timezone)
    rows = [["DATABASE", "ID", f"STARTED ({report.plan.policy.timezone})", "STATE", "ACTION", "REASONS"]]
    for o in report.outcomes:
        c = o.decision.candidate
        started = c.started_at.astimezone(tz).strftime("%Y-%m-%d %H:%M:%S") if c.started_at else "-"
        reasons = [*o.decision.reasons, o.note] if o.note else o.decision.reasons
        rows.append([c.database, c.backup_id, started, c.state, o.action, "; ".join(reasons)])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    lines = ["  ".join([*(cell.ljust(w) for cell, w in zip(r, widths, strict=False)), r[-1]]).rstrip() for r in rows]
    keys = len(report.planned_keys) if report.dry_run else len(report.deleted_keys)
    if report.dry_run:
        summary = f"dry run: would delete {report.deleted} backup(s) ({keys} object(s)), keep {report.kept}"
    else:
        summary = f"deleted {report.deleted} backup(s) ({keys} object(s)), kept {report.kept}"
        if report.locked:
            summary += f", {report.locked} locked (not deleted: {len(report.locked_keys)} locked object(s))"
    if report.plan.ignored_keys:
        summary += f"; {len(report.plan.ignored_keys)} key(s) outside the backup layout left alone"
    return "\n".join([*lines, summary]) + "\n"
