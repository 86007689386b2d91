"""etcd failures (issue 13): Patroni's leader lock lives in etcd. Losing one of three etcd members changes nothing.
Losing the quorum leaves Patroni without its lock: with failsafe_mode (the role's default) the leader keeps
leading while it can reach every other member through their REST APIs, and without it the leader demotes itself.
Either way, at no moment do two members accept writes."""

from __future__ import annotations

import time

import psycopg
from tests.fixtures.instances import psql

from conftest import MEMBERS, api, connect, host_of, leader, whole

testinfra_hosts = [f"podman://{MEMBERS[0]}"]
TTL = 15  # group_vars: patroni_ttl
OBSERVE_S = 2 * TTL + 10  # long enough for a lease to run out twice over


def _etcd(members: list[str], action: str) -> None:
    for m in members:
        host_of(m).run_expect([0], f"systemctl {action} etcd")


def _writable() -> list[str]:
    """The members whose PostgreSQL accepts writes now (asked on each member's own socket)."""
    out = []
    for m in MEMBERS:
        answer = host_of(m).run("runuser -u postgres -- psql -XAtc 'SELECT pg_is_in_recovery()'")
        if answer.rc == 0 and answer.stdout.strip() == "f":
            out.append(m)
    return out


def _write_through_haproxy() -> bool:
    try:
        with connect(timeout=2) as conn:
            conn.execute("CREATE TABLE IF NOT EXISTS etcd_probe (at timestamptz DEFAULT now())")
            conn.execute("INSERT INTO etcd_probe DEFAULT VALUES")
    except psycopg.Error:
        return False
    return True


def _observe(seconds: float) -> tuple[list[list[str]], int, int]:
    """Sample which members are writable, and try a write through HAProxy, once a second."""
    samples, ok, failed = [], 0, 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        samples.append(_writable())
        if _write_through_haproxy():
            ok += 1
        else:
            failed += 1
        time.sleep(1)
    return samples, ok, failed


def test_losing_one_etcd_member_keeps_the_leader() -> None:
    whole(120)
    lead = leader()
    other = next(m for m in MEMBERS if m != lead)
    _etcd([other], "stop")
    try:
        samples, ok, failed = _observe(OBSERVE_S)
    finally:
        _etcd([other], "start")
    print(f"\nHA etcd lost one member ({other}): {ok} writes ok, {failed} failed over {OBSERVE_S} s")
    assert all(s == [lead] for s in samples), samples
    assert failed == 0
    assert leader() == lead


def test_losing_etcd_quorum_in_failsafe_mode_keeps_one_leader() -> None:
    whole(120)
    lead = leader()
    assert lead is not None
    assert api(lead, "/config")["failsafe_mode"] is True
    lost = [m for m in MEMBERS if m != lead]
    _etcd(lost, "stop")
    try:
        samples, ok, failed = _observe(OBSERVE_S)
    finally:
        _etcd(lost, "start")
    print(
        f"\nHA etcd lost its quorum (failsafe_mode on): {lead} kept leading; {ok} writes ok, {failed} failed over "
        f"{OBSERVE_S} s"
    )
    assert all(len(s) <= 1 for s in samples), samples
    assert all(s == [lead] for s in samples), samples
    assert failed == 0
    whole(120)
    assert leader() == lead


def test_losing_etcd_quorum_without_failsafe_mode_demotes_the_leader() -> None:
    whole(120)
    lead = leader()
    assert lead is not None
    api(lead, "/config", "PATCH", {"failsafe_mode": False})
    lost = [m for m in MEMBERS if m != lead]
    try:
        time.sleep(6)  # one HA loop: every member reads the change
        _etcd(lost, "stop")
        try:
            samples, ok, failed = _observe(OBSERVE_S)
        finally:
            _etcd(lost, "start")
        whole(180)
    finally:
        api(leader() or lead, "/config", "PATCH", {"failsafe_mode": True})
    demoted_after = next((i for i, s in enumerate(samples) if not s), None)
    print(
        f"\nHA etcd lost its quorum (failsafe_mode off): the leader stopped taking writes after about "
        f"{demoted_after} s; {ok} writes ok, {failed} refused"
    )
    assert all(len(s) <= 1 for s in samples), samples
    # Without its lock the leader demotes itself within the lease, and stays read-only while etcd is down.
    assert demoted_after is not None and demoted_after <= TTL + 5
    assert samples[-1] == []
    assert psql(host_of(lead), "SELECT 1").strip() == "1"
