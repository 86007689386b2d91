"""playbooks/restore.yml chooses what to restore from `pgops list --json`: its own task, run by ansible-playbook.

The task "Choose the backups to restore" is taken from the playbook as it is and run on a local host per
case, with a listing made up for that case. What it picks is what the disaster recovery restores.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
PLAYBOOK = ROOT / "playbooks" / "restore.yml"
ANSIBLE_PLAYBOOK = Path(sys.executable).parent / "ansible-playbook"


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


@pytest.fixture(scope="module")
def chosen(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, str]]:
    plays = yaml.safe_load(PLAYBOOK.read_text())
    (task,) = [t for p in plays for t in p.get("tasks", []) if t.get("name") == "Choose the backups to restore"]
    report = {
        "ansible.builtin.copy": {
            "content": "{{ {'wanted': __pgops_wanted, 'plan': __pgops_plan} | to_json }}",
            "dest": "{{ out_dir }}/{{ inventory_hostname }}.json",
            "mode": "0644",
        },
    }
    out = tmp_path_factory.mktemp("restore-plan")
    play = {
        "name": "Run restore.yml's choice on made-up listings",
        "hosts": "all",
        "gather_facts": False,
        "vars": {
            "out_dir": str(out),
            "cases": CASES,
            "__pgops_id": "{{ cases[inventory_hostname].id | default('') }}",
            "pgops_restore_databases": "{{ cases[inventory_hostname].databases | default('') }}",
            "__pgops_list": {"stdout": "{{ {'backups': cases[inventory_hostname].backups} | to_json }}"},
        },
        "tasks": [task, report],
    }
    path = out / "choose.yml"
    path.write_text(yaml.safe_dump([play], allow_unicode=True))
    env = {**os.environ, "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1"}
    result = subprocess.run(
        [
            str(ANSIBLE_PLAYBOOK),
            "-i",
            ",".join(CASES) + ",",
            "-c",
            "local",
            "-e",
            "ansible_python_interpreter=" + sys.executable,
            str(path),
        ],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return {
        case: {p["database"]: p["id"] for p in json.loads((out / f"{case}.json").read_text())["plan"]} for case in CASES
    }


@pytest.mark.parametrize("case", list(CASES))
def test_restore_playbook_chooses(chosen: dict[str, dict[str, str]], case: str) -> None:
    assert chosen[case] == CASES[case]["want"]
