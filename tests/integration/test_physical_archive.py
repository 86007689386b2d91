"""WAL archiving faults caused for real, as the one view reports them: the repository made unwritable, a
conflicting segment planted in the archive, WAL dropped past archive-push-queue-max; and pgops and
pgBackRest sharing one store without touching each other's files.

Real PostgreSQL, real pgBackRest 2.45 (tests/fixtures/pgbackrest.py), pgops as a separate process.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from pgops.errors import ExitCode
from tests.fixtures.engine import run_pgops
from tests.fixtures.pgbackrest import (
    Pgbackrest,
    archiving_cluster,
    chown_postgres,
    file_tree,
    pgops_env,
    pgops_status,
    read_metrics,
    segments_between,
    wait_for,
)


def test_broken_archiving_is_stale_and_every_segment_arrives_after_repair(
    pgbackrest: Pgbackrest, logical_backup: dict[str, str]
) -> None:
    env = logical_backup
    pgbackrest.backup("full")
    first = pgbackrest.switch_archived()
    before = pgbackrest.archiver()

    with pgbackrest.archive_unwritable():
        lost = [pgbackrest.switch_wal() for _ in range(3)]
        wait_for("a failed archive_command", lambda: pgbackrest.archiver()["failed"] > before["failed"])
        code, doc, human = pgops_status(env)
        phys = doc["physical"]
        assert code == ExitCode.STALE
        assert phys["archiver"]["failing"] is True
        assert phys["archiver"]["rpo_bytes"] >= 3 * 16 * 1024 * 1024
        assert any(p.startswith("WAL archiving is failing") for p in phys["problems"]), phys["problems"]
        assert "STALE: WAL archiving is failing" in human and "WAL archive  FAILING" in human
        m = read_metrics(env)
        assert m[("pgops_wal_archive_failing", ())] == 1
        assert m[("pgops_wal_archive_failed_count", ())] > before["failed"]
        assert m[("pgops_rpo_bytes", ())] >= 3 * 16 * 1024 * 1024
        assert m[("pgops_physical_ok", ())] == 0
        assert not set(lost) & pgbackrest.repo_segments()

    last = pgbackrest.switch_wal()  # wakes the archiver, which retries from the oldest segment
    wait_for(f"{last} archived after the repair", lambda: pgbackrest.archived(last), timeout=120)
    assert set(lost) | {first, last} <= pgbackrest.repo_segments()
    code, doc, _ = pgops_status(env)
    assert code == ExitCode.OK, doc["physical"]["problems"]
    assert doc["physical"]["archiver"]["failing"] is False
    assert read_metrics(env)[("pgops_wal_archive_failing", ())] == 0


def test_same_segment_twice_succeeds_a_different_one_under_the_same_name_fails(
    pgbackrest: Pgbackrest, logical_backup: dict[str, str]
) -> None:
    env = logical_backup
    pgbackrest.backup("full")
    done = pgbackrest.switch_archived()
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
    wait_for("archive_command to fail", lambda: pgbackrest.archiver()["failing"])
    assert pgbackrest.archiver()["last_failed"] == upcoming
    server_log = (pgbackrest.cluster.root / "log").read_text()
    assert f"WAL file '{upcoming}' already exists in the repo1 archive with a different checksum" in server_log
    code, doc, _ = pgops_status(env)
    assert code == ExitCode.STALE
    assert any(upcoming in p and "failing" in p for p in doc["physical"]["problems"])
    assert read_metrics(env)[("pgops_wal_archive_failing", ())] == 1
    assert planted.read_bytes() == bogus  # pgBackRest never overwrote it


@pytest.fixture
def shared_store() -> Iterator[Pgbackrest]:
    """pgBackRest's repository at <store>/pgbackrest, beside pgops' targets under <store>."""
    with archiving_cluster(repo_subdir="pgbackrest") as br:
        yield br


def _split(store: Path, repo: Path) -> tuple[dict[str, str], dict[str, str]]:
    """(pgBackRest's files: its archive/ and backup/ trees, every other file in the store: pgops')."""
    theirs = {f"{d}/{k}": v for d in ("archive", "backup") for k, v in file_tree(repo / d).items()}
    prefix = str(repo.relative_to(store)) + "/"
    ours = {k: v for k, v in file_tree(store).items() if k.removeprefix(prefix) not in theirs}
    return theirs, ours


# "pgbackrest" as the target puts pgops' keys right inside pgBackRest's repository prefix: still apart
@pytest.mark.parametrize("target", ["testhost", "pgbackrest"])
def test_pgops_and_pgbackrest_share_one_store_and_never_touch_each_other(shared_store: Pgbackrest, target: str) -> None:
    br = shared_store
    store = br.repo_path.parent
    env = {
        **pgops_env(br, store),
        "PGOPS_TARGET": target,
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
    br.switch_archived()

    theirs, ours = _split(store, br.repo_path)
    assert any(k.startswith("archive/main/") for k in theirs) and any(k.startswith("backup/main/") for k in theirs)
    assert all(k.startswith(f"{target}/") for k in ours) and len(ours) > 4
    doc = json.loads(run_pgops(["retention", "--json"], env, check=True).stdout)
    assert doc["counts"]["deleted"] >= 2, doc["counts"]  # a real run that deleted pgops' older backups
    assert set(doc["deleted_keys"]) <= set(ours)
    run_pgops(["verify"], env, check=True)
    code, status, _ = pgops_status(env)
    assert code == ExitCode.OK, status["physical"]["problems"]
    listed = json.loads(run_pgops(["list", "--all-targets", "--json"], env, check=True).stdout)
    assert listed["ignored_keys"] == len(theirs)  # every pgBackRest file seen, and left alone
    assert _split(store, br.repo_path)[0] == theirs
    br.run("check")  # pgBackRest is content with its repository

    ours = _split(store, br.repo_path)[1]
    br.run("--repo1-retention-full=1", "expire")
    labels = [b["label"] for b in br.info()["backup"]]
    assert labels == [second_full["label"]] and first_full["label"] not in labels
    assert _split(store, br.repo_path)[1] == ours
    code, status, _ = pgops_status(env)
    assert code == ExitCode.OK, status["physical"]["problems"]


def test_wal_dropped_past_archive_push_queue_max_is_reported(
    pgbackrest: Pgbackrest, logical_backup: dict[str, str]
) -> None:
    env = logical_backup
    after = pgbackrest.backup("full")["archive"]["stop"]
    # Async, as roles/pgbackrest sets it up: the async process logs the drop to main-archive-push-async.log.
    # (Sync archive-push of 2.45 writes it only to its stderr, PostgreSQL's log: verified, and documented.)
    pgbackrest.options.update({"archive-async": "y", "archive-push-queue-max": "16MB"})
    pgbackrest.write_config()
    with pgbackrest.archive_unwritable():
        switched = [pgbackrest.switch_wal() for _ in range(4)]
        push_log = pgbackrest.log_path / "main-archive-push-async.log"
        wait_for("pgBackRest to drop WAL", lambda: push_log.exists() and "dropped WAL file" in push_log.read_text())
        # PostgreSQL believes it archived what pgBackRest dropped: only pgops' check can tell
        wait_for(
            "a dropped segment counted as archived",
            lambda: (pgbackrest.archiver()["last_archived"] or "") >= switched[0],
        )
    # Until a segment reaches the repository, pgBackRest may still drop what arrives (the queue drains from its
    # limit): switch until one is pushed, then every segment before it is either in the repository or dropped.
    pushed = pgbackrest.switch_archived()
    for _ in range(10):
        if pushed in pgbackrest.repo_segments():
            break
        pushed = pgbackrest.switch_archived()
    assert pushed in pgbackrest.repo_segments(), f"pgBackRest still drops WAL ({pushed}) with the archive writable"
    # Every segment closed since the backup, including any that archive_timeout closed on its own
    dropped = set(segments_between(after, pushed)) - pgbackrest.repo_segments()
    assert dropped, "pgBackRest dropped nothing"
    code, doc, human = pgops_status(env)
    assert code == ExitCode.STALE
    assert {d["segment"] for d in doc["physical"]["wal_dropped"]} == dropped
    assert any("dropped" in p and "take a full backup now" in p for p in doc["physical"]["problems"])
    assert "STALE: pgBackRest dropped" in human
    assert read_metrics(env)[("pgops_wal_dropped", ())] == len(dropped)

    del pgbackrest.options["archive-push-queue-max"]  # archiving stays async
    pgbackrest.write_config()
    pgbackrest.backup("full")  # a full backup after the gap makes recovery whole again
    pgbackrest.switch_archived()
    code, doc, _ = pgops_status(env)
    assert code == ExitCode.OK, doc["physical"]["problems"]
    assert doc["physical"]["wal_dropped"] == []
    assert read_metrics(env)[("pgops_wal_dropped", ())] == 0
