"""Restore tests that cannot pass without restoring (issue 11, section 1), against real PostgreSQL clusters
and the S3 API: an encrypted backup without the private key fails the restore test and the metrics say
so; a drill host restore-tests another server's target from the store alone, on its own server, and
writes nothing there but the verification record."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from pgops.errors import ExitCode
from tests.fixtures.engine import Engine, base_env
from tests.fixtures.pg import Cluster, make_tricky_database, running_cluster
from tests.integration.test_encryption import age_keygen

DB = "drill me"


@pytest.fixture
def source() -> Iterator[Cluster]:
    """The production server (its own cluster, so the test may stop it)."""
    with running_cluster() as c:
        make_tricky_database(c, DB)
        c.execute(DB, "ANALYZE")
        yield c


@pytest.fixture
def key(tmp_path: Path) -> tuple[Path, str]:
    path = tmp_path / "ops.key"
    return path, age_keygen(path)


def _s3_engine(cluster: Cluster, tmp: Path, s3_settings_env: dict[str, str], target: str, **extra: str) -> Engine:
    tmp.mkdir(exist_ok=True)
    env = {**base_env(cluster, tmp), **s3_settings_env, "PGOPS_TARGET": target, "PGOPS_METRICS_DIR": str(tmp / "m")}
    return Engine("s3", {**env, **extra}, tmp)


def _metrics(engine: Engine) -> dict[tuple[str, str], float]:
    out = {}
    for family in text_string_to_metric_families((Path(engine.env["PGOPS_METRICS_DIR"]) / "pgops.prom").read_text()):
        for sample in family.samples:
            if "database" in sample.labels:  # per-database gauges (pgops_backup_skipped_replica is per target)
                out[(sample.name, sample.labels["database"])] = sample.value
    return out


def _errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "level=error" in line]


def test_restore_test_without_the_key_fails_and_the_metrics_say_not_restore_tested(
    source: Cluster, key: tuple[Path, str], tmp_path: Path, s3_settings_env: dict[str, str]
) -> None:
    """What the example fleet did every month: a database host holding only the public key ran
    `verify --restore-test`, checked sha256, and exited 0 with a green drill."""
    db = _s3_engine(source, tmp_path / "db", s3_settings_env, "db-prod-1", PGOPS_AGE_RECIPIENTS=key[1])
    db.run(["backup", "--databases", DB], check=True)
    before = db.keys()

    refused = db.run(["verify", "--restore-test"])
    assert refused.returncode == ExitCode.CONFIG, refused.stderr
    (line,) = _errors(refused.stderr)
    assert "PGOPS_AGE_IDENTITY_FILE is not set" in line and "encrypted with age" in line
    assert "nothing was restored" in line
    assert db.keys() == before  # no verification record of any mode: nothing was restore-tested
    refused_metrics = _metrics(db)
    assert refused_metrics[("pgops_restore_test_last_attempt_success", DB)] == 0
    assert ("pgops_restore_test_last_success_timestamp_seconds", DB) not in refused_metrics
    assert ("pgops_verify_last_attempt_success", DB) not in refused_metrics

    quick = json.loads(db.run(["verify", "--json"], check=True).stdout)["results"]
    assert {(r["database"], r["mode"], r["ok"]) for r in quick} == {(DB, "sha256", True), (None, "sha256", True)}
    quick_metrics = _metrics(db)
    assert quick_metrics[("pgops_verify_last_attempt_success", DB)] == 1
    # a sha256 check is never a restore test: the failed attempt stands, no drill success appears
    assert quick_metrics[("pgops_restore_test_last_attempt_success", DB)] == 0
    assert ("pgops_restore_test_last_success_timestamp_seconds", DB) not in quick_metrics
    status = json.loads(db.run(["status", "--json"], check=True).stdout)
    assert next(d for d in status["databases"] if d["database"] == DB)["last_restore_test_at"] is None

    drilled = db.run(["verify", "--restore-test", "--database", DB, "--identity-file", str(key[0])], check=True)
    assert "mode=restore" in drilled.stderr
    drilled_metrics = _metrics(db)
    assert drilled_metrics[("pgops_restore_test_last_attempt_success", DB)] == 1
    assert drilled_metrics[("pgops_restore_test_last_success_timestamp_seconds", DB)] > 0


def test_a_failed_restore_test_sets_the_attempt_gauge_to_zero(
    source: Cluster, key: tuple[Path, str], tmp_path: Path, s3_settings_env: dict[str, str]
) -> None:
    """A wrong key is what a drill catches: it fails, names the setting, and the gauge drops to 0."""
    db = _s3_engine(source, tmp_path / "db", s3_settings_env, "db-prod-1", PGOPS_AGE_RECIPIENTS=key[1])
    db.run(["backup", "--databases", DB, "--no-globals"], check=True)
    db.run(["verify", "--restore-test", "--identity-file", str(key[0])], check=True)
    assert _metrics(db)[("pgops_restore_test_last_attempt_success", DB)] == 1
    stranger = tmp_path / "stranger.key"
    age_keygen(stranger)
    wrong = db.run(["verify", "--restore-test", "--identity-file", str(stranger)])
    assert wrong.returncode == ExitCode.INTEGRITY, wrong.stderr
    assert "PGOPS_AGE_IDENTITY_FILE: none of its keys can decrypt" in wrong.stderr
    assert _metrics(db)[("pgops_restore_test_last_attempt_success", DB)] == 0


def test_a_drill_host_restore_tests_another_target_on_its_own_server_and_writes_only_the_record(
    source: Cluster,
    fresh_server: Cluster,
    key: tuple[Path, str],
    tmp_path: Path,
    s3_settings_env: dict[str, str],
) -> None:
    db = _s3_engine(source, tmp_path / "db", s3_settings_env, "db-prod-1", PGOPS_AGE_RECIPIENTS=key[1])
    db.run(["backup"], check=True)
    drill = _s3_engine(
        fresh_server, tmp_path / "drill", s3_settings_env, "pg-drill-1", PGOPS_AGE_IDENTITY_FILE=str(key[0])
    )
    before_keys, drill_dbs = drill.all_keys(), fresh_server.databases()
    source_dbs = source.databases()

    # The production server is down: the drill needs nothing but the store, and restores on its own server.
    source.stop("fast")
    try:
        out = drill.run(["verify", "--restore-test", "--target", "db-prod-1", "--database", DB, "--json"], check=True)
    finally:
        source.start()
    (result,) = json.loads(out.stdout)["results"]
    assert result["ok"] and result["mode"] == "restore" and result["tables_checked"] >= 7 and result["amcheck"]

    new = sorted(set(drill.all_keys()) - set(before_keys))
    assert len(new) == 1 and new[0].startswith("db-prod-1/") and new[0].endswith("-restore.json"), new
    assert set(before_keys) <= set(drill.all_keys())  # nothing removed or replaced
    record = json.loads(drill.storage().get_bytes(new[0]))
    assert record["ok"] and record["verified_by"]
    assert not [k for k in drill.all_keys() if k.startswith("pg-drill-1/")]  # no claim, no probe, nothing
    assert fresh_server.databases() == drill_dbs  # the scratch database is gone
    assert source.databases() == source_dbs
    metrics = _metrics(drill)
    assert metrics[("pgops_restore_test_last_attempt_success", DB)] == 1

    # The target still belongs to its cluster: its next backup is accepted, and it sees the drill.
    db.run(["backup", "--databases", DB], check=True)
    status = json.loads(db.run(["status", "--json"], check=True).stdout)
    assert next(d for d in status["databases"] if d["database"] == DB)["last_restore_test_at"] is not None
    # and the drill host's own target is still free for its own cluster
    drill.run(["backup", "--databases", "postgres", "--no-globals"], check=True)
