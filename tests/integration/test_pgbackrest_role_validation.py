"""roles/pgbackrest refuses bad input before anything changes (issue 12), by running its real validate tasks
with ansible-playbook on this machine (a local connection). Each bad case fails naming the variable; a good
one passes every input check and stops only at the host checks (no pgops engine, no server here). No secret
value may appear anywhere in the output."""

from __future__ import annotations

from typing import Any

import pytest

from tests.fixtures.role_validation import validation_outcomes

# Distinctive parts of the secret values: none of them may appear in ansible's output.
SECRET_TAILS = ["zq-cipher-tail-1", "zq-s3-tail-2", "zq-gcs-tail-3"]
HOST_CHECKS = "roles/pgbackrest needs roles/postgresql"

GOOD: dict[str, Any] = {
    "pgbackrest_stanza": "db-prod-1",
    "pgbackrest_repo_type": "s3",
    "pgbackrest_repo_bucket": "acme-db-backups",
    "pgbackrest_repo_region": "eu-central-1",
    "pgbackrest_repo_s3_key": "AKIAREALKEYID12345",
    "pgbackrest_repo_s3_key_secret": "real-secret-zq-s3-tail-2",
    "pgbackrest_repo_cipher_pass": "a-long-random-passphrase-zq-cipher-tail-1",
    "postgresql_backup_storage_url": "s3://acme-db-backups/pgops",
    "postgresql_backup_settings": {"PGBACKREST_STANZA": "db-prod-1"},
}

# name -> (variables over GOOD, expected fragments of the failure messages)
CASES: dict[str, tuple[dict[str, Any], list[str]]] = {
    "a good S3 repository beside pgops": ({}, [HOST_CHECKS]),
    "a good GCS repository": (
        {
            "pgbackrest_repo_type": "gcs",
            "pgbackrest_repo_gcs_key": {"type": "service_account", "private_key": "zq-gcs-tail-3"},
        },
        [HOST_CHECKS],
    ),
    "a stanza name pgBackRest refuses": ({"pgbackrest_stanza": "db prod"}, ["pgbackrest_stanza"]),
    "an unknown repository type": ({"pgbackrest_repo_type": "azure"}, ["pgbackrest_repo_type", "s3, gcs or posix"]),
    "S3 without a bucket": ({"pgbackrest_repo_bucket": ""}, ["pgbackrest_repo_bucket"]),
    "a bad URI style": ({"pgbackrest_repo_s3_uri_style": "virtual"}, ['pgbackrest_repo_s3_uri_style="virtual"']),
    "GCS without a key": ({"pgbackrest_repo_type": "gcs"}, ["pgbackrest_repo_gcs_key"]),
    "the repository at pgops' prefix": ({"pgbackrest_repo_path": "/pgops"}, ["pgbackrest_repo_path", "overlaps"]),
    "the repository inside pgops' prefix": (
        {"pgbackrest_repo_path": "/pgops/pgbackrest"},
        ["pgbackrest_repo_path", "overlaps"],
    ),
    "a placeholder passphrase and S3 secret": (
        {
            "pgbackrest_repo_cipher_pass": "CHANGE-ME-pgbackrest-zq-cipher-tail-1",
            "pgbackrest_repo_s3_key_secret": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY-zq-s3-tail-2",
        },
        ["pgbackrest_repo_cipher_pass", "pgbackrest_repo_s3_key_secret", "placeholder"],
    ),
    "encryption with a short passphrase": ({"pgbackrest_repo_cipher_pass": "short"}, ["pgbackrest_repo_cipher_pass"]),
    "retention below 1 and process-max below 1": (
        {"pgbackrest_retention_full": 0, "pgbackrest_process_max": 0},
        ["pgbackrest_retention_full=0", "pgbackrest_process_max=0"],
    ),
    "pgops not told the stanza": (
        {"postgresql_backup_settings": {"S3_REGION": "eu-central-1"}},
        ["postgresql_backup_settings.PGBACKREST_STANZA"],
    ),
    "a malformed cron expression": (
        {"pgbackrest_schedules": {"full": {"cron": "weekly"}}},
        ["pgbackrest_schedules.full"],
    ),
}


@pytest.fixture(scope="module")
def outcome(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, list[str]], str]:
    return validation_outcomes(tmp_path_factory, "pgbackrest", GOOD, CASES, ("validate", "server"))


@pytest.mark.parametrize("name", list(CASES))
def test_pgbackrest_role_validation(outcome: tuple[dict[str, list[str]], str], name: str) -> None:
    results, _ = outcome
    messages = " | ".join(results[name])
    assert messages, f"{name}: accepted"
    for fragment in CASES[name][1]:
        assert fragment in messages, (fragment, messages)
    if HOST_CHECKS not in CASES[name][1]:
        assert HOST_CHECKS not in messages, f"{name}: got past input validation"


def test_no_secret_value_is_printed(outcome: tuple[dict[str, list[str]], str]) -> None:
    results, output = outcome
    for tail in SECRET_TAILS:
        assert tail not in output
        assert not any(tail in msg for msgs in results.values() for msg in msgs)
