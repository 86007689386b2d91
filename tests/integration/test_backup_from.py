"""PGOPS_BACKUP_FROM: the same backup schedule on the primary and a real streaming standby (issue 13).

With `primary` the standby's run skips (one log line, exit 0, no lock, nothing stored, no heartbeat, only
pgops_backup_skipped_replica says so) and the primary's run backs up; with `any` the standby backs up too.
Retention and verify (the restore test too) are the target's jobs as well: with `primary` a standby's run of
them skips the same way, so that the members of a cluster never prune or restore-test the same store at once.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from pgops.errors import ExitCode
from tests.fixtures.engine import base_env, run_pgops
from tests.fixtures.pg import Cluster, free_port, running_cluster
from tests.fixtures.pgbackrest_run import standby_of

DB = "issue13"

Metrics = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture(scope="module")
def pair() -> Iterator[tuple[Cluster, Cluster]]:
    """A primary with one small database, and a streaming standby of it."""
    with running_cluster() as primary:
        primary.create_database(DB)
        primary.execute(DB, "CREATE TABLE t AS SELECT i, md5(i::text) AS v FROM generate_series(1, 1000) i")
        with standby_of(primary) as standby:
            assert standby.execute("postgres", "SELECT pg_is_in_recovery()") == [(True,)]
            assert standby.execute(DB, "SELECT count(*) FROM t") == [(1000,)]
            yield primary, standby


def _env(cluster: Cluster, tmp_path: Path, run: str, **extra: str) -> dict[str, str]:
    """One run's settings: the shared store and metrics dir, a lock dir of its own (to see whether it locked)."""
    store = tmp_path / "store"
    store.mkdir(exist_ok=True)
    return {
        **base_env(cluster, tmp_path),
        "PGOPS_STORAGE_URL": store.as_uri(),
        "PGOPS_DATABASES": DB,
        "PGOPS_METRICS_DIR": str(tmp_path / "textfile"),
        "PGOPS_LOCK_DIR": str(tmp_path / f"lock-{run}"),
        **{f"PGOPS_{k}": v for k, v in extra.items()},
    }


def _stored(tmp_path: Path) -> list[str]:
    return sorted(str(p.relative_to(tmp_path / "store")) for p in (tmp_path / "store").rglob("*") if p.is_file())


def _metrics(tmp_path: Path) -> Metrics:
    out = {}
    for family in text_string_to_metric_families((tmp_path / "textfile" / "pgops.prom").read_text()):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


SKIPPED = ("pgops_backup_skipped_replica", (("target", "testhost"),))
LAST_SUCCESS = ("pgops_backup_last_success_timestamp_seconds", (("database", DB), ("target", "testhost")))


def test_primary_only_skips_on_the_standby_and_backs_up_on_the_primary(
    pair: tuple[Cluster, Cluster], tmp_path: Path, heartbeat_server: tuple[str, list[str]]
) -> None:
    primary, standby = pair
    url, pings = heartbeat_server
    skip = run_pgops(["backup"], _env(standby, tmp_path, "standby", BACKUP_FROM="primary", HEARTBEAT_URL=url))
    assert skip.returncode == 0, skip.stderr
    lines = [line for line in skip.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert "event=backup_skipped reason=in_recovery" in lines[0] and "target=testhost" in lines[0]
    assert _stored(tmp_path) == [], "a skip writes nothing to the store, not even the cluster claim"
    assert not (tmp_path / "lock-standby").exists(), "a skip takes no lock"
    assert pings == [], "a skip is neither a success nor a failure of the heartbeat check"
    assert _metrics(tmp_path) == {SKIPPED: 1.0}, "a skip touches no per-database gauge"

    ran = run_pgops(["backup"], _env(primary, tmp_path, "primary", BACKUP_FROM="primary", HEARTBEAT_URL=url))
    assert ran.returncode == 0, ran.stderr
    assert "event=backup_skipped" not in ran.stderr
    assert any(k.startswith(f"testhost/{DB}/") for k in _stored(tmp_path)), _stored(tmp_path)
    assert (tmp_path / "lock-primary" / "pgops-testhost.lock").exists()
    assert pings == ["/ping/check-uuid-secret/start", "/ping/check-uuid-secret"]
    m = _metrics(tmp_path)
    assert m[SKIPPED] == 0.0 and m[LAST_SUCCESS] > 0


def test_after_a_failover_the_old_primarys_skip_keeps_its_last_success(
    pair: tuple[Cluster, Cluster], tmp_path: Path
) -> None:
    """One host's metrics dir: it backed up as the leader, then its server became a standby. The skip must not
    look like a new success (last success and last attempt keep their values) nor like a failure."""
    primary, standby = pair
    run_pgops(["backup"], _env(primary, tmp_path, "leader", BACKUP_FROM="primary"), check=True)
    before, stored = _metrics(tmp_path), _stored(tmp_path)
    skip = run_pgops(["backup"], _env(standby, tmp_path, "replica", BACKUP_FROM="primary"))
    assert skip.returncode == 0 and "event=backup_skipped reason=in_recovery" in skip.stderr, skip.stderr
    after = _metrics(tmp_path)
    assert after == {**before, SKIPPED: 1.0}
    assert _stored(tmp_path) == stored


def test_any_backs_up_from_the_standby(pair: tuple[Cluster, Cluster], tmp_path: Path) -> None:
    _, standby = pair
    for value in ("any", None):  # the default is any
        extra = {"BACKUP_FROM": value} if value else {}
        result = run_pgops(["backup", "--json"], _env(standby, tmp_path, f"standby-{value}", **extra))
        assert result.returncode == 0, result.stderr
        assert "event=backup_skipped" not in result.stderr
        assert "event=backup_done" in result.stderr and f"database={DB}" in result.stderr
        assert _metrics(tmp_path)[SKIPPED] == 0.0
    dumps = [k for k in _stored(tmp_path) if k.startswith(f"testhost/{DB}/") and "/dump." in k]
    assert len(dumps) == 2, _stored(tmp_path)


@pytest.mark.parametrize(
    "argv", [["retention"], ["verify"], ["verify", "--restore-test"]], ids=["retention", "verify", "restore-test"]
)
def test_retention_and_verify_skip_on_the_standby_and_run_on_the_primary(
    pair: tuple[Cluster, Cluster], tmp_path: Path, heartbeat_server: tuple[str, list[str]], argv: list[str]
) -> None:
    """A stored backup that retention would prune: the standby's run must leave it, and everything else, as
    it was (its server is read-only, so a restore test there could only fail); the primary's run does the job."""
    primary, standby = pair
    url, pings = heartbeat_server
    for _ in range(2):  # two backups of today: KEEP_LAST=1 and no daily rule prunes the older one
        run_pgops(["backup"], _env(primary, tmp_path, "seed", BACKUP_FROM="primary"), check=True)
    stored, before = _stored(tmp_path), _metrics(tmp_path)
    prune = {"KEEP_LAST": "1", "KEEP_DAILY": "0", "KEEP_WEEKLY": "0", "KEEP_MONTHLY": "0", "KEEP_YEARLY": "0"}
    env = {"BACKUP_FROM": "primary", "HEARTBEAT_URL": url, **prune}

    skip = run_pgops(argv, _env(standby, tmp_path, "standby", **env))
    assert skip.returncode == 0, skip.stderr
    lines = [line for line in skip.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert f"event={argv[0]}_skipped reason=in_recovery" in lines[0] and "target=testhost" in lines[0]
    assert _stored(tmp_path) == stored, "a skip deletes and writes nothing"
    assert not (tmp_path / "lock-standby").exists(), "a skip takes no lock"
    assert pings == [], "a skip is neither a success nor a failure of the heartbeat check"
    assert _metrics(tmp_path) == before, "a skip touches no gauge"

    ran = run_pgops(argv, _env(primary, tmp_path, "primary", **env))
    assert ran.returncode == 0, ran.stderr
    assert f"event={argv[0]}_skipped" not in ran.stderr
    assert (tmp_path / "lock-primary").exists() or argv[0] == "verify", "retention locks the target"
    assert pings == ["/ping/check-uuid-secret/start", "/ping/check-uuid-secret"]
    if argv == ["retention"]:
        assert len(_stored(tmp_path)) < len(stored), "the primary's retention pruned the older backup"
    else:
        assert _metrics(tmp_path) != before, "the primary's verify recorded its result"


def test_an_unreachable_server_is_not_skipped_but_fails(
    tmp_path: Path, heartbeat_server: tuple[str, list[str]]
) -> None:
    """Whether the server is a standby cannot be known: the run goes on and fails like any backup (exit 5,
    heartbeat failure ping), never a silent skip."""
    url, pings = heartbeat_server
    down = Cluster(tmp_path, free_port())
    result = run_pgops(["backup"], _env(down, tmp_path, "down", BACKUP_FROM="primary", HEARTBEAT_URL=url))
    assert result.returncode == ExitCode.POSTGRES, result.stderr
    assert "event=backup_skipped" not in result.stderr and "cannot connect" in result.stderr
    assert pings == ["/ping/check-uuid-secret/start", f"/ping/check-uuid-secret/{int(ExitCode.POSTGRES)}"]


@pytest.mark.parametrize("value", ["leader", "replica", ""])
def test_a_bad_value_is_a_config_error_naming_the_setting(
    pair: tuple[Cluster, Cluster], tmp_path: Path, value: str
) -> None:
    _, standby = pair
    result = run_pgops(["backup"], _env(standby, tmp_path, "bad", BACKUP_FROM=value))
    assert result.returncode == ExitCode.CONFIG, result.stderr
    assert f"PGOPS_BACKUP_FROM={value!r} is not valid; valid values: any, primary" in result.stderr
    assert _stored(tmp_path) == [] and not (tmp_path / "lock-bad").exists()
