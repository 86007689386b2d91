"""The cluster at rest, as playbooks/site.yml leaves it (issue 13): etcd healthy over TLS, one leader and two
streaming replicas with lag 0, writes through HAProxy's port 5000 on the leader, reads through 5001 on the
replicas, one set of settings on every member, one pgBackRest stanza for the cluster, and the secrets kept out of
sight."""

from __future__ import annotations

import json
import urllib.parse
import urllib.request
from typing import Any

import pytest
from tests.fixtures.instances import psql, run_as_postgres

from conftest import (
    ADDRESS,
    MEMBERS,
    PROXY,
    REPLICA_PORT,
    SECRETS,
    STANZA,
    cluster,
    connect,
    host_of,
    leader,
    server_of,
    wait_for,
    whole,
)

testinfra_hosts = [f"podman://{MEMBERS[0]}"]


def test_etcd_has_three_healthy_members_that_require_client_certificates() -> None:
    host = host_of(MEMBERS[0])
    tls = "--cacert=/etc/etcd/tls/ca.crt --cert=/etc/etcd/tls/member.crt --key=/etc/etcd/tls/member.key"
    endpoints = ",".join(f"https://{ADDRESS[m]}:2379" for m in MEMBERS)
    out = host.check_output(f"ETCDCTL_API=3 etcdctl --endpoints={endpoints} {tls} endpoint health 2>&1")
    assert out.count("is healthy") == 3, out
    members = host.check_output(f"ETCDCTL_API=3 etcdctl --endpoints={endpoints} {tls} member list")
    assert sorted(line.split(", ")[2] for line in members.splitlines()) == list(MEMBERS)
    # Without a client certificate, etcd refuses.
    refused = host.run(
        f"ETCDCTL_API=3 etcdctl --endpoints=https://{ADDRESS[MEMBERS[0]]}:2379 --cacert=/etc/etcd/tls/ca.crt"
        " --dial-timeout=3s endpoint health"
    )
    assert refused.rc != 0


def test_one_leader_and_two_streaming_replicas_with_no_lag() -> None:
    whole(60)
    state = cluster()["members"]
    roles = sorted(m["role"] for m in state)
    # Synchronous mode: one replica is the synchronous standby.
    assert roles == ["leader", "replica", "sync_standby"], state
    assert sorted(m["name"] for m in state) == list(MEMBERS)
    first = leader()
    assert first is not None
    for m in MEMBERS:
        if m != first:
            assert psql(host_of(m), "SELECT pg_is_in_recovery()").strip() == "t"
            assert psql(host_of(m), "SELECT status FROM pg_stat_wal_receiver").strip() == "streaming"
    slots = psql(host_of(first), "SELECT slot_name FROM pg_replication_slots WHERE active ORDER BY 1").split()
    assert len(slots) == 2, slots


def test_writes_through_5000_land_on_the_leader() -> None:
    first = leader()
    assert first is not None
    with connect() as conn:
        address, in_recovery = server_of(conn)
        conn.execute("CREATE TABLE IF NOT EXISTS routing_probe (id int)")
        conn.execute("INSERT INTO routing_probe VALUES (1)")
    assert (address, in_recovery) == (ADDRESS[first], False)


def test_reads_through_5001_land_on_the_replicas_in_turn() -> None:
    first = leader()
    seen = set()
    for _ in range(6):
        with connect(REPLICA_PORT) as conn:
            address, in_recovery = server_of(conn)
        assert in_recovery, address
        seen.add(address)
    assert seen == {ADDRESS[m] for m in MEMBERS if m != first}


def test_the_settings_of_roles_postgresql_are_live_on_every_member() -> None:
    for m in MEMBERS:
        host = host_of(m)
        assert psql(host, "SHOW ssl").strip() == "on"
        assert psql(host, "SHOW password_encryption").strip() == "scram-sha-256"
        assert psql(host, "SHOW wal_level").strip() == "replica"
        # Patroni owns postgresql.conf: no file of roles/postgresql is in play.
        assert not host.file("/etc/postgresql/15/main/conf.d").exists
    # Roles, databases and extensions were made on the leader and reached the replicas.
    for m in MEMBERS:
        extensions = psql(host_of(m), "SELECT extname FROM pg_extension", db="appdb").split()
        assert "pgcrypto" in extensions


def test_one_pgbackrest_stanza_for_the_cluster_with_a_full_backup_taken_by_the_leader() -> None:
    first = leader()
    assert first is not None
    for m in MEMBERS:
        host = host_of(m)
        info = json.loads(run_as_postgres(host, ["pgbackrest", f"--stanza={STANZA}", "info", "--output=json"]))
        assert [s["name"] for s in info] == [STANZA]
        assert info[0]["status"]["code"] == 0, info[0]["status"]
        fulls = [b for b in info[0]["backup"] if b["type"] == "full"]
        assert fulls, info[0]["backup"]
        # A replica fetches WAL from the archive when streaming cannot serve it (Patroni's restore_command).
        if m != first:
            assert psql(host, "SHOW restore_command").strip() == f'pgbackrest --stanza={STANZA} archive-get %f "%p"'
        # Only the leader archives (archive_mode on: a standby does not).
        assert psql(host, "SHOW archive_mode").strip() == "on"
    # `pgbackrest check` on the leader switches a WAL segment and sees it arrive in the repository.
    run_as_postgres(host_of(first), ["pgbackrest", f"--stanza={STANZA}", "check"])


def _prometheus(path: str, **params: str) -> Any:
    """Prometheus's HTTP API on the proxy host (roles/prometheus, group pgops_prometheus)."""
    url = f"http://{ADDRESS[PROXY]}:9090/api/v1/{path}?{urllib.parse.urlencode(params)}"
    with urllib.request.urlopen(url, timeout=10) as resp:
        body = json.loads(resp.read())
    assert body["status"] == "success", body
    return body["data"]


def test_prometheus_scrapes_patroni_on_every_member_and_sees_one_leader() -> None:
    """roles/prometheus's patroni job, on by default: each member's REST API over HTTPS, checked with its CA."""
    whole(120)

    def scraped() -> list[dict[str, Any]] | None:
        up = _prometheus("query", query='up{job="patroni"}')["result"]
        return up if len(up) == len(MEMBERS) and all(r["value"][1] == "1" for r in up) else None

    up = wait_for("Prometheus scraping Patroni on every member", scraped, timeout=90, every=3)
    assert sorted(r["metric"]["instance"] for r in up) == sorted(MEMBERS)
    assert {r["metric"]["scope"] for r in up} == {"pgops-ha"}  # so PatroniNoLeader's up{} half is per cluster
    primaries = _prometheus("query", query="sum by (scope) (patroni_primary)")["result"]
    assert [(r["metric"]["scope"], r["value"][1]) for r in primaries] == [("pgops-ha", "1")], primaries
    lead = _prometheus("query", query="patroni_primary == 1")["result"]
    assert [r["metric"]["instance"] for r in lead] == [leader()]
    firing = [a["labels"]["alertname"] for a in _prometheus("alerts")["alerts"] if a["state"] == "firing"]
    print(f"\nPrometheus: patroni up on {len(up)} members, leader {lead[0]['metric']['instance']}; firing: {firing}")
    assert "PatroniNoLeader" not in firing


def test_plain_connections_are_refused() -> None:
    import psycopg

    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(
            host=ADDRESS[PROXY], port=5000, dbname="appdb", user="app_owner", sslmode="disable", connect_timeout=3
        )


@pytest.mark.parametrize("name", [*MEMBERS, PROXY])
def test_no_secret_in_process_arguments_or_readable_files(name: str) -> None:
    host = host_of(name)
    ps = host.check_output("ps -eo args")
    for secret in SECRETS:
        assert secret not in ps
    if name != PROXY:
        config = host.file("/etc/patroni/config.yml")
        assert (config.user, config.mode) == ("postgres", 0o600)
        allowed = "-e '^/etc/patroni/config.yml$' -e '^/etc/pgops/pgops.env$' -e '^/etc/pgbackrest/pgbackrest.conf$'"
        leaked = host.run("grep -rl -e " + " -e ".join(SECRETS) + f" /etc /var/log 2>/dev/null | grep -v {allowed}")
        assert leaked.stdout.strip() == "", leaked.stdout
