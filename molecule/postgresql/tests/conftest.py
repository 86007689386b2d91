"""Fixtures for the roles/postgresql verifier: instance facts from molecule.yml, the peer instance, psql."""

from __future__ import annotations

import os
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import testinfra
import yaml

SCENARIO = Path(__file__).resolve().parent.parent
MOLECULE = yaml.safe_load((SCENARIO / "molecule.yml").read_text())
VARS = yaml.safe_load((SCENARIO / "vars" / "converge.yml").read_text())
SIDE = yaml.safe_load((SCENARIO / "vars" / "side_effect.yml").read_text())
MAJOR = {"pgops-pg-d12": 15, "pgops-pg-d13": 17}


@dataclass(frozen=True)
class Instance:
    name: str
    ip: str
    major: int
    data_dir: str

    @property
    def conf_dir(self) -> str:
        return f"/etc/postgresql/{self.major}/main"


def instances() -> dict[str, Instance]:
    host_vars: dict[str, dict[str, Any]] = MOLECULE["provisioner"]["inventory"]["host_vars"]
    out = {}
    for p in MOLECULE["platforms"]:
        name = p["name"]
        major = MAJOR[name]
        data_dir = host_vars.get(name, {}).get("postgresql_data_dir") or f"/var/lib/postgresql/{major}/main"
        out[name] = Instance(name, p["ip"], major, data_dir)
    return out


@pytest.fixture
def inst(host: Any) -> Instance:
    return instances()[host.backend.get_hostname()]


@pytest.fixture
def peer(host: Any, request: pytest.FixtureRequest) -> Any:
    """The other instance: the remote client for TCP tests."""
    me = host.backend.get_hostname()
    other = next(n for n in instances() if n != me)
    inventory = os.environ.get("MOLECULE_INVENTORY_FILE") or request.config.option.ansible_inventory
    return testinfra.get_host(f"ansible://{other}", ansible_inventory=inventory)


def psql_local(host: Any, sql: str, db: str = "postgres") -> str:
    """Run SQL as the postgres superuser through the Unix socket; fail the test on error."""
    out: str = host.check_output(
        f"runuser -u postgres -- psql -XAtq -v ON_ERROR_STOP=1 -d {shlex.quote(db)} -c {shlex.quote(sql)}"
    )
    return out.strip()


def psql_tcp(
    client: Any,
    addr: str,
    user: str,
    password: str,
    sql: str,
    *,
    sslmode: str = "require",
    db: str = "appdb",
    extra: str = "",
) -> Any:
    """Run SQL over TCP from `client`; returns testinfra's CommandResult (rc, stdout, stderr)."""
    conninfo = f"host={addr} port=5432 dbname={db} user={user} sslmode={sslmode} connect_timeout=5 {extra}".strip()
    cmd = (
        f"PGPASSWORD={shlex.quote(password)} psql -XAtq -v ON_ERROR_STOP=1 "
        f"{shlex.quote(conninfo)} -c {shlex.quote(sql)}"
    )
    return client.run(cmd)
