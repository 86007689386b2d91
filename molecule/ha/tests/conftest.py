"""Fixtures for the HA scenario's verifier: the members, Patroni's view of the cluster, clients through HAProxy,
and a writer that records every acknowledged commit."""

from __future__ import annotations

import base64
import functools
import itertools
import json
import os
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import testinfra
from psycopg import sql

MEMBERS = ("pgops-ha-1", "pgops-ha-2", "pgops-ha-3")
PROXY = "pgops-ha-proxy"
ADDRESS = {
    "pgops-ha-1": "10.213.53.11",
    "pgops-ha-2": "10.213.53.12",
    "pgops-ha-3": "10.213.53.13",
    PROXY: "10.213.53.20",
}
PRIMARY_PORT, REPLICA_PORT = 5000, 5001
PGBOUNCER_PORT = 6432  # PgBouncer on the proxy host, in front of HAProxy's leader port (group_vars/pgops_pgbouncer.yml)
APP_USER, APP_PASSWORD, APP_DB = "app_owner", "ha-molecule-app-owner-0001", "appdb"
RESTAPI_USER, RESTAPI_PASSWORD = "patroni", "ha-molecule-restapi-0001"
# The scenario's throwaway secrets (group_vars): none may show in ps, logs or world-readable files.
SECRETS = (
    "ha-molecule-restapi-0001",
    "ha-molecule-superuser-0001",
    "ha-molecule-replication-0001",
    "ha-molecule-rewind-0001",
    "ha-s3-secret",
    "ha-molecule-cipher-passphrase-0001",
)
CA_PATH = "/etc/postgresql/15/main/tls/ca.crt"
STANZA = "pgops-ha"  # pgbackrest_stanza: the cluster's one stanza (patroni_scope)


def host_of(name: str) -> Any:
    return testinfra.get_host(f"podman://{name}")


def podman(*argv: str) -> None:
    subprocess.run(["podman", *argv], check=True, capture_output=True, timeout=120)


def kill(member: str) -> float:
    """SIGKILL the member's container (PostgreSQL, Patroni and etcd die with no clean shutdown); the moment it died."""
    podman("kill", "--signal", "KILL", member)
    return time.monotonic()


def start(member: str) -> None:
    """Start a killed member's container again: systemd starts etcd and Patroni, which rejoins it to the cluster."""
    podman("start", member)


def playbook_failure(result: subprocess.CompletedProcess[str]) -> str:
    """What a failed playbook run said: every failed task with the lines after it, then the recap."""
    lines = result.stdout.splitlines()
    picked = [i for i, line in enumerate(lines) if line.startswith(("fatal:", "[ERROR]"))]
    parts = ["\n".join(lines[max(i - 2, 0) : i + 12]) for i in picked]
    return "\n...\n".join([*parts, "\n".join(lines[-12:]), result.stderr[-2000:]])


def revive() -> None:
    """Start any member a failed test left killed, so that the next test starts from a whole cluster."""
    for m in MEMBERS:
        state = subprocess.run(
            ["podman", "inspect", "--format", "{{.State.Running}}", m], capture_output=True, text=True, check=True
        )
        if state.stdout.strip() != "true":
            start(m)


@functools.cache
def ca_file() -> Path:
    """The cluster's CA certificate, copied to the ephemeral directory (the test client checks servers with it).
    Copied once per test run, never kept from an earlier one: a new create makes a new CA."""
    path = Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"]) / "ha-ca.crt"
    path.write_text(host_of(MEMBERS[0]).file(CA_PATH).content_string)
    return path


def api(member: str, path: str, method: str = "GET", body: dict[str, Any] | None = None, timeout: float = 5) -> Any:
    """Patroni's REST API on a member, over HTTPS checked against the cluster's CA (basic auth for unsafe methods)."""
    ctx = ssl.create_default_context(cafile=str(ca_file()))
    req = urllib.request.Request(
        f"https://{ADDRESS[member]}:8008{path}",
        method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    if method != "GET":
        token = base64.b64encode(f"{RESTAPI_USER}:{RESTAPI_PASSWORD}".encode()).decode()
        req.add_header("Authorization", f"Basic {token}")
    with urllib.request.urlopen(req, context=ctx, timeout=timeout) as resp:  # noqa: S310 (https only, above)
        raw = resp.read()
    return json.loads(raw) if raw.strip().startswith(b"{") else raw.decode()


def cluster(via: str | None = None) -> dict[str, Any]:
    """GET /cluster from the first member that answers (or from `via`)."""
    last: Exception | None = None
    for m in [via] if via else MEMBERS:
        try:
            result: dict[str, Any] = api(m, "/cluster", timeout=3)
        except OSError as e:
            last = e
        else:
            return result
    raise AssertionError(f"no member's REST API answered: {last}")


def leader(via: str | None = None) -> str | None:
    names = [m["name"] for m in cluster(via)["members"] if m["role"] == "leader"]
    return names[0] if len(names) == 1 else None


def wait_for(what: str, check: Any, timeout: float, every: float = 1.0) -> Any:
    """Poll check() until it returns something truthy; fail with `what` after timeout seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
            if last:
                return last
        except (OSError, AssertionError, psycopg.Error) as e:
            last = e
        time.sleep(every)
    raise AssertionError(f"{what}: not within {timeout:.0f} s (last: {last!r})")


def whole(timeout: float = 180) -> None:
    """Wait until the cluster is healthy and HAProxy's leader port reaches the leader, first starting any member left
    killed. Patroni's view comes first: HAProxy follows it by its own health checks, so right after a leader change
    (test_etcd's demotion, a failover) the leader port can still close a new connection for a moment."""
    revive()
    wait_for("the cluster healthy", healthy, timeout=timeout, every=2)
    wait_for("HAProxy's leader port on a writable server", through_the_proxy_to_the_leader, timeout=60, every=1)


def through_the_proxy_to_the_leader() -> bool:
    with connect(timeout=2) as conn:
        return server_of(conn)[1] is False


def healthy(members: tuple[str, ...] = MEMBERS) -> bool:
    """One leader, every given member running, every replica streaming with lag 0."""
    state = cluster()["members"]
    by_name = {m["name"]: m for m in state}
    if not all(n in by_name for n in members):
        return False
    if [m["role"] for m in state].count("leader") != 1:
        return False
    return all(
        m["state"] in ("running", "streaming") and (m["role"] == "leader" or m.get("lag") == 0)
        for m in by_name.values()
        if m["name"] in members
    )


def connect(
    port: int = PRIMARY_PORT, timeout: int = 3, sslmode: str = "verify-ca", require_auth: str | None = None
) -> psycopg.Connection[Any]:
    """The application's connection through HAProxy: TLS checked against the cluster's CA, SCRAM. require_auth=None
    leaves libpq's default (psycopg drops a None setting)."""
    return psycopg.connect(
        host=ADDRESS[PROXY],
        port=port,
        dbname=APP_DB,
        user=APP_USER,
        password=APP_PASSWORD,
        sslrootcert=str(ca_file()),
        connect_timeout=timeout,
        autocommit=True,
        sslmode=sslmode,
        require_auth=require_auth,
    )


def connect_pgbouncer(timeout: int = 3) -> psycopg.Connection[Any]:
    """The application's connection through PgBouncer on the proxy host, which sends each transaction on to HAProxy's
    leader port: TLS verify-full against the cluster's CA (PgBouncer's certificate is signed by it), SCRAM required."""
    return connect(PGBOUNCER_PORT, timeout, sslmode="verify-full", require_auth="scram-sha-256")


def server_of(conn: psycopg.Connection[Any]) -> tuple[str, bool]:
    """The address of the member a connection landed on, and whether it is in recovery."""
    row = conn.execute("SELECT host(inet_server_addr()), pg_is_in_recovery()").fetchone()
    assert row is not None
    return str(row[0]), bool(row[1])


@dataclass
class Writer:
    """A client that inserts numbered rows through HAProxy (or `via` another way in) without pause, reconnecting after
    any error, and records every id whose COMMIT was acknowledged, with the time of the acknowledgement."""

    table: str
    via: Callable[..., psycopg.Connection[Any]] = connect
    acked: list[tuple[int, float]] = field(default_factory=list)
    errors: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        with self.via() as conn:
            # A fresh table: ids start at 1 again on a re-run of the verifier.
            conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(self.table)))
            create = sql.SQL("CREATE TABLE {} (id bigint PRIMARY KEY, at timestamptz DEFAULT now())")
            conn.execute(create.format(sql.Identifier(self.table)))
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        next_id = 1
        insert = sql.SQL("INSERT INTO {} (id) VALUES (%s)").format(sql.Identifier(self.table))
        conn: psycopg.Connection[Any] | None = None
        while not self._stop.is_set():
            try:
                if conn is None:
                    conn = self.via(timeout=2)
                conn.execute(insert, (next_id,))
                self.acked.append((next_id, time.monotonic()))
                next_id += 1
            except psycopg.Error:
                self.errors += 1
                next_id += 1  # an id whose COMMIT was not acknowledged is never reused: it may or may not exist
                if conn is not None:
                    conn.close()
                conn = None
                time.sleep(0.05)
        if conn is not None:
            conn.close()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def outage_around(self, moment: float) -> float:
        """Seconds from the last acknowledged write before `moment` to the first one after it."""
        before = [t for _, t in self.acked if t <= moment]
        after = [t for _, t in self.acked if t > moment]
        assert before and after, f"writes before: {len(before)}, after: {len(after)}"
        return min(after) - max(before)

    def gaps(self, start: float, end: float) -> list[float]:
        """The gaps between consecutive acknowledged writes from `start` to `end`, longest first."""
        times = [t for _, t in self.acked if start <= t <= end]
        return sorted((b - a for a, b in itertools.pairwise(times)), reverse=True)

    def acked_ids(self) -> set[int]:
        return {i for i, _ in self.acked}

    def lost(self) -> set[int]:
        """Acknowledged ids missing on the current leader."""
        with connect() as conn:
            rows = conn.execute(sql.SQL("SELECT id FROM {}").format(sql.Identifier(self.table))).fetchall()
        present = {r[0] for r in rows}
        return self.acked_ids() - present


# The runbook's placeholders and hosts (docs/runbooks/high-availability.md), for test_runbook.py and test_member.py.
def _replica(sync_first: bool = False) -> str:
    """A running replica: the synchronous standby first (a switchover candidate in synchronous mode), or the
    asynchronous one first (a reinit then leaves the synchronous standby alone)."""
    members = sorted(cluster()["members"], key=lambda m: (m["role"] == "sync_standby") != sync_first)
    return str(next(m["name"] for m in members if m["role"] in ("replica", "sync_standby")))


def substitute(text: str) -> str:
    for shown, real in (
        ("inventory/<env>", os.environ["MOLECULE_INVENTORY_FILE"]),
        ("<scope>", "pgops-ha"),
        ("<sync standby>", _replica(sync_first=True)),
        ("<replica>", _replica()),
        ("<member>", _replica()),
    ):
        text = text.replace(shown, real)
    return text


def run(host: str, script: str) -> subprocess.CompletedProcess[str]:
    if host == "controller":
        env = {
            **os.environ,
            "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '/usr/bin:/bin')}",
            "PGOPS_DIST": str(Path(os.environ["MOLECULE_PROJECT_DIRECTORY"]) / "dist"),
            "ANSIBLE_FORCE_COLOR": "0",
            "ANSIBLE_NOCOLOR": "1",
        }
        argv, cwd = ["bash", "-c", script], Path(os.environ["MOLECULE_PROJECT_DIRECTORY"])
    else:
        name = {"leader": leader(), "replica": _replica(), "proxy": PROXY}[host]
        assert name is not None, "no leader"
        argv, cwd, env = ["podman", "exec", name, "bash", "-c", script], None, None
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=900, check=False)
