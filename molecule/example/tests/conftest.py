"""Fixtures for the example's verifier: the team's copy of the inventory, its secrets, its commands, the hosts."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import testinfra
import yaml
from tests.fixtures.instances import psql as run_psql  # the project root is on sys.path (pyproject)

SCENARIO = Path(__file__).resolve().parents[1]
VARS: dict[str, Any] = yaml.safe_load((SCENARIO / "group_vars/all.yml").read_text())
ADDRESSES: dict[str, str] = VARS["example_addresses"]
DB1, DB2, DRILL = "pgops-ex-db-prod-1", "pgops-ex-db-prod-2", "pgops-ex-drill-prod-1"


def ephemeral() -> Path:
    return Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"])


def inventory(unfilled: bool = False) -> str:
    """The team's filled copy of inventory/example/production, or the one with a placeholder left."""
    return str(ephemeral() / "team" / ("inventory-unfilled" if unfilled else "inventory") / "production")


def secret(name: str) -> str:
    """A value converge.yml filled in (generated with Ansible's password lookup)."""
    return (ephemeral() / "secrets" / name).read_text().strip()


def team(*argv: str) -> subprocess.CompletedProcess[str]:
    """One of the README's commands, as a team's shell runs it, with the vault password file."""
    return subprocess.run(
        [str(SCENARIO / "files/as-a-team.sh"), str(Path(sys.executable).parent), *argv],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
        env={**os.environ, "MOLECULE_PROJECT_DIRECTORY": str(SCENARIO.parents[1])},
    )


def vault_pass() -> list[str]:
    return ["--vault-password-file", str(ephemeral() / "secrets" / "vault-pass")]


def instance(name: str) -> Any:
    return testinfra.get_host(f"podman://{name}")


@pytest.fixture(scope="module")
def db1() -> Any:
    return instance(DB1)


@pytest.fixture(scope="module")
def db2() -> Any:
    return instance(DB2)


@pytest.fixture(scope="module")
def drill() -> Any:
    return instance(DRILL)


def psql(host: Any, sql: str, db: str = "postgres") -> str:
    return run_psql(host, sql, db).strip()


def login(host: Any, address: str, user: str, password: str, sql: str) -> Any:
    """psql over TCP with TLS required, as an application logs in (a throwaway password of this scenario)."""
    conninfo = f"host={address} dbname=appdb user={user} sslmode=require connect_timeout=10"
    return host.run(
        f"env PGPASSWORD={shlex.quote(password)} psql -X -A -t -v ON_ERROR_STOP=1 -d {shlex.quote(conninfo)} "
        f"-c {shlex.quote(sql)}"
    )
