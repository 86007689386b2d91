"""`pgops restore --plan`: which backup of which database a whole-host recovery restores.

playbooks/restore.yml (disaster recovery) asks this question and restores exactly the answer, so the
choice is made here, in one place, and tested in Python:

- Named databases (`--databases a,b`): the newest good backup of each (or the run `--id`; or the newest
  started at or before `--before`).
- Otherwise "every database": the databases of the base run, plus those of any newer run, each from its
  newest backup. The base run is the newest *scheduled* run that holds the roles (its @globals), or, on a
  host that never completed one, the newest run of any reason that holds them (backup.yml without
  --databases). A database only in an older run (dropped since) is not restored. A new cluster has its
  own empty `postgres`: a backup of it that holds no tables is left out.
- Safety copies (restore --replace) hold a replaced state: only an explicit `--id` picks them.
- The plan is in database name order; the first one is restored with the roles (--with-globals).

The answer also says who owns the source target now (the system identifier `pgops adopt --replaces`
needs when the restored host takes the target over).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

from pgops.catalog import Catalog
from pgops.errors import BackupNotFound
from pgops.manifest import KIND_DATABASE, KIND_GLOBALS, REASON_SAFETY, Manifest, iso


@dataclasses.dataclass(frozen=True)
class HostPlan:
    source_target: str
    wanted: tuple[str, ...]
    plan: tuple[Manifest, ...]  # in restore order; the first one brings the roles
    others: tuple[str, ...]  # databases with backups that this plan does not restore
    owner: dict[str, Any] | None  # the source target's current owner (ClusterIdentity as JSON), if claimed

    def to_json(self) -> dict[str, Any]:
        return {
            "source_target": self.source_target,
            "wanted": list(self.wanted),
            "plan": [
                dict(m.to_json(), key=m.key, with_globals=i == 0, started_at=iso(m.started_at))
                for i, m in enumerate(self.plan)
            ],
            "others": list(self.others),
            "owner": self.owner,
        }


def _unique(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))


def plan_host_restore(
    catalog: Catalog,
    source_target: str,
    *,
    databases: tuple[str, ...] = (),
    backup_id: str | None = None,
    before: dt.datetime | None = None,
) -> HostPlan:
    """The plan; BackupNotFound (exit 9) when nothing, or not every named database, can be restored."""
    good = [m for m in catalog.manifests if m.target == source_target and (before is None or m.started_at <= before)]
    dbs = [m for m in good if m.kind == KIND_DATABASE and (backup_id is not None or m.reason != REASON_SAFETY)]
    roles = [m for m in good if m.kind == KIND_GLOBALS and m.reason != REASON_SAFETY]
    if backup_id is not None:
        base = backup_id
        candidates = [m for m in dbs if m.id == backup_id]
    else:
        scheduled = [m.id for m in roles if m.reason == "scheduled"]
        base = (scheduled or [m.id for m in roles] or [""])[0]
        newest: dict[str, Manifest] = {}
        for m in dbs:  # newest first
            assert m.database is not None
            newest.setdefault(m.database, m)
        candidates = list(newest.values())
    if databases:
        wanted = _unique(list(databases))
    else:
        ids = _unique([m.id for m in good])
        runs = {base, *(ids[: ids.index(base)] if backup_id is None and base in ids else [])}
        empty = {m.database for m in candidates if m.database == "postgres" and not m.tables}
        wanted = _unique([str(m.database) for m in dbs if m.id in runs and m.database not in empty])
    plan = sorted((m for m in candidates if m.database in wanted), key=lambda m: str(m.database))
    missing = [d for d in wanted if d not in {m.database for m in plan}]
    what = (
        f"{source_target}"
        + (f" with id {backup_id}" if backup_id else "")
        + (f" at or before {iso(before)}" if before else "")
    )
    if not wanted:
        raise BackupNotFound(f"no usable backup in {what} for any database (no complete run with the roles)")
    if missing:
        raise BackupNotFound(f"no usable backup in {what} for {', '.join(map(repr, missing))}")
    owner = catalog.owner(source_target)
    return HostPlan(
        source_target,
        tuple(wanted),
        tuple(plan),
        tuple(sorted({str(m.database) for m in dbs} - set(wanted))),
        owner.identity.to_json() if owner is not None else None,
    )
