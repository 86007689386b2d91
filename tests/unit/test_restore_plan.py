"""What a whole-host recovery restores (`pgops restore --plan`, which playbooks/restore.yml runs).

Each case is a made-up listing (newest first), stored as real manifests and data objects and read back
through the catalog, as the command does.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
from typing import Any

import pytest

from pgops.catalog import Catalog
from pgops.errors import BackupNotFound
from pgops.manifest import manifest_key
from pgops.restore_plan import plan_host_restore
from tests.unit.test_retention_plan import NOW, TARGET, Store, make_manifest


def b(run: str, database: str | None, reason: str = "scheduled", tables: list[str] | None = None) -> dict[str, Any]:
    """One manifest as `pgops list --json` shows it (newest first in the listing)."""
    return {"id": run, "database": database, "reason": reason, "tables": ["public.t"] if tables is None else tables}


CASES: dict[str, dict[str, Any]] = {
    # A host that never reached 02:00: only backup.yml's run exists. Its new cluster's empty `postgres` is left out.
    "only_on_demand": {
        "backups": [b("r3", None, "pre-migration"), b("r3", "appdb", "pre-migration"), b("r3", "postgres", "demo", [])],
        "want": {"appdb": "r3"},
    },
    # The newest scheduled run gives the set; newer on-demand runs add theirs and win where newer.
    # A database only in an older scheduled run (dropped since) is not restored.
    "scheduled_and_newer": {
        "backups": [
            b("r5", "reports", "pre-migration"),
            b("r4", None, "pre-migration"),
            b("r4", "appdb", "pre-migration"),
            b("r3", None),
            b("r3", "appdb"),
            b("r3", "billing"),
            b("r2", None),
            b("r2", "dropped_last_week"),
        ],
        "want": {"appdb": "r4", "billing": "r3", "reports": "r5"},
    },
    # A safety copy (restore --replace) is never "latest".
    "safety_copy_is_newest": {
        "backups": [b("r9", "appdb", "safety"), b("r3", None), b("r3", "appdb")],
        "want": {"appdb": "r3"},
    },
    # An explicit id restores exactly that run, even a safety copy.
    "explicit_id": {
        "backups": [b("r9", "appdb", "safety"), b("r3", None), b("r3", "appdb"), b("r3", "billing")],
        "id": "r9",
        "want": {"appdb": "r9"},
    },
    # Named databases: the newest backup of each.
    "named": {
        "backups": [b("r4", "appdb", "pre-migration"), b("r3", None), b("r3", "appdb"), b("r3", "billing")],
        "databases": "billing, appdb",
        "want": {"appdb": "r4", "billing": "r3"},
    },
    "nothing": {"backups": [], "want": {}},
}


def catalog_of(backups: list[dict[str, Any]]) -> Catalog:
    """Store each listed backup; a run's position in the listing gives its start time (newest first)."""
    s = Store()
    runs = list(dict.fromkeys(x["id"] for x in backups))
    for x in backups:
        started = NOW - dt.timedelta(hours=runs.index(x["id"]) + 1)
        run_id = started.strftime("%Y%m%dT%H%M%SZ") + "-" + hashlib.sha256(x["id"].encode()).hexdigest()[:6]
        m = make_manifest(x["database"], run_id, started)
        m = dataclasses.replace(m, reason=x["reason"], tables=tuple({"table": t} for t in x["tables"]))
        s.put(m.objects[0].key, b"x" * m.objects[0].size, started)
        s.put(manifest_key(TARGET, m.database, m.id), m.dumps(), started)
    return Catalog.from_listing(s.objects.values(), s.read)


def run_name(backup_id: str, backups: list[dict[str, Any]]) -> str:
    return str(next(x["id"] for x in backups if hashlib.sha256(x["id"].encode()).hexdigest()[:6] == backup_id[-6:]))


@pytest.mark.parametrize("case", list(CASES))
def test_restore_plan_chooses(case: str) -> None:
    c = CASES[case]
    catalog = catalog_of(c["backups"])
    ids = {run_name(m.id, c["backups"]): m.id for m in catalog.manifests}
    databases = tuple(d.strip() for d in c.get("databases", "").split(",") if d.strip())
    if not c["want"]:
        with pytest.raises(BackupNotFound, match="no usable backup"):
            plan_host_restore(catalog, TARGET, databases=databases, backup_id=ids.get(c.get("id", "")))
        return
    p = plan_host_restore(catalog, TARGET, databases=databases, backup_id=ids.get(c["id"]) if "id" in c else None)
    assert {str(m.database): run_name(m.id, c["backups"]) for m in p.plan} == c["want"]
    doc = p.to_json()
    assert [x["with_globals"] for x in doc["plan"]] == [True] + [False] * (len(p.plan) - 1)
    assert [x["database"] for x in doc["plan"]] == sorted(c["want"])


def test_a_named_database_without_a_backup_is_refused_by_name() -> None:
    catalog = catalog_of([b("r3", None), b("r3", "appdb")])
    with pytest.raises(BackupNotFound, match="'billing'"):
        plan_host_restore(catalog, TARGET, databases=("appdb", "billing"))
