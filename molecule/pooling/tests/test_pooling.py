"""What roles/pgbouncer must deliver (issue 14), tested through PgBouncer as applications use it: TLS verify-full and
SCRAM end to end; 500 concurrent clients served by at most 20 server connections; a password changed with ALTER
ROLE works at once without any PgBouncer file changing; a configuration change reloads without dropping clients,
while a port change restarts; pools larger than the live server allows are refused before anything changes.

The tests run in file order; each leaves PgBouncer as converge.yml made it.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections import Counter

import psycopg
import pytest
from tests.fixtures.instances import ansible_playbook

from conftest import (
    CONF_DIR,
    PASSWORDS,
    SCENARIO,
    connect,
    console,
    console_connection,
    exporter_samples,
    fingerprint,
    host_of,
    main_pid,
    pgbouncer_play,
    show,
    sql,
)

testinfra_hosts = ["podman://pgops-pool-db"]
CLIENTS = 500
POOL_SIZE = 20  # group_vars/pgops_pgbouncer.yml, entry appdb


def recap(output: str) -> tuple[int, int]:
    """ok and changed of the play recap for the host."""
    m = re.search(r"pgops-pool-db\s+:\s+ok=(\d+)\s+changed=(\d+)\s+unreachable=0\s+failed=0", output)
    assert m, output[-3000:]
    return int(m.group(1)), int(m.group(2))


def test_check_mode_on_the_converged_host_reports_no_change() -> None:
    result = ansible_playbook(str(SCENARIO / "converge.yml"), "--check")
    assert result.returncode == 0, result.stdout[-3000:]
    assert recap(result.stdout)[1] == 0, result.stdout[-3000:]


def test_the_files_and_the_auth_objects() -> None:
    host = host_of()
    for name in ("pgbouncer.ini", "userlist.txt"):
        f = host.file(f"{CONF_DIR}/{name}")
        assert (f.user, f.group, f.mode) == ("root", "postgres", 0o640)
        assert "Ansible managed" in f.content_string.splitlines()[0]
    users = re.findall(r'^"([^"]+)" "', host.file(f"{CONF_DIR}/userlist.txt").content_string, re.M)
    assert users == ["pgbouncer_auth", "pool_stats"]  # the auth user and the console user; never an app user
    key = host.file(f"{CONF_DIR}/tls/pgbouncer.key")
    assert (key.user, key.mode) == ("postgres", 0o600)
    assert host.service("pgbouncer").is_enabled
    # The function: SECURITY DEFINER, an empty search_path, EXECUTE for the auth user only (PUBLIC revoked).
    row = sql(
        "SELECT p.prosecdef, p.proconfig, p.proacl FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
        "WHERE n.nspname = 'pgbouncer' AND p.proname = 'get_auth'",
        "appdb",
    )
    secdef, config, acl = row.split("|")
    assert secdef == "t"
    assert config == '{"search_path=\\"\\""}'
    grantees = sorted(item.split("=")[0] for item in acl.strip("{}").split(","))
    assert grantees == ["pgbouncer_auth", "postgres"], acl
    # The auth user gets no superuser's verifier, and the function returns nothing for a non-SCRAM or unknown role.
    assert sql("SELECT count(*) FROM pgbouncer.get_auth('postgres')", "appdb") == "0"
    assert sql("SELECT passwd LIKE 'SCRAM-SHA-256$%' FROM pgbouncer.get_auth('app')", "appdb") == "t"


def test_tls_and_scram_from_the_client_to_the_server(ca_file: str) -> None:
    # Client side: verify-full against the CA (PgBouncer's certificate names this address) and SCRAM required.
    with connect(ca_file, db="appdb_session") as conn:
        assert conn.pgconn.ssl_in_use
        # Server side: PgBouncer's own connection to the server is TLS (verify-full against 127.0.0.1's certificate),
        # and it logged in as app with SCRAM, from the keys of the client's SCRAM exchange (it never had a password).
        ssl, version, user = conn.execute(
            "SELECT s.ssl, s.version, a.usename FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) "
            "WHERE pid = pg_backend_pid()"
        ).fetchone() or (None, None, None)
        assert (ssl, user) == (True, "app"), (ssl, version, user)
        assert version in ("TLSv1.2", "TLSv1.3")
        clients = [c for c in console(ca_file, "SHOW CLIENTS") if c["database"] == "appdb_session"]
        assert clients and all(c["tls"].startswith("TLSv1.") for c in clients), clients
    assert sql("SELECT rolpassword LIKE 'SCRAM-SHA-256$%' FROM pg_authid WHERE rolname = 'app'") == "t"
    # The server logged PgBouncer's connection as TLS.
    version = sql("SHOW server_version_num")[:-4]
    log = host_of().file(f"/var/log/postgresql/postgresql-{version}-main.log").content_string
    authorized = r"connection authorized: user=app database=appdb .*SSL enabled \(protocol=TLSv1\.[23]"
    assert re.search(authorized, log), log[-2000:]


def test_a_database_through_the_servers_socket(ca_file: str) -> None:
    with connect(ca_file, db="appdb_local") as conn:
        row = conn.execute("SELECT current_database(), current_user, inet_server_addr() IS NULL").fetchone()
        assert row == ("appdb", "app", True)  # a Unix socket: no server address


def test_wrong_password_md5_role_plain_tcp_and_superuser_are_refused(ca_file: str) -> None:
    with pytest.raises(psycopg.OperationalError, match=r"password authentication failed|SASL authentication failed"):
        connect(ca_file, password="not-the-password").close()
    with pytest.raises(psycopg.OperationalError, match=r"SSL required|server does not support SSL|no pg_hba"):
        connect(ca_file, sslmode="disable", require_auth=None).close()
    # A role with an md5 password: auth_query hands out SCRAM verifiers only, so PgBouncer refuses it.
    host = host_of()
    host.check_output(
        "runuser -u postgres -- psql -XAtq -v ON_ERROR_STOP=1 -c \"SET password_encryption = 'md5'\" "
        "-c \"CREATE ROLE pool_legacy LOGIN PASSWORD 'legacy-md5-0001'\" "
        "-c 'GRANT CONNECT ON DATABASE appdb TO pool_legacy'"
    )
    try:
        assert sql("SELECT rolpassword LIKE 'md5%' FROM pg_authid WHERE rolname = 'pool_legacy'") == "t"
        for auth in ("scram-sha-256", "md5"):
            with pytest.raises(psycopg.OperationalError):
                connect(ca_file, user="pool_legacy", password="legacy-md5-0001", require_auth=auth).close()
    finally:
        sql("DROP OWNED BY pool_legacy; DROP ROLE pool_legacy")
    # The superuser has no password; and the function never returns a superuser's verifier either.
    with pytest.raises(psycopg.OperationalError):
        connect(ca_file, user="postgres", password="anything").close()


class Sampler(threading.Thread):
    """Polls PgBouncer's console (one connection, as the stats user) for appdb's server connections and app's
    clients, every 50 ms until stopped."""

    def __init__(self, ca: str) -> None:
        super().__init__(daemon=True)
        self.ca, self.samples, self.stopping = ca, list[dict[str, int]](), threading.Event()

    def run(self) -> None:
        with console_connection(self.ca) as conn:
            while not self.stopping.is_set():
                pools = [p for p in show(conn, "SHOW POOLS") if p["database"] == "appdb"]
                servers = [s for s in show(conn, "SHOW SERVERS") if s["database"] == "appdb"]
                sv = sum(int(p[k]) for p in pools for k in ("sv_active", "sv_idle", "sv_used", "sv_tested", "sv_login"))
                cl = sum(int(p["cl_active"]) + int(p["cl_waiting"]) for p in pools if p["user"] == "app")
                waiting = sum(int(p["cl_waiting"]) for p in pools if p["user"] == "app")
                self.samples.append({"sv": sv, "servers": len(servers), "cl": cl, "waiting": waiting})
                time.sleep(0.05)

    def most(self, key: str) -> int:
        return max(s[key] for s in self.samples)


class ExporterSampler(threading.Thread):
    """Reads the PgBouncer exporter's /metrics every 100 ms until stopped: appdb's waiting clients as Prometheus would
    see them (pgbouncer_pools_client_waiting_connections, the input of the PgBouncerClientsWaiting alert)."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.waiting, self.up, self.stopping = list[float](), list[float](), threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set():
            samples = exporter_samples()
            self.up.extend(s.value for s in samples if s.name == "pgbouncer_up")
            self.waiting.append(
                sum(
                    s.value
                    for s in samples
                    if s.name == "pgbouncer_pools_client_waiting_connections" and s.labels.get("database") == "appdb"
                )
            )
            time.sleep(0.1)


def run_clients(ca: str, n: int) -> tuple[list[int], list[str], float, float]:
    """n clients in threads: each logs in, waits until all have, runs one transaction, waits until all have, then
    disconnects. The server backend each transaction ran on, the errors, and when all were in and all were served."""
    connected = threading.Barrier(n + 1, timeout=180)
    done = threading.Barrier(n + 1, timeout=180)
    pids: list[int] = []
    errors: list[str] = []
    lock = threading.Lock()

    def client() -> None:
        try:
            with connect(ca, autocommit=False) as conn:
                connected.wait()
                with conn.transaction():
                    row = conn.execute("SELECT pg_backend_pid(), pg_sleep(0.05)").fetchone()
                with lock:
                    pids.append(row[0] if row else -1)
                done.wait()
        except (psycopg.Error, threading.BrokenBarrierError) as e:
            with lock:
                errors.append(repr(e))
            connected.abort()
            done.abort()

    threads = [threading.Thread(target=client, daemon=True) for _ in range(n)]
    start = time.monotonic()
    logged_in = served = -1.0
    for t in threads:
        t.start()
    try:
        connected.wait()  # all logged in (SCRAM over TLS) and holding their connections
        logged_in = time.monotonic() - start
        done.wait()  # all ran their transaction, still connected
        served = time.monotonic() - start
    except threading.BrokenBarrierError:
        pass  # a client failed: its error is in errors
    finally:
        for t in threads:
            t.join(timeout=60)
    return pids, errors, logged_in, served


def test_500_clients_share_at_most_20_server_connections(ca_file: str) -> None:
    """500 clients connected at once, each running one transaction through appdb (transaction mode, pool_size 20):
    every client succeeds, the server sees at most 20 backends, and PgBouncer's console never shows more than 20 server
    connections for appdb (all its pools, the auth user's too)."""
    sampler, exported = Sampler(ca_file), ExporterSampler()
    sampler.start()
    exported.start()
    try:
        pids, errors, logged_in, served = run_clients(ca_file, CLIENTS)
        time.sleep(0.3)
    finally:
        sampler.stopping.set()
        exported.stopping.set()
        sampler.join(timeout=10)
        exported.join(timeout=10)
    assert not errors, errors[:5]
    assert len(pids) == CLIENTS and -1 not in pids
    backends = Counter(pids)
    print(
        f"{CLIENTS} clients: all logged in after {logged_in:.1f} s, all served after {served:.1f} s; "
        f"{len(backends)} distinct server backends; console max sv_active+sv_idle+sv_used+sv_tested+sv_login "
        f"{sampler.most('sv')}, max SHOW SERVERS rows {sampler.most('servers')}, max clients {sampler.most('cl')} "
        f"({len(sampler.samples)} samples); most clients waiting: console {sampler.most('waiting')}, exporter "
        f"{max(exported.waiting, default=0):.0f} ({len(exported.waiting)} scrapes)"
    )
    assert len(backends) <= POOL_SIZE, backends
    assert sampler.most("sv") <= POOL_SIZE and sampler.most("servers") <= POOL_SIZE, sampler.samples
    assert sampler.most("cl") >= CLIENTS  # the console saw all 500 clients at once: they really were concurrent
    # 500 transactions on 20 server connections: clients queued, and the exporter reported it as Prometheus scrapes it.
    assert sampler.most("waiting") > 0
    assert exported.up and set(exported.up) == {1.0}, exported.up
    assert max(exported.waiting) > 0, exported.waiting


def test_a_password_change_takes_effect_without_touching_pgbouncer(ca_file: str) -> None:
    before, pid = fingerprint(), main_pid()
    old, new = PASSWORDS["app"], "pool-molecule-app-changed-0002"
    sql(f"ALTER ROLE app PASSWORD '{new}'")
    try:
        with connect(ca_file, password=new) as conn:
            assert conn.execute("SELECT current_user").fetchone() == ("app",)
        with connect(ca_file, db="appdb_session", password=new) as conn:
            assert conn.execute("SELECT current_user").fetchone() == ("app",)
        with pytest.raises(
            psycopg.OperationalError, match=r"password authentication failed|SASL authentication failed"
        ):
            connect(ca_file, password=old).close()
    finally:
        sql(f"ALTER ROLE app PASSWORD '{old}'")
    with connect(ca_file, password=old) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    assert fingerprint() == before
    assert main_pid() == pid


def test_a_setting_change_reloads_and_keeps_clients_connected(ca_file: str) -> None:
    pid = main_pid()
    session = connect(ca_file, db="appdb_session")
    pooled = connect(ca_file)
    try:
        backend = session.execute("SELECT pg_backend_pid()").fetchone()
        since = host_of().check_output("date '+%Y-%m-%d %H:%M:%S'")
        changed = {
            # group_vars' ignore_startup_parameters kept: the PgBouncer exporter's driver sends extra_float_digits
            "pgbouncer_settings": {"server_idle_timeout": 300, "ignore_startup_parameters": "extra_float_digits"},
            "pgbouncer_databases": [
                {"name": "appdb", "pool_size": 20},
                {"name": "appdb_session", "dbname": "appdb", "pool_mode": "session", "pool_size": 6},
                {"name": "appdb_local", "dbname": "appdb", "host": "/var/run/postgresql", "pool_size": 5},
            ],
        }
        result = pgbouncer_play("-e", json.dumps(changed))
        assert result.returncode == 0, result.stdout[-3000:]
        assert recap(result.stdout)[1] >= 1
        assert "RUNNING HANDLER [pgbouncer : Reload PgBouncer]" in result.stdout
        assert "RUNNING HANDLER [pgbouncer : Restart PgBouncer]" not in result.stdout
        assert main_pid() == pid  # the same process: reloaded, not restarted
        # Both clients are still connected; the session client still has its own server backend.
        assert session.execute("SELECT pg_backend_pid()").fetchone() == backend
        assert pooled.execute("SELECT current_user").fetchone() == ("app",)
        config = {c["key"]: c["value"] for c in console(ca_file, "SHOW CONFIG")}
        assert config["server_idle_timeout"] == "300"
        dbs = {d["name"]: d for d in console(ca_file, "SHOW DATABASES")}
        assert dbs["appdb_session"]["pool_size"] == "6"
        journal = host_of().check_output(f"journalctl -u pgbouncer --no-pager --since '{since}'")
        assert re.search(r"got SIGHUP, re-reading config", journal), journal[-2000:]
    finally:
        session.close()
        pooled.close()
        # Back to the converged configuration (a reload again).
        back = pgbouncer_play()
        assert back.returncode == 0, back.stdout[-3000:]
    assert main_pid() == pid


def test_a_port_change_restarts(ca_file: str) -> None:
    pids = [main_pid()]
    try:
        result = pgbouncer_play("-e", "pgbouncer_listen_port=6433")
        assert result.returncode == 0, result.stdout[-3000:]
        assert re.search(r"TASK \[pgbouncer : Restart PgBouncer \(clients reconnect\) for .*listen_port", result.stdout)
        pids.append(main_pid())
        with connect(ca_file, port=6433) as conn:
            assert conn.execute("SELECT current_user").fetchone() == ("app",)
        with pytest.raises(psycopg.OperationalError):
            connect(ca_file, connect_timeout=3).close()
    finally:
        back = pgbouncer_play()
        assert back.returncode == 0, back.stdout[-3000:]
    pids.append(main_pid())
    assert len(set(pids)) == 3, pids  # restarted to move, and again to move back
    with connect(ca_file) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_pools_larger_than_the_live_server_allows_are_refused_before_anything_changes(ca_file: str) -> None:
    before, pid = fingerprint(), main_pid()
    bigger = {"pgbouncer_databases": [{"name": "appdb", "pool_size": 90}]}
    result = pgbouncer_play("-e", json.dumps(bigger))
    assert result.returncode != 0
    # The failed task's result (molecule's ansible.cfg sends failures to stderr), on one line.
    (fatal,) = [line for line in result.stderr.splitlines() + result.stdout.splitlines() if line.startswith("fatal:")]
    message = json.loads(fatal.split("=> ", 1)[1])["msg"]
    assert message.startswith("pgbouncer_databases pool sizes: the pools need 90 server connections"), message
    assert "max_connections 100 from the server on pgops-pool-db (SHOW max_connections)" in message
    assert "at most 87" in message  # 100 - superuser_reserved_connections 3 - margin 10
    assert fingerprint() == before
    assert main_pid() == pid
    with connect(ca_file) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
