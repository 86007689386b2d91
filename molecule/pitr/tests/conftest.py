"""Fixtures for the PITR scenario's verifier: the instances, the stanzas, and pgBackRest's info on them."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import testinfra
from tests.fixtures.instances import psql, run_as_postgres  # the project root is on sys.path (pyproject's pythonpath)

DB12, DB13, STORE = "pgops-pitr-db12", "pgops-pitr-db13", "pgops-pitr-store"
# Each host's stanza is its inventory name (group_vars/pgops_postgres.yml); new12 takes over db12's.
STANZA = {DB12: DB12, DB13: DB13}
# The scenario's throwaway secrets (group_vars, host_vars): none may show in ps, logs, journal or Ansible output.
SECRETS = ("pitr-s3-secret", "pitr-molecule-cipher-passphrase-0001", "pitr-gcs-token")
CONFIG = "/etc/pgbackrest/pgbackrest.conf"


def host_of(name: str) -> Any:
    return testinfra.get_host(f"podman://{name}")


def ephemeral(name: str) -> Path:
    return Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"]) / name


def info(host: Any, stanza: str) -> dict[str, Any]:
    """`pgbackrest info --output=json` for one stanza, as postgres."""
    out = run_as_postgres(host, ["pgbackrest", f"--config={CONFIG}", f"--stanza={stanza}", "info", "--output=json"])
    (entry,) = json.loads(out)
    result: dict[str, Any] = entry
    return result


def archiver(host: Any) -> tuple[int, int, str]:
    """pg_stat_archiver's archived_count, failed_count and last_archived_wal ('' when none) on a host."""
    row = psql(host, "SELECT archived_count, failed_count, coalesce(last_archived_wal, '') FROM pg_stat_archiver")
    archived, failed, last = row.strip().split("|")
    return int(archived), int(failed), last
