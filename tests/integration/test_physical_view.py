"""The physical half of the one view, against a real PostgreSQL archiving through a real pgBackRest 2.45.

Each test gets its own cluster and stanza (tests/fixtures/pgbackrest.py): archive_mode on, archive_timeout
1 s, a posix repository. Faults are real: the repository made unwritable, a conflicting segment planted in
the archive, archive-push-queue-max overrun. pgops runs as a separate process, as cron runs it.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from pgops.errors import ExitCode
from tests.fixtures.engine import run_pgops
from tests.fixtures.pgbackrest import Pgbackrest, archiving_cluster, chown_postgres


def _env(br: Pgbackrest, store: Path | None = None) -> dict[str, str]:
    home = br.root
    envfile = home / "pgops.env"
    envfile.touch()
    if store is None:
        store = home / "pgops-store"
        store.mkdir(exist_ok=True)
    return {
        **br.cluster.env(),
        **br.env(),
        "PGOPS_TARGET": "testhost",
        "PGOPS_LOCK_DIR": str(home / "pgops-lock"),
        "PGOPS_ENV_FILE": str(envfile),
        "PGOPS_COMPRESSION_THREADS": "1",
        "PGOPS_STORAGE_URL": store.as_uri(),
        "PGOPS_METRICS_DIR": str(home / "metrics"),
    }


def _status(env: dict[str, str], **extra: str) -> tuple[int, dict[str, Any], str]:
    """(exit code, status --json, the human text of a second run)."""
    full = {**env, **extra}
    as_json = run_pgops(["status", "--json"], full)
    human = run_pgops(["status"], full)
    assert as_json.returncode == human.returncode, human.stderr
    assert "Traceback" not in as_json.stderr + human.stderr
    return as_json.returncode, json.loads(as_json.stdout), human.stdout


def _metrics(env: dict[str, str]) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = (Path(env["PGOPS_METRICS_DIR"]) / "pgops.prom").read_text()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = tuple(sorted((k, v) for k, v in s.labels.items() if k not in ("target", "stanza")))
            out[(s.name, labels)] = s.value
    return out


def _wait(what: str, ok: Callable[[], bool], timeout: float = 60) -> None:
    end = time.monotonic() + timeout
    while not ok():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.3)


def _archiver(br: Pgbackrest) -> dict[str, Any]:
    rows = br.cluster.execute(
        "postgres",
        "SELECT archived_count, last_archived_wal, failed_count, last_failed_wal, "
        "coalesce(last_failed_time > last_archived_time, last_failed_time IS NOT NULL) FROM pg_stat_archiver",
    )
    keys = ("archived", "last_archived", "failed", "last_failed", "failing")
    return dict(zip(keys, rows[0], strict=True))


def _archived(br: Pgbackrest, segment: str) -> bool:
    a = _archiver(br)
    return a["last_archived"] is not None and a["last_archived"][:24] >= segment and not a["failing"]


def _switch_archived(br: Pgbackrest) -> str:
    """Close the current WAL segment and wait until the archiver has pushed it (and is not failing)."""
    segment = br.switch_wal()
    _wait(f"{segment} archived", lambda: _archived(br, segment), timeout=120)
    return segment


def _repo_segments(br: Pgbackrest) -> set[str]:
    return {p.name[:24] for p in br.archive_dir.rglob("*") if p.is_file() and len(p.name) > 40 and "-" in p.name}


def _tree(root: Path, *, exclude: Path | None = None) -> dict[str, str]:
    """Every file under root with its sha256 (exclude: a subtree left out)."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and (exclude is None or exclude not in p.parents)
    }


@pytest.fixture
def logical_backup(pgbackrest: Pgbackrest) -> dict[str, str]:
    """pgops env for the stanza's cluster, with one logical backup taken (so the logical half is green)."""
    env = _env(pgbackrest)
    run_pgops(["backup", "--databases", "postgres"], env, check=True)
    return env


def test_after_a_full_backup_status_list_and_metrics_show_it(
    pgbackrest: Pgbackrest, logical_backup: dict[str, str]
) -> None:
    env = logical_backup
    code, doc, _ = _status(env)
    assert code == ExitCode.STALE
    assert "no full physical backup in stanza main" in doc["physical"]["problems"]

    full = pgbackrest.backup("full")
    segment = _switch_archived(pgbackrest)
    code, doc, human = _status(env)
    phys = doc["physical"]
    assert code == ExitCode.OK, phys["problems"]
    assert phys["newest"]["full"]["label"] == full["label"]
    assert phys["newest"]["full"]["wal_stop"] == full["archive"]["stop"]
    assert phys["archiver"]["failing"] is False and phys["archiver"]["last_archived_wal"] >= segment
    assert phys["archiver"]["rpo_bytes"] is not None and phys["archiver"]["rpo_seconds"] is not None
    assert f"newest full  {full['label']}" in human and "WAL archive  ok" in human and "current RPO" in human
    # the logical rows are still there, unchanged
    assert human.startswith("DATABASE  ")

    listed = run_pgops(["list"], env, check=True).stdout
    logical_rows = [line for line in listed.splitlines() if line.startswith(("ID ", "20"))]
    assert len(logical_rows) == 3  # the header, postgres and @globals
    physical_row = next(line for line in listed.splitlines() if full["label"] in line)
    assert physical_row.startswith("PHYSICAL  full") and full["archive"]["start"] in physical_row
    doc = json.loads(run_pgops(["list", "--json"], env, check=True).stdout)
    assert [b["label"] for b in doc["physical"]["backups"]] == [full["label"]]
    assert {b["database"] for b in doc["backups"]} == {"postgres", None}

    m = _metrics(env)
    assert m[("pgops_physical_backup_newest_timestamp_seconds", (("type", "full"),))] == full["timestamp"]["stop"]
    assert m[("pgops_physical_backup_newest_size_bytes", (("type", "full"),))] == full["info"]["repository"]["delta"]
    assert ("pgops_physical_backup_newest_timestamp_seconds", (("type", "diff"),)) not in m
    assert m[("pgops_wal_archive_failing", ())] == 0
    assert m[("pgops_physical_ok", ())] == 1
    assert m[("pgops_wal_archived_count", ())] >= 1
    assert m[("pgops_rpo_seconds", ())] < 60
    assert m[("pgops_server_in_recovery", ())] == 0
    assert m[("pgops_wal_dropped", ())] == 0


def test_broken_archiving_is_stale_and_every_segment_arrives_after_repair(
    pgbackrest: Pgbackrest, logical_backup: dict[str, str]
) -> None:
    env = logical_backup
    pgbackrest.backup("full")
    first = _switch_archived(pgbackrest)
    before = _archiver(pgbackrest)

    with pgbackrest.archive_unwritable():
        lost = [pgbackrest.switch_wal() for _ in range(3)]
        _wait("a failed archive_command", lambda: _archiver(pgbackrest)["failed"] > before["failed"])
        code, doc, human = _status(env)
        phys = doc["physical"]
        assert code == ExitCode.STALE
        assert phys["archiver"]["failing"] is True
        assert phys["archiver"]["rpo_bytes"] >= 3 * 16 * 1024 * 1024
        assert any(p.startswith("WAL archiving is failing") for p in phys["problems"]), phys["problems"]
        assert "STALE: WAL archiving is failing" in human and "WAL archive  FAILING" in human
        m = _metrics(env)
        assert m[("pgops_wal_archive_failing", ())] == 1
        assert m[("pgops_wal_archive_failed_count", ())] > before["failed"]
        assert m[("pgops_rpo_bytes", ())] >= 3 * 16 * 1024 * 1024
        assert m[("pgops_physical_ok", ())] == 0
        assert not set(lost) & _repo_segments(pgbackrest)

    last = pgbackrest.switch_wal()  # wakes the archiver, which retries from the oldest segment
    _wait(f"{last} archived after the repair", lambda: _archived(pgbackrest, last), timeout=120)
    assert set(lost) | {first, last} <= _repo_segments(pgbackrest)
    code, doc, _ = _status(env)
    assert code == ExitCode.OK, doc["physical"]["problems"]
    assert doc["physical"]["archiver"]["failing"] is False
    assert _metrics(env)[("pgops_wal_archive_failing", ())] == 0


def test_same_segment_twice_succeeds_a_different_one_under_the_same_name_fails(
    pgbackrest: Pgbackrest, logical_backup: dict[str, str]
) -> None:
    env = logical_backup
    pgbackrest.backup("full")
    done = _switch_archived(pgbackrest)
    again = pgbackrest.run("--log-level-console=info", "archive-push", str(pgbackrest.cluster.data / "pg_wal" / done))
    assert f"WAL file '{done}' already exists in the repo1 archive with the same checksum" in again.stderr

    with pgbackrest.cluster.connect() as c:
        row = c.execute("SELECT pg_walfile_name(pg_current_wal_lsn() + 1)").fetchone()  # + 1: past a boundary
    assert row is not None
    upcoming: str = row[0]
    bogus = b"not this server's WAL" * 1000
    planted = pgbackrest.archive_dir / next(p.name for p in pgbackrest.archive_dir.iterdir() if p.is_dir())
    planted = planted / upcoming[:16] / f"{upcoming}-{hashlib.sha1(bogus).hexdigest()}.zst"  # noqa: S324 - pgBackRest's naming
    planted.parent.mkdir(exist_ok=True)
    chown_postgres(planted.parent)
    planted.write_bytes(bogus)
    chown_postgres(planted)

    assert pgbackrest.switch_wal() == upcoming
    _wait("archive_command to fail", lambda: _archiver(pgbackrest)["failing"])
    assert _archiver(pgbackrest)["last_failed"] == upcoming
    server_log = (pgbackrest.cluster.root / "log").read_text()
    assert f"WAL file '{upcoming}' already exists in the repo1 archive with a different checksum" in server_log
    code, doc, _ = _status(env)
    assert code == ExitCode.STALE
    assert any(upcoming in p and "failing" in p for p in doc["physical"]["problems"])
    assert _metrics(env)[("pgops_wal_archive_failing", ())] == 1
    assert planted.read_bytes() == bogus  # pgBackRest never overwrote it


def test_stale_thresholds_and_unreadable_stanza(pgbackrest: Pgbackrest, logical_backup: dict[str, str]) -> None:
    env = logical_backup
    full = pgbackrest.backup("full")
    diff = pgbackrest.backup("diff")
    _switch_archived(pgbackrest)
    code, doc, _ = _status(env)
    assert code == ExitCode.OK, doc["physical"]["problems"]
    assert doc["physical"]["newest"]["diff"]["prior"] == full["label"]
    time.sleep(1.1)

    code, doc, human = _status(env, PGOPS_PHYSICAL_MAX_AGE="1s")
    assert code == ExitCode.STALE
    [problem] = doc["physical"]["problems"]
    assert problem.startswith(f"newest physical backup {diff['label']} is ")
    assert problem.endswith("s old, older than PGOPS_PHYSICAL_MAX_AGE=1s")
    code, doc, _ = _status(env, PGOPS_PHYSICAL_FULL_MAX_AGE="1s")
    assert code == ExitCode.STALE
    assert [p.split(" is ")[0] for p in doc["physical"]["problems"]] == [f"newest full physical backup {full['label']}"]

    # 0 turns the RPO check off; 1 s is passed after a while with WAL waiting to be archived
    pgbackrest.set_archive_command("/bin/false")
    pgbackrest.switch_wal()
    _wait("archive_command to fail", lambda: _archiver(pgbackrest)["failing"])
    time.sleep(1.5)
    code, doc, _ = _status(env, PGOPS_RPO_MAX_SECONDS="1")
    assert any("more than PGOPS_RPO_MAX_SECONDS=1" in p for p in doc["physical"]["problems"])
    assert code == ExitCode.STALE

    code, doc, human = _status(env, PGOPS_PGBACKREST_STANZA="nosuchstanza")
    assert code == ExitCode.STALE
    assert doc["physical"]["error"].startswith("pgbackrest info: stanza nosuchstanza has status 1")
    assert "pgBackRest cannot be read" in human
    missing = str(pgbackrest.root / "missing.conf")
    code, doc, _ = _status(env, PGOPS_PGBACKREST_CONFIG=missing)
    assert code == ExitCode.STALE
    assert f"PGOPS_PGBACKREST_CONFIG={missing}" in doc["physical"]["error"]
    listed = run_pgops(["list"], {**env, "PGOPS_PGBACKREST_CONFIG": missing}, check=True).stdout
    assert "physical backups (pgBackRest stanza main): cannot be read: pgbackrest info exited 55" in listed
    bad = run_pgops(["status"], {**env, "PGOPS_PGBACKREST_STANZA": "-bad/name"})
    assert bad.returncode == ExitCode.CONFIG and "PGOPS_PGBACKREST_STANZA='-bad/name'" in bad.stderr


def test_without_a_stanza_status_and_list_are_as_before(pgbackrest: Pgbackrest, logical_backup: dict[str, str]) -> None:
    env = {k: v for k, v in logical_backup.items() if not k.startswith("PGOPS_PGBACKREST")}
    pgbackrest.backup("full")
    code, doc, human = _status(env)
    assert code == ExitCode.OK and "physical" not in doc and "physical" not in human
    listed = run_pgops(["list", "--json"], env, check=True).stdout
    assert "physical" not in json.loads(listed)
    assert not [k for k in _metrics(env) if "physical" in k[0] or "rpo" in k[0]]


@pytest.fixture
def shared_store() -> Iterator[Pgbackrest]:
    """pgBackRest's repository at <store>/pgbackrest, beside pgops' targets under <store>."""
    with archiving_cluster(repo_subdir="pgbackrest") as br:
        yield br


def test_pgops_and_pgbackrest_share_one_store_and_never_touch_each_other(shared_store: Pgbackrest) -> None:
    br = shared_store
    store = br.repo_path.parent
    env = {
        **_env(br, store),
        "PGOPS_KEEP_LAST": "1",
        "PGOPS_KEEP_DAILY": "0",
        "PGOPS_KEEP_WEEKLY": "0",
        "PGOPS_KEEP_MONTHLY": "0",
        "PGOPS_MIN_KEEP": "1",
    }
    for _ in range(2):
        run_pgops(["backup", "--databases", "postgres"], env, check=True)
        first_full = br.backup("full")
    second_full = br.backup("full")
    _switch_archived(br)

    repo_before = _tree(br.repo_path)
    assert any(k.startswith("archive/main/") for k in repo_before) and any(
        k.startswith("backup/main/") for k in repo_before
    )
    doc = json.loads(run_pgops(["retention", "--json"], env, check=True).stdout)
    assert doc["counts"]["deleted"] >= 2, doc["counts"]  # a real run that deleted pgops' older backups
    run_pgops(["verify"], env, check=True)
    code, status, _ = _status(env)
    assert code == ExitCode.OK, status["physical"]["problems"]
    listed = json.loads(run_pgops(["list", "--all-targets", "--json"], env, check=True).stdout)
    assert listed["ignored_keys"] == len(repo_before)  # every pgBackRest file seen, and left alone
    assert _tree(br.repo_path) == repo_before

    pgops_before = _tree(store, exclude=br.repo_path)
    assert any(k.startswith("testhost/") for k in pgops_before)
    br.run("--repo1-retention-full=1", "expire")
    labels = [b["label"] for b in br.info()["backup"]]
    assert labels == [second_full["label"]] and first_full["label"] not in labels
    assert _tree(store, exclude=br.repo_path) == pgops_before
    code, status, _ = _status(env)
    assert code == ExitCode.OK, status["physical"]["problems"]


def test_wal_dropped_past_archive_push_queue_max_is_reported(
    pgbackrest: Pgbackrest, logical_backup: dict[str, str]
) -> None:
    env = logical_backup
    pgbackrest.backup("full")
    # Async, as roles/pgbackrest sets it up: the async process logs the drop to main-archive-push-async.log.
    # (Sync archive-push of 2.45 writes it only to its stderr, PostgreSQL's log: verified, and documented.)
    pgbackrest.options.update({"archive-async": "y", "archive-push-queue-max": "16MB"})
    pgbackrest.write_config()
    with pgbackrest.archive_unwritable():
        switched = [pgbackrest.switch_wal() for _ in range(4)]
        push_log = pgbackrest.log_path / "main-archive-push-async.log"
        _wait("pgBackRest to drop WAL", lambda: push_log.exists() and "dropped WAL file" in push_log.read_text())
        # PostgreSQL believes it archived what pgBackRest dropped: only pgops' check can tell
        _wait(
            "a dropped segment counted as archived",
            lambda: (_archiver(pgbackrest)["last_archived"] or "") >= switched[0],
        )
    _switch_archived(pgbackrest)
    dropped = set(switched) - _repo_segments(pgbackrest)
    assert dropped, "pgBackRest dropped nothing"
    code, doc, human = _status(env)
    assert code == ExitCode.STALE
    assert {d["segment"] for d in doc["physical"]["wal_dropped"]} == dropped
    assert any("dropped" in p and "take a full backup now" in p for p in doc["physical"]["problems"])
    assert "STALE: pgBackRest dropped" in human
    assert _metrics(env)[("pgops_wal_dropped", ())] == len(dropped)

    del pgbackrest.options["archive-push-queue-max"]  # archiving stays async
    pgbackrest.write_config()
    pgbackrest.backup("full")  # a full backup after the gap makes recovery whole again
    _switch_archived(pgbackrest)
    code, doc, _ = _status(env)
    assert code == ExitCode.OK, doc["physical"]["problems"]
    assert doc["physical"]["wal_dropped"] == []
    assert _metrics(env)[("pgops_wal_dropped", ())] == 0


def test_a_replica_skips_the_archive_checks_but_counts_repository_backups(
    pgbackrest: Pgbackrest, logical_backup: dict[str, str]
) -> None:
    from tests.fixtures.pg import Cluster, free_port

    full = pgbackrest.backup("full")
    replica = Cluster(pgbackrest.root / "replica", free_port())
    replica.root.mkdir()
    chown_postgres(replica.root)
    subprocess.run(
        [
            "runuser", "-u", "postgres", "--",
            str(replica.bindir / "pg_basebackup"), "-D", str(replica.data), "-R", "-X", "stream",
            "-d", pgbackrest.cluster.dsn("postgres"),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    with (replica.data / "postgresql.auto.conf").open("a") as f:
        f.write(f"port = {replica.port}\nunix_socket_directories = '{replica.sockdir}'\n")
    replica.start()
    try:
        env = {**logical_backup, **replica.env()}
        code, doc, human = _status(env)
        assert code == ExitCode.OK, doc["physical"]["problems"]
        assert doc["physical"]["archiver"]["in_recovery"] is True
        assert doc["physical"]["newest"]["full"]["label"] == full["label"]
        assert "server in recovery (a replica): WAL archiving and RPO checks do not apply here" in human
        m = _metrics(env)
        assert m[("pgops_server_in_recovery", ())] == 1 and ("pgops_rpo_seconds", ()) not in m

        code, doc, _ = _status(env, PGOPS_PHYSICAL_MAX_AGE="1s")
        time.sleep(1.1)
        code, doc, _ = _status(env, PGOPS_PHYSICAL_MAX_AGE="1s")
        assert code == ExitCode.STALE and "PGOPS_PHYSICAL_MAX_AGE" in doc["physical"]["problems"][0]
    finally:
        replica.stop("immediate")
