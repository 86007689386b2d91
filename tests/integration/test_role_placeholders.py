"""The roles' validation refuses placeholder secrets, malformed age recipients and a scheduled restore test
that could not decrypt (issue 11, section 1), by running their real validate tasks with ansible-playbook on
this machine (Debian 12, a local connection; validation changes nothing). Each case must fail with one
line naming the variable, and no secret value may appear anywhere in the output."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.role_validation import run_role_validation

AGE_PUB = "age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p"  # a well-formed X25519 recipient
AGE_KEY = "AGE-SECRET-KEY-1GFPYYSJZGFPYYSJZGFPYYSJZGFPYYSJZGFPYYSJZGFPYYSJZGFPQ4EGAEX"
# Distinctive parts of the secret values: none of them may appear in ansible's output.
SECRET_TAILS = ["zq-pw-tail-1", "zq-s3-tail-2", "zq-hb-tail-3", "zq-id-tail-4"]

BACKUP_BASE: dict[str, Any] = {
    "postgresql_backup_storage_url": "s3://acme-db-backups/prod",
    "postgresql_backup_install_from": "index",
    "postgresql_backup_scheduler": "cron",
}

# name -> (role, variables, expected fragments of the one failure line, or None: validation passes)
CASES: dict[str, tuple[str, dict[str, Any], list[str] | None]] = {
    "a CHANGE-ME user password": (
        "postgresql",
        {
            "postgresql_users": [
                {"name": "app_owner", "password": "Real-Secret-9-abc"},
                {"name": "app_ro", "password": "change-me-app-ro-zq-pw-tail-1"},
            ]
        },
        ["postgresql_users[1].password (app_ro)", "placeholder"],
    ),
    "real user passwords": (
        "postgresql",
        {"postgresql_users": [{"name": "app_owner", "password": "Real-Secret-9-abc"}]},
        None,
    ),
    "placeholder backup secrets and settings": (
        "postgresql_backup",
        {
            **BACKUP_BASE,
            "postgresql_backup_settings": {"S3_ACCESS_KEY_ID": "AKIAEXAMPLEPLACEHOLDER", "KEEP_DAILY": 14},
            "postgresql_backup_secrets": {
                "S3_SECRET_ACCESS_KEY": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY-zq-s3-tail-2",
                "HEARTBEAT_URL": "https://hc-ping.com/CHANGE-ME-zq-hb-tail-3",
            },
        },
        [
            "postgresql_backup_settings.S3_ACCESS_KEY_ID",
            "postgresql_backup_secrets.HEARTBEAT_URL",
            "postgresql_backup_secrets.S3_SECRET_ACCESS_KEY",
        ],
    ),
    "a placeholder age recipient and identity": (
        "postgresql_backup",
        {
            **BACKUP_BASE,
            "postgresql_backup_age_recipients": [AGE_PUB, "age1-CHANGE-ME-ops-team-public-key"],
            "postgresql_backup_age_identity": "AGE-SECRET-KEY-CHANGE-ME-zq-id-tail-4",
        },
        ["postgresql_backup_age_recipients[1]", "postgresql_backup_age_identity"],
    ),
    "an age recipient that is no age key": (
        "postgresql_backup",
        {**BACKUP_BASE, "postgresql_backup_age_recipients": [AGE_PUB, "age1notakey"]},
        ["postgresql_backup_age_recipients[1]", "not an age X25519 public key"],
    ),
    "a scheduled restore test of encrypted backups without the identity": (
        "postgresql_backup",
        {**BACKUP_BASE, "postgresql_backup_age_recipients": [AGE_PUB]},
        ["postgresql_backup_schedules.restore_test.enabled", "postgresql_backup_age_identity"],
    ),
    "a database host with public keys only and no restore test": (
        "postgresql_backup",
        {
            **BACKUP_BASE,
            "postgresql_backup_age_recipients": [AGE_PUB],
            "postgresql_backup_schedules": {"restore_test": {"enabled": False}},
        },
        None,
    ),
    "a drill host: no backups, restore tests of two targets with the identity": (
        "postgresql_backup",
        {
            **BACKUP_BASE,
            "postgresql_backup_age_recipients": [AGE_PUB],
            "postgresql_backup_age_identity": AGE_KEY,
            "postgresql_backup_restore_test_targets": ["db-prod-1", "db-prod-2"],
            "postgresql_backup_schedules": {
                "backup": {"enabled": False},
                "retention": {"enabled": False},
                "verify": {"enabled": False},
            },
        },
        None,
    ),
    "a restore-test target that is no target name": (
        "postgresql_backup",
        {**BACKUP_BASE, "postgresql_backup_restore_test_targets": ["db prod 1"]},
        ["postgresql_backup_restore_test_targets"],
    ),
}


def _validate(tmp: Path, role: str, variables: dict[str, Any]) -> tuple[str, str]:
    """Run the role's validate tasks with these variables: ('passed' or the failure's msg, the whole output)."""
    result = run_role_validation(tmp, role, variables)
    output = result.stdout + result.stderr
    if result.returncode == 0:
        return "passed", output
    failed = [line for line in result.stdout.splitlines() if line.startswith("fatal:")]
    assert len(failed) == 1, output[-4000:]
    payload = json.loads(failed[0].split("=> ", 1)[1])
    return str(payload.get("msg", "")), output


@pytest.fixture(scope="module")
def outcome(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, str], str]:
    results, outputs = {}, []
    for name, (role, variables, _) in CASES.items():
        results[name], output = _validate(tmp_path_factory.mktemp("case"), role, variables)
        outputs.append(output)
    return results, "\n".join(outputs)


@pytest.mark.parametrize("name", list(CASES))
def test_role_validation(outcome: tuple[dict[str, str], str], name: str) -> None:
    results, _ = outcome
    expected = CASES[name][2]
    if expected is None:
        assert results[name] == "passed"
        return
    msg = results[name]
    assert msg != "passed", f"{name}: accepted"
    assert "\n" not in msg.strip()
    for fragment in expected:
        assert fragment in msg, (fragment, msg)


def test_no_secret_value_is_printed(outcome: tuple[dict[str, str], str]) -> None:
    results, output = outcome
    for tail in SECRET_TAILS:
        assert tail not in output
        assert not any(tail in msg for msg in results.values())
    assert AGE_KEY not in output
