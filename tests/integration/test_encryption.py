"""Client-side age encryption: round trips, interoperability with the age CLI, and key errors."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import pytest

from pgops.errors import ExitCode
from tests.fixtures.engine import Engine, base_env
from tests.fixtures.pg import Cluster, make_tricky_database


def age_keygen(path: Path) -> str:
    """A key pair made by the standard age-keygen; returns the public key."""
    subprocess.run(["age-keygen", "-o", str(path)], check=True, capture_output=True)
    return next(line.split(": ", 1)[1] for line in path.read_text().splitlines() if "public key" in line)


@pytest.fixture(scope="module")
def enc_db(pg: Cluster) -> str:
    name = "enc source"
    if name not in pg.databases():
        make_tricky_database(pg, name)
    return name


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, Path | str]:
    ops, dr, stranger = tmp_path / "ops.key", tmp_path / "dr.key", tmp_path / "stranger.key"
    return {
        "ops": ops,
        "ops_pub": age_keygen(ops),
        "dr": dr,
        "dr_pub": age_keygen(dr),
        "stranger": stranger,
        "stranger_pub": age_keygen(stranger),
    }


def _backup_encrypted(engine: Engine, db: str, keys: dict[str, Path | str]) -> dict[str, object]:
    recipients_file = engine.tmp / "recipients.txt"
    recipients_file.write_text(f"# the DR team's key\n{keys['dr_pub']}\n")
    env = {"PGOPS_AGE_RECIPIENTS": str(keys["ops_pub"]), "PGOPS_AGE_RECIPIENTS_FILE": str(recipients_file)}
    engine.run(["backup", "--databases", db], check=True, extra=env)
    listed = json.loads(engine.run(["list", "--json"], check=True).stdout)["backups"]
    return next(b for b in listed if b["database"] == db)


def test_encrypted_round_trip_and_manifest(
    engine: Engine, pg: Cluster, enc_db: str, keys: dict[str, Path | str]
) -> None:
    m = _backup_encrypted(engine, enc_db, keys)
    assert m["encryption"] == {"algorithm": "age", "recipients": [keys["ops_pub"], keys["dr_pub"]]}
    obj = m["objects"][0]  # type: ignore[index]
    assert obj["key"].endswith(".pgc.zst.age")
    st = engine.storage()
    stored = st.get_bytes(obj["key"])
    st.close()
    assert stored.startswith(b"age-encryption.org/v1\n")
    assert hashlib.sha256(stored).hexdigest() == obj["sha256"]  # checkable without any key
    assert b"PGDMP" not in stored and b"pgbench_accounts" not in stored
    for secret in (Path(keys["ops"]).read_text(), Path(keys["dr"]).read_text()):
        assert secret.split("AGE-SECRET-KEY-")[1][:20] not in json.dumps(m)

    target = "enc restored"
    try:
        engine.run(
            [
                "restore",
                "--database",
                enc_db,
                "--target-db",
                target,
                "--with-globals",
                "--identity-file",
                str(keys["dr"]),
            ],
            check=True,
        )
        assert pg.dump(target) == pg.dump(enc_db)
    finally:
        pg.drop_database(target)


def test_age_cli_decrypts_our_output(engine: Engine, pg: Cluster, enc_db: str, keys: dict[str, Path | str]) -> None:
    m = _backup_encrypted(engine, enc_db, keys)
    st = engine.storage()
    stored = st.get_bytes(m["objects"][0]["key"])  # type: ignore[index]
    st.close()
    encrypted = engine.tmp / "dump.pgc.zst.age"
    encrypted.write_bytes(stored)
    archive = engine.tmp / "dump.pgc"
    with archive.open("wb") as out:
        age = subprocess.Popen(["age", "-d", "-i", str(keys["ops"]), str(encrypted)], stdout=subprocess.PIPE)
        unzstd = subprocess.run(["zstd", "-d", "-q", "-c"], stdin=age.stdout, stdout=out, check=False)
        assert age.stdout is not None
        age.stdout.close()
        assert age.wait() == 0 and unzstd.returncode == 0
    target = "enc_by_age_cli"
    pg.create_database(target, OWNER="pgops_app_owner")
    try:
        subprocess.run(
            [str(pg.bindir / "pg_restore"), "--exit-on-error", "-d", pg.dsn(target), str(archive)],
            check=True,
            capture_output=True,
        )
        assert pg.dump(target) == pg.dump(enc_db)
    finally:
        pg.drop_database(target)


def test_missing_or_wrong_identity_changes_nothing(
    engine: Engine, pg: Cluster, enc_db: str, keys: dict[str, Path | str]
) -> None:
    _backup_encrypted(engine, enc_db, keys)
    before = pg.databases()
    missing = engine.run(["restore", "--database", enc_db, "--target-db", "enc_nokey"])
    assert missing.returncode == ExitCode.CONFIG
    assert "PGOPS_AGE_IDENTITY_FILE" in missing.stderr
    wrong = engine.run(
        ["restore", "--database", enc_db, "--target-db", "enc_wrongkey", "--identity-file", str(keys["stranger"])]
    )
    assert wrong.returncode == ExitCode.CONFIG
    assert "none of its keys can decrypt" in wrong.stderr
    assert pg.databases() == before
    assert "event=restore_start" not in missing.stderr + wrong.stderr  # stopped before creating anything
    assert "AGE-SECRET-KEY" not in missing.stderr + wrong.stderr


def test_corrupt_encrypted_object_is_refused(
    engine: Engine, pg: Cluster, enc_db: str, keys: dict[str, Path | str]
) -> None:
    m = _backup_encrypted(engine, enc_db, keys)
    st = engine.storage()
    key = m["objects"][0]["key"]  # type: ignore[index]
    data = bytearray(st.get_bytes(key))
    data[len(data) // 2] ^= 0x01
    st.delete(key)
    st.put_bytes(key, bytes(data))
    st.close()
    before = pg.databases()
    result = engine.run(
        ["restore", "--database", enc_db, "--target-db", "enc_corrupt", "--identity-file", str(keys["ops"])]
    )
    assert result.returncode == ExitCode.INTEGRITY, result.stderr
    assert pg.databases() == before


def test_bad_recipient_fails_before_any_work(engine: Engine) -> None:
    result = engine.run(["backup"], extra={"PGOPS_AGE_RECIPIENTS": "age1notakey"})
    assert result.returncode == ExitCode.CONFIG
    assert "PGOPS_AGE_RECIPIENTS" in result.stderr and "age1" in result.stderr
    assert engine.keys() == []


def test_s3_server_side_encryption_is_requested_and_recorded(
    pg: Cluster, enc_db: str, tmp_path: Path, s3_settings_env: dict[str, str]
) -> None:
    engine = Engine("s3", {**base_env(pg, tmp_path), **s3_settings_env}, tmp_path)
    kms_key = "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"
    env = {"PGOPS_S3_SSE": "aws:kms", "PGOPS_S3_SSE_KMS_KEY_ID": kms_key}
    engine.run(["backup", "--databases", enc_db, "--no-globals"], check=True, extra=env)
    m = json.loads(engine.run(["list", "--json"], check=True).stdout)["backups"][0]
    assert m["server_side_encryption"] == {"mode": "aws:kms", "kms_key_id": kms_key}
    from tests.fixtures.objstore import raw_s3_client

    client = raw_s3_client(engine.env["PGOPS_S3_ENDPOINT_URL"])
    bucket = engine.env["PGOPS_STORAGE_URL"].removeprefix("s3://").split("/", 1)[0]
    prefix = engine.env["PGOPS_STORAGE_URL"].removeprefix("s3://").split("/", 1)[1]
    head = client.head_object(Bucket=bucket, Key=f"{prefix}/{m['objects'][0]['key']}")
    assert head["ServerSideEncryption"] == "aws:kms" and head["SSEKMSKeyId"] == kms_key
