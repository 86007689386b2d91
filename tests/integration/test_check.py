"""`pgops check`: everything a scheduled backup needs, proven up front (the backup role runs it on converge).

Each broken piece fails with its own exit code and one error line that names the setting to fix.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from pgops.errors import ExitCode
from tests.fixtures.engine import run_pgops
from tests.fixtures.pg import free_port


def _errors(result: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in result.stderr.splitlines() if "level=error" in line]


def test_check_proves_store_server_pg_dump_and_directories(engine_env: dict[str, str], tmp_path: Path) -> None:
    metrics = tmp_path / "metrics"
    result = run_pgops(["check"], {**engine_env, "PGOPS_METRICS_DIR": str(metrics)})
    assert result.returncode == 0, result.stderr
    ok = [line for line in result.stderr.splitlines() if "event=check_ok" in line]
    assert len(ok) == 1 and 'server="15.' in ok[0] and "pg_dump=" in ok[0]
    assert metrics.is_dir() and list(metrics.iterdir()) == []  # the probe file is gone
    store = Path(engine_env["PGOPS_STORAGE_URL"].removeprefix("file://"))
    assert [p for p in store.rglob("*") if p.is_file()] == []


def test_check_names_an_unreachable_server(engine_env: dict[str, str]) -> None:
    conninfo = f"{engine_env['PGOPS_PG_CONNINFO']} port={free_port()}"  # the last port= wins
    result = run_pgops(["check"], {**engine_env, "PGOPS_PG_CONNINFO": conninfo})
    assert result.returncode == ExitCode.POSTGRES, result.stderr
    errors = _errors(result)
    assert len(errors) == 1 and "cannot connect" in errors[0]


def test_check_names_a_metrics_dir_it_cannot_write(engine_env: dict[str, str], tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory\n")
    result = run_pgops(["check"], {**engine_env, "PGOPS_METRICS_DIR": str(blocker / "metrics")})
    assert result.returncode == ExitCode.CONFIG, result.stderr
    errors = _errors(result)
    assert len(errors) == 1 and "PGOPS_METRICS_DIR=" in errors[0]


def test_check_refuses_pg_dump_older_than_the_server(engine_env: dict[str, str], tmp_path: Path) -> None:
    # Only PostgreSQL 15 is installed here, so an old pg_dump has to be a stand-in that reports version 13.
    bindir = tmp_path / "oldbin"
    bindir.mkdir()
    fake = bindir / "pg_dump"
    fake.write_text("#!/bin/sh\necho 'pg_dump (PostgreSQL) 13.16'\n")
    fake.chmod(0o755)
    result = run_pgops(["check"], {**engine_env, "PGOPS_PG_BINDIR": str(bindir)})
    assert result.returncode == ExitCode.POSTGRES, result.stderr
    errors = _errors(result)
    assert len(errors) == 1 and "older than the server (15)" in errors[0] and "PGOPS_PG_BINDIR" in errors[0]


def test_settings_only_needs_no_network_but_checks_keys(engine_env: dict[str, str], tmp_path: Path) -> None:
    offline = {
        **engine_env,
        "PGOPS_STORAGE_URL": "s3://pgops-unreachable/x",
        "PGOPS_S3_ENDPOINT_URL": "http://127.0.0.1:9",
    }
    assert run_pgops(["check", "--settings-only"], offline).returncode == 0
    assert run_pgops(["check"], offline).returncode == ExitCode.STORAGE

    bad = run_pgops(["check", "--settings-only"], {**offline, "PGOPS_AGE_RECIPIENTS": "age1notakey"})
    assert bad.returncode == ExitCode.CONFIG and "PGOPS_AGE_RECIPIENTS" in bad.stderr

    missing = tmp_path / "no-such-identity.txt"
    result = run_pgops(["check", "--settings-only"], {**offline, "PGOPS_AGE_IDENTITY_FILE": str(missing)})
    assert result.returncode == ExitCode.CONFIG and "PGOPS_AGE_IDENTITY_FILE" in result.stderr

    typo = tmp_path / "typo.env"
    typo.write_text("PGOPS_KEEP_DAYLY=7\n")
    result = run_pgops(["check", "--settings-only"], {**offline, "PGOPS_ENV_FILE": str(typo)})
    assert result.returncode == ExitCode.CONFIG and "PGOPS_KEEP_DAILY" in result.stderr
