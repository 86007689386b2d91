"""Bad input seen the way the backup role and cron see it: `pgops` as a process, one error line naming
the file or setting and what would be valid, exit 2, no traceback and no raw library warnings."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from pgops.errors import ExitCode
from tests.fixtures.engine import run_pgops

SECRET = "wJalrXUtnFEMI-K7MDENG-bPxRfiCY"
GOOD = "PGOPS_STORAGE_URL=s3://acme-db-backups/prod\n"


def check_settings(env_file: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return run_pgops(["check", "--settings-only", "--env-file", str(env_file)], env)


def one_error(result: subprocess.CompletedProcess[str]) -> str:
    """The single error line of a run that failed with exit 2, and nothing raw on stderr."""
    assert result.returncode == ExitCode.CONFIG, result.stderr
    assert "Traceback" not in result.stderr and "error_type=bug" not in result.stderr, result.stderr
    assert all(line.startswith("ts=") for line in result.stderr.splitlines()), result.stderr  # only log lines
    errors = [line for line in result.stderr.splitlines() if "level=error" in line]
    assert len(errors) == 1 and "error_type=ConfigError" in errors[0], result.stderr
    assert SECRET not in result.stderr
    return errors[0]


def _file(tmp_path: Path, data: bytes, mode: int = 0o600) -> Path:
    f = tmp_path / "pgops.env"
    f.write_bytes(data)
    f.chmod(mode)
    return f


@pytest.mark.parametrize(
    ("url", "needle"),
    [("gs://bucket/../etc", "'..' parts"), ("s3://acme-db-backups/prod?x=1", "'?' or '#'"), ("s3://x/p", "bucket")],
)
def test_settings_only_refuses_a_bad_storage_url(tmp_path: Path, url: str, needle: str) -> None:
    f = _file(tmp_path, f"PGOPS_STORAGE_URL={url}\n".encode())
    error = one_error(check_settings(f))
    assert "PGOPS_STORAGE_URL" in error and needle in error
