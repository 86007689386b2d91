"""Fixtures for the end-to-end verifier: the instances by role, and psql/pg_dump on them."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import testinfra
from tests.fixtures.dumps import canonical  # the project root is on sys.path (pyproject's pythonpath)
from tests.fixtures.instances import run_as_postgres

DB, STORE, RESTORE, DRILL = "pgops-e2e-db", "pgops-e2e-store", "pgops-e2e-restore", "pgops-e2e-drill"
PROM = "pgops-e2e-prom"
TRICKY_DB = "Tricky db ☃"
RESTRICT_KEY = "pgopse2erestrictkey"  # pg_dump >= 15.14 writes a random \restrict key unless it is fixed


@pytest.fixture(scope="module")
def db() -> Any:
    return testinfra.get_host(f"podman://{DB}")


@pytest.fixture(scope="module")
def restored() -> Any:
    return testinfra.get_host(f"podman://{RESTORE}")


@pytest.fixture(scope="module")
def drill() -> Any:
    return testinfra.get_host(f"podman://{DRILL}")


@pytest.fixture(scope="module")
def prom() -> Any:
    return testinfra.get_host(f"podman://{PROM}")


def ephemeral(name: str) -> str:
    """A file side_effect.yml left in the scenario's ephemeral directory."""
    return (Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"]) / name).read_text().strip()


def dump(host: Any, database: str) -> str:
    """Schema and data, with a fixed restrict key so that two dumps of equal databases are equal."""
    return canonical(run_as_postgres(host, ["pg_dump", "--restrict-key", RESTRICT_KEY, "-d", f"dbname='{database}'"]))
