"""CLI behaviour: progress on a terminal vs log lines, JSON logs, documented exit codes, check."""

from __future__ import annotations

import json
import os
import subprocess
import time

from pgops.errors import ExitCode
from tests.fixtures.engine import PGOPS, Engine, _child_env
from tests.fixtures.pg import Cluster
from tests.fixtures.terminal import on_terminal


def _small(pg: Cluster) -> str:
    name = "cli_small"
    if name not in pg.databases():
        pg.create_database(name)
        pg.execute(name, "CREATE TABLE t AS SELECT i, md5(i::text) FROM generate_series(1, 50000) i")
    return name


def test_restore_shows_progress_bar_on_terminal_and_log_lines_otherwise(engine: Engine, pg: Cluster) -> None:
    db = _small(pg)
    engine.run(["backup", "--databases", db, "--no-globals"], check=True)
    try:
        plain = engine.run(["restore", "--database", db, "--target-db", "cli_plain"], check=True)
        assert "event=progress what=restore" in plain.stderr and "percent=100" in plain.stderr
        assert "\r" not in plain.stderr

        out = _on_terminal(engine, ["restore", "--database", db, "--target-db", "cli_tty"])
        assert "\rrestore [" in out and "100%" in out
        assert "event=progress" not in out
        _assert_log_lines_start_lines(out)
    finally:
        pg.drop_database("cli_plain")
        pg.drop_database("cli_tty")


def _on_terminal(engine: Engine, args: list[str]) -> str:
    """pgops ARGS with stderr on a pseudo-terminal (as `compose exec` or ssh -t gives it): what it shows."""
    code, out = on_terminal([*PGOPS, *args], _child_env(engine.env), timeout=120, stdout=False)
    assert code == 0, out
    return out


def _assert_log_lines_start_lines(out: str) -> None:
    """Every log line begins a line of its own (never after the progress meter's text), and the meter's
    last text is ended by a newline before the prompt comes back."""
    lines = out.replace("\r\n", "\n").split("\n")  # the terminal turns each \n into \r\n
    assert any(line.startswith("ts=") for line in lines), out
    for line in lines:
        assert "ts=" not in line or line.startswith("ts="), f"a log line runs on after the meter: {line!r}"
    assert out.endswith("\n"), repr(out[-200:])


def test_backup_progress_meter_and_log_lines_stay_on_lines_of_their_own(engine: Engine, pg: Cluster) -> None:
    """The meter of a backup on a terminal is followed by the log line of each finished database: the
    log line starts a new line (it used to be glued to the meter's `\rbackup 12.3 MiB`)."""
    db = _small(pg)
    out = _on_terminal(engine, ["backup", "--databases", db])
    assert "\rbackup " in out, out
    assert "event=progress" not in out
    for line in out.replace("\r\n", "\n").split("\n"):
        if "event=backup_done" in line:
            assert line.startswith("ts="), f"log line after the meter: {line!r}"
    _assert_log_lines_start_lines(out)


def test_json_logs_are_one_object_per_line(engine: Engine, pg: Cluster) -> None:
    db = _small(pg)
    result = engine.run(["backup", "--databases", db, "--log-format", "json"], check=True)
    lines = [json.loads(line) for line in result.stderr.splitlines()]
    events = [line["event"] for line in lines]
    assert "run_start" in events and events.count("backup_done") == 2  # globals + the database
    done = next(line for line in lines if line["event"] == "backup_done" and line["database"] == db)
    assert int(done["bytes"]) > 0 and done["level"] == "info"


def test_help_documents_every_exit_code() -> None:
    out = subprocess.run([*PGOPS, "--help"], capture_output=True, text=True, check=True).stdout
    for code in ExitCode:
        assert f"{code.value:<4} {code.name.lower()}" in out
    sub = subprocess.run([*PGOPS, "backup", "--help"], capture_output=True, text=True, check=True).stdout
    assert "lock_held" in sub


def test_check_passes_and_missing_bucket_fails_fast(engine: Engine) -> None:
    assert engine.run(["check"]).returncode == 0
    if engine.backend != "s3":
        return
    missing = engine.run(["backup"], extra={"PGOPS_STORAGE_URL": "s3://pgops-no-such-bucket/x"})
    assert missing.returncode == ExitCode.STORAGE
    errors = [line for line in missing.stderr.splitlines() if "level=error" in line]
    assert len(errors) == 1 and "PGOPS_STORAGE_URL" in errors[0]


def test_retention_cli_dry_run_matches_real_run_and_keeps_newest_verified(engine: Engine, pg: Cluster) -> None:
    db = _small(pg)
    ids = []
    for i in range(3):
        engine.run(["backup", "--databases", db, "--no-globals"], check=True)
        ids.append(json.loads(engine.run(["list", "--json"], check=True).stdout)["backups"][0]["id"])
        if i == 0:
            engine.run(["verify", "--id", ids[0]], check=True)  # the oldest one is the only verified backup
        time.sleep(1.1)
    policy = {"PGOPS_KEEP_LAST": "1", "PGOPS_KEEP_DAILY": "0", "PGOPS_KEEP_WEEKLY": "0", "PGOPS_KEEP_MONTHLY": "0"}
    dry = json.loads(engine.run(["retention", "--dry-run", "--json"], check=True, extra=policy).stdout)
    assert dry["deleted_keys"] == [] and dry["planned_keys"]
    table = engine.run(["retention", "--dry-run"], check=True, extra=policy).stdout
    assert ids[1] in table
    real = json.loads(engine.run(["retention", "--json"], check=True, extra=policy).stdout)
    assert real["deleted_keys"] == dry["planned_keys"]
    left = {b["id"] for b in json.loads(engine.run(["list", "--json"], check=True).stdout)["backups"]}
    assert left == {ids[0], ids[2]}  # newest (keep-last 1) and the newest verified one


def test_backup_reason_and_json_name_what_was_stored(engine: Engine, pg: Cluster) -> None:
    """The on-demand backup of playbooks/backup.yml: tagged (pre-migration), ids printed for the operator."""
    db = _small(pg)
    result = engine.run(["backup", "--databases", db, "--reason", "pre-migration", "--json"], check=True)
    out = json.loads(result.stdout)
    assert sorted(b["database"] or "@globals" for b in out["backups"]) == ["@globals", db]
    assert {b["reason"] for b in out["backups"]} == {"pre-migration"} and out["failed"] == []
    assert all(b["id"] == out["id"] for b in out["backups"])
    listed = json.loads(engine.run(["list", "--json"], check=True).stdout)["backups"]
    assert {(b["id"], b["reason"]) for b in listed if b["id"] == out["id"]} == {(out["id"], "pre-migration")}

    bad = engine.run(["backup", "--reason", "Pre Migration"])
    assert bad.returncode == 2 and "--reason" in bad.stderr and "a-z" in bad.stderr
    assert json.loads(engine.run(["list", "--json"], check=True).stdout)["backups"] == listed


def test_list_before_shows_only_backups_started_by_then(engine: Engine, pg: Cluster) -> None:
    """restore.yml picks "the state at time T" from this listing."""
    db = _small(pg)
    engine.run(["backup", "--databases", db, "--no-globals"], check=True)
    time.sleep(1.1)
    engine.run(["backup", "--databases", db, "--no-globals"], check=True)
    both = json.loads(engine.run(["list", "--json"], check=True).stdout)["backups"]
    older, newer = both[-1], both[0]
    assert older["started_at"] < newer["started_at"]
    at_older = json.loads(engine.run(["list", "--json", "--before", older["finished_at"]], check=True).stdout)
    assert [b["id"] for b in at_older["backups"]] == [older["id"]]
    assert (
        json.loads(engine.run(["list", "--json", "--before", "2001-01-01T00:00:00Z"], check=True).stdout)["backups"]
        == []
    )
    bad = engine.run(["list", "--before", "yesterday"])
    assert bad.returncode == ExitCode.CONFIG and "--before='yesterday'" in bad.stderr


def test_a_reader_that_goes_away_is_a_quiet_exit_141(engine: Engine, pg: Cluster) -> None:
    """`pgops list --json | true`: the pipe's reader is gone before pgops writes. No traceback, no
    'error_type=bug', the shell's usual status (128 + SIGPIPE)."""
    engine.run(["backup", "--databases", "postgres"], check=True)
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader went away
    try:
        result = subprocess.run(
            [*PGOPS, "list", "--json"],
            env=_child_env(engine.env),
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
            check=False,
        )
    finally:
        os.close(write_end)
    assert result.returncode == int(ExitCode.BROKEN_PIPE) == 141, result.stderr
    assert "Traceback" not in result.stderr and "error_type=bug" not in result.stderr
    assert "BrokenPipeError" not in result.stderr
