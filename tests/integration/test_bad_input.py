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
    ("data", "needle"),
    [
        (GOOD.encode() + b"PGOPS_TARGET db-1\n", "line 2 is not KEY=VALUE"),
        (GOOD.encode() + f"PGOPS_S3_SECRET_ACCESS_KEY: {SECRET}\n".encode(), "line 2 is not KEY=VALUE"),
        (GOOD.encode() + b"\x00\x01\x02\xff\xfe binary\n", "line 2 is not UTF-8 text"),
        (GOOD.encode() + b"PGOPS_TARGET=a\x00b\n", "line 2 holds a NUL byte"),
    ],
    ids=["words", "yaml-style-secret", "binary", "nul"],
)
def test_malformed_env_file_is_exit_2_naming_file_and_line(tmp_path: Path, data: bytes, needle: str) -> None:
    f = _file(tmp_path, data)
    error = one_error(check_settings(f))
    assert str(f) in error and needle in error


def test_directory_as_env_file_is_exit_2(tmp_path: Path) -> None:
    error = one_error(check_settings(tmp_path))
    assert f"env file {tmp_path} is a directory" in error


def test_readable_env_file_with_a_secret_is_refused_without_one_accepted(tmp_path: Path) -> None:
    f = _file(tmp_path, f"{GOOD}PGOPS_S3_ACCESS_KEY_ID=AKIA1\nPGOPS_S3_SECRET_ACCESS_KEY={SECRET}\n".encode(), 0o644)
    error = one_error(check_settings(f))
    assert "PGOPS_S3_SECRET_ACCESS_KEY" in error and "mode 0644" in error and "chmod 600" in error
    f.chmod(0o600)
    assert check_settings(f).returncode == 0
    public = _file(tmp_path, GOOD.encode(), 0o644)  # no secret in it: fine for anyone to read
    ok = check_settings(public)
    assert ok.returncode == 0, ok.stderr
    assert "level=warning" not in ok.stderr and "level=error" not in ok.stderr


@pytest.mark.parametrize(
    ("url", "needle"),
    [("gs://bucket/../etc", "'..' parts"), ("s3://acme-db-backups/prod?x=1", "'?' or '#'"), ("s3://x/p", "bucket")],
)
def test_settings_only_refuses_a_bad_storage_url(tmp_path: Path, url: str, needle: str) -> None:
    f = _file(tmp_path, f"PGOPS_STORAGE_URL={url}\n".encode())
    error = one_error(check_settings(f))
    assert "PGOPS_STORAGE_URL" in error and needle in error
