"""Failover, rejoin and switchover as an application sees them through HAProxy (issue 13). A writer inserts
numbered rows without pause and records each acknowledged COMMIT; the leader's container is killed (SIGKILL: no
clean shutdown of PostgreSQL, Patroni or etcd). The measured numbers are printed and end up in the Molecule log.

Runs in file order: each test leaves the cluster healthy for the next."""

from __future__ import annotations

import time

from tests.fixtures.instances import ansible_playbook, changed_tasks, psql

from conftest import (
    ADDRESS,
    MEMBERS,
    PROXY,
    Writer,
    api,
    cluster,
    connect_pgbouncer,
    healthy,
    host_of,
    kill,
    leader,
    playbook_failure,
    server_of,
    start,
    wait_for,
    whole,
)

testinfra_hosts = [f"podman://{MEMBERS[0]}"]
FAILOVER_LIMIT_S = 30
SWITCHOVER_TARGET_S = 5
# Through PgBouncer the pause can be longer by its login retry (server_login_retry: 1 s in
# group_vars/pgops_pgbouncer.yml) and its reconnection to HAProxy.
PGBOUNCER_SWITCHOVER_TARGET_S = 10


def _fail_over(table: str) -> tuple[str, str, Writer, float, float]:
    """Kill the leader under a running writer; return the old and new leader, the writer, the seconds until a new
    leader was elected, and the write outage."""
    whole(120)
    old = leader()
    assert old is not None
    writer = Writer(table)
    writer.start()
    time.sleep(3)
    died = kill(old)
    survivors = tuple(m for m in MEMBERS if m != old)

    def new_leader() -> str:
        name = leader(survivors[0])
        return name if name in survivors else ""

    new: str = wait_for("a new leader", new_leader, timeout=60, every=0.5)
    elected = time.monotonic() - died
    # Keep writing until the new leader has taken writes for a while.
    wait_for("a write after the failover", lambda: writer.acked and writer.acked[-1][1] > died + 1, timeout=60)
    time.sleep(3)
    writer.stop()
    return old, new, writer, elected, writer.outage_around(died)


def _roles() -> list[str]:
    return [m["role"] for m in cluster()["members"]]


def _rejoin(old: str) -> float:
    """Start the killed member again; the seconds until it streams from the new leader with lag 0."""
    started = time.monotonic()
    start(old)
    wait_for(f"{old} back as a replica with lag 0", healthy, timeout=180, every=2)
    return time.monotonic() - started


def _report(mode: str, failover: tuple[str, str, Writer, float, float]) -> set[int]:
    """Print what a failover measured (it ends up in the Molecule log); the acknowledged ids lost."""
    old, new, writer, elected, outage = failover
    lost = writer.lost()
    print(
        f"\nHA failover, {mode}: killed {old}, {new} elected after {elected:.1f} s; write outage {outage:.1f} s; "
        f"{len(writer.acked)} acknowledged writes, {len(lost)} lost {sorted(lost)[:10]}; {writer.errors} failed tries"
    )
    return lost


def test_synchronous_mode_failover_loses_no_acknowledged_write() -> None:
    failover = _fail_over("failover_sync")
    old, new, writer, elected, _ = failover
    lost = _report("synchronous mode", failover)
    assert elected <= FAILOVER_LIMIT_S
    assert lost == set()
    # The old leader comes back as a replica, rewound onto the new timeline.
    took = _rejoin(old)
    print(f"HA rejoin: {old} streaming from {new} with lag 0 {took:.1f} s after its container started")
    assert psql(host_of(old), "SELECT pg_is_in_recovery()").strip() == "t"
    assert leader() == new
    # Every acknowledged row reached the rejoined member too.
    with_rows = psql(host_of(old), "SELECT count(*) FROM failover_sync", db="appdb").strip()
    assert int(with_rows) >= len(writer.acked)


def test_asynchronous_failover_loss_is_recorded() -> None:
    current = leader()
    assert current is not None
    api(current, "/config", "PATCH", {"synchronous_mode": False})
    wait_for("no synchronous standby", lambda: "sync_standby" not in _roles(), timeout=60)
    try:
        failover = _fail_over("failover_async")
        old, _, _, elected, _ = failover
        _report("asynchronous", failover)
        assert elected <= FAILOVER_LIMIT_S
        _rejoin(old)
    finally:
        api(leader() or MEMBERS[0], "/config", "PATCH", {"synchronous_mode": True})
    wait_for("a synchronous standby again", lambda: "sync_standby" in _roles(), timeout=60)


def test_pgbouncer_on_the_proxy_reaches_the_leader_with_tls_and_scram() -> None:
    whole(120)
    lead = leader()
    assert lead is not None
    with connect_pgbouncer() as conn:
        assert conn.pgconn.ssl_in_use
        address, in_recovery = server_of(conn)
        row = conn.execute(
            "SELECT ssl, host(client_addr) FROM pg_stat_ssl JOIN pg_stat_activity USING (pid) "
            "WHERE pid = pg_backend_pid()"
        ).fetchone()
    # PgBouncer's own connection went through HAProxy to the leader, with TLS end to end (HAProxy passes it through).
    assert (address, in_recovery) == (ADDRESS[lead], False)
    assert row is not None and row[0] is True, row
    assert row[1] == ADDRESS[PROXY], row


def test_switchover_playbook_pauses_writes_briefly() -> None:
    whole(120)
    old = leader()
    writer = Writer("switchover")
    bouncer = Writer("switchover_pgbouncer", via=connect_pgbouncer)
    writer.start()
    bouncer.start()
    time.sleep(3)
    began = time.monotonic()
    result = ansible_playbook("switchover.yml")
    ended = time.monotonic()
    time.sleep(3)
    writer.stop()
    bouncer.stop()
    assert result.returncode == 0, playbook_failure(result)
    new = leader()
    gaps = writer.gaps(began, ended + 3)
    pooled = bouncer.gaps(began, ended + 3)
    print(
        f"\nHA switchover (playbooks/switchover.yml): {old} -> {new}; longest write pause {gaps[0]:.2f} s through "
        f"HAProxy, {pooled[0]:.2f} s through PgBouncer ({bouncer.errors} failed attempts there)"
    )
    assert new is not None and new != old
    assert gaps[0] < SWITCHOVER_TARGET_S
    assert pooled[0] < PGBOUNCER_SWITCHOVER_TARGET_S
    assert writer.lost() == set()
    assert bouncer.lost() == set()
    # PgBouncer follows the leader: its writes after the switchover landed on the new one.
    with connect_pgbouncer() as conn:
        assert server_of(conn) == (ADDRESS[new], False)


def test_a_candidate_that_is_not_a_replica_is_refused_before_anything_changes() -> None:
    before = leader()
    result = ansible_playbook("switchover.yml", "-e", "patroni_switchover_candidate=pgops-ha-nope")
    assert result.returncode != 0
    said = result.stdout + result.stderr  # ansible-core 2.19 prints a failed task's message on either
    assert "patroni_switchover_candidate=pgops-ha-nope" in said
    assert "Nothing was changed" in said
    assert leader() == before


def _started_at() -> dict[str, str]:
    return {m: psql(host_of(m), "SELECT pg_postmaster_start_time()").strip() for m in MEMBERS}


def test_a_setting_that_needs_a_restart_is_rolled_out_by_site_yml_one_member_at_a_time() -> None:
    whole(120)
    before = _started_at()
    old = leader()
    writer = Writer("rolling_restart")
    writer.start()
    time.sleep(3)
    began = time.monotonic()
    # A value the cluster does not have yet (the verifier may run again on the same cluster).
    wanted = "176MB" if psql(host_of(MEMBERS[0]), "SHOW shared_buffers").strip() == "160MB" else "160MB"
    # As docs/runbooks/high-availability.md puts it: site.yml, limited to the members (the proxy's roles are not
    # touched by a member's setting; test_member.py's unlimited run checks that they stay unchanged).
    settings = f'{{"postgresql_settings": {{"shared_buffers": "{wanted}"}}}}'
    result = ansible_playbook("site.yml", "--limit", "pgops_patroni", "-e", settings)
    ended = time.monotonic()
    time.sleep(3)
    writer.stop()
    assert result.returncode == 0, playbook_failure(result)
    changed = changed_tasks(result.stdout)
    print(f"\nHA rolling restart: tasks that reported a change: {changed}")
    # One changed setting touches Patroni's configuration and its rollout on the members, and nothing else:
    # every other task of site.yml on them (etcd, pgBackRest, the backup engine, the exporters) stays unchanged.
    assert set(changed) <= set(MEMBERS), changed
    assert all(t.startswith("patroni : ") for tasks in changed.values() for t in tasks), changed
    after = _started_at()
    new = leader()
    gaps = writer.gaps(began, ended)
    print(
        f"\nHA rolling restart (site.yml, shared_buffers): leader {old} -> {new}; write pauses over 1 s: "
        f"{[round(g, 1) for g in gaps if g > 1]}; {writer.errors} failed attempts; playbook {ended - began:.0f} s"
    )
    assert all(after[m] != before[m] for m in MEMBERS), (before, after)
    for m in MEMBERS:
        assert psql(host_of(m), "SHOW shared_buffers").strip() == wanted
    assert not any(m.get("pending_restart") for m in cluster()["members"])
    # Replicas first; the old leader handed over, then restarted as a replica, last.
    assert new != old
    assert old is not None and after[old] == max(after.values())
    assert writer.lost() == set()
