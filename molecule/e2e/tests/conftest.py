"""Fixtures for the end-to-end verifier: the three instances by role, and psql/pg_dump on them."""

from __future__ import annotations

import shlex
from typing import Any

import pytest
import testinfra

DB, STORE, RESTORE = "pgops-e2e-db", "pgops-e2e-store", "pgops-e2e-restore"
TRICKY_DB = "Tricky db ☃"
RESTRICT_KEY = "pgopse2erestrictkey"  # pg_dump >= 15.14 writes a random \restrict key unless it is fixed


@pytest.fixture(scope="module")
def db() -> Any:
    return testinfra.get_host(f"podman://{DB}")


@pytest.fixture(scope="module")
def restored() -> Any:
    return testinfra.get_host(f"podman://{RESTORE}")


def run_as_postgres(host: Any, argv: list[str]) -> str:
    """Run a command as the postgres OS user; fail the test with its stderr if it fails."""
    cmd = "runuser -u postgres -- " + " ".join(shlex.quote(a) for a in argv)
    result = host.run(cmd)
    assert result.rc == 0, f"{cmd}: {result.stderr}"
    out: str = result.stdout
    return out


def psql(host: Any, sql: str, db: str = "postgres") -> str:
    return run_as_postgres(host, ["psql", "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d", db, "-c", sql])


def dump(host: Any, database: str) -> str:
    """Schema and data, with a fixed restrict key so that two dumps of equal databases are equal."""
    return canonical(run_as_postgres(host, ["pg_dump", "--restrict-key", RESTRICT_KEY, "-d", f"dbname='{database}'"]))


def canonical(text: str) -> str:
    """Sort each run of consecutive GRANT / REVOKE / ALTER DEFAULT PRIVILEGES lines of a dump.

    pg_dump writes an ACL's entries in the order of the aclitem array, and PostgreSQL keeps default ACLs
    sorted by grantee OID. A new host creates the roles from pg_dumpall in name order, so its OIDs, and
    with them the order of the statements inside one ACL entry, can differ from the source's while the
    privileges are the same. Every other line keeps its place.
    """
    out: list[str] = []
    run: list[str] = []
    for line in text.splitlines(keepends=True):
        if line.startswith(_ACL_STATEMENTS):
            run.append(line)
            continue
        out.extend(sorted(run))
        run.clear()
        out.append(line)
    out.extend(sorted(run))
    return "".join(out)


_ACL_STATEMENTS = ("GRANT ", "REVOKE ", "ALTER DEFAULT PRIVILEGES ")
