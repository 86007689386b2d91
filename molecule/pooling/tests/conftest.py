"""Fixtures for the pooling scenario's verifier: the host, clients through PgBouncer (psycopg on the controller, TLS
verify-full against the server's CA, SCRAM only), PgBouncer's console, and the pgbouncer-only playbook."""

from __future__ import annotations

import os
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

import psycopg
import pytest
import testinfra
import yaml
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample
from tests.fixtures.instances import ansible_playbook, psql  # the project root is on sys.path (pyproject's pythonpath)

SCENARIO = Path(__file__).resolve().parent.parent
DB = "pgops-pool-db"
ADDRESS = "10.213.54.11"
PORT = 6432
PASSWORDS: dict[str, str] = yaml.safe_load((SCENARIO / "group_vars" / "all.yml").read_text())["pool_passwords"]
CA_PATH = "/etc/pgbouncer/tls/ca.crt"
CONF_DIR = "/etc/pgbouncer"
EXPORTER_PORT = 9127


def host_of(name: str = DB) -> Any:
    return testinfra.get_host(f"podman://{name}")


def sql(query: str, db: str = "postgres") -> str:
    """One query on the server through its socket, as postgres."""
    return psql(host_of(), query, db).strip()


@pytest.fixture(scope="session")
def ca_file(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The CA certificate PgBouncer's clients check it against, copied to the controller."""
    path = tmp_path_factory.mktemp("ca") / "ca.crt"
    path.write_text(host_of().file(CA_PATH).content_string)
    return str(path)


def connect(
    ca: str, db: str = "appdb", user: str = "app", password: str | None = None, **kw: Any
) -> psycopg.Connection[Any]:
    """A client of PgBouncer over the scenario's network: TLS verify-full against the CA, and SCRAM required (libpq
    refuses any other authentication PgBouncer might ask for)."""
    params: dict[str, Any] = {
        "host": ADDRESS,
        "port": PORT,
        "dbname": db,
        "user": user,
        "password": PASSWORDS.get(user, "") if password is None else password,
        "sslmode": "verify-full",
        "sslrootcert": ca,
        "require_auth": "scram-sha-256",
        "connect_timeout": 30,
        "autocommit": True,
    }
    return psycopg.connect(**(params | kw))


def console_connection(ca: str) -> psycopg.Connection[Any]:
    """PgBouncer's console as the stats user, over TLS like any client."""
    return psycopg.connect(
        host=ADDRESS,
        port=PORT,
        dbname="pgbouncer",
        user="pool_stats",
        password=PASSWORDS["pool_stats"],
        sslmode="verify-full",
        sslrootcert=ca,
        autocommit=True,
    )


def show(conn: psycopg.Connection[Any], command: str) -> list[dict[str, str]]:
    """A SHOW command on the console, with the simple query protocol (the console has no other)."""
    res = conn.pgconn.exec_(command.encode())
    assert res.status == psycopg.pq.ExecStatus.TUPLES_OK, res.error_message
    names = [(res.fname(i) or b"").decode() for i in range(res.nfields)]
    return [{names[j]: (res.get_value(i, j) or b"").decode() for j in range(res.nfields)} for i in range(res.ntuples)]


def console(ca: str, command: str) -> list[dict[str, str]]:
    with console_connection(ca) as conn:
        return show(conn, command)


def exporter_samples() -> list[Sample]:
    """Every sample of the PgBouncer exporter's /metrics (roles/postgres_exporter, port 9127 on every address)."""
    with urllib.request.urlopen(f"http://{ADDRESS}:{EXPORTER_PORT}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    return [s for family in text_string_to_metric_families(text) for s in family.samples]


def main_pid() -> int:
    return int(host_of().check_output("systemctl show -p MainPID --value pgbouncer"))


def fingerprint() -> str:
    """Checksums of every PgBouncer file, for "nothing changed"."""
    dirs = f"{CONF_DIR} /etc/systemd/system/pgbouncer.service.d"
    out: str = host_of().check_output(f"find {dirs} -type f | sort | xargs sha256sum")
    return out


def pgbouncer_play(*extra: str) -> subprocess.CompletedProcess[str]:
    """The scenario's pgbouncer.yml (roles/pgbouncer alone), as an operator runs it, with extra arguments."""
    result = ansible_playbook(str(SCENARIO / "pgbouncer.yml"), *extra)
    for secret in PASSWORDS.values():
        assert secret not in result.stdout + result.stderr
    return result


def ephemeral() -> Path:
    return Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"])
