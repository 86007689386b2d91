"""Parsing pgBackRest's info JSON and log lines, and the RPO arithmetic, without a server.

The JSON samples are trimmed copies of what pgBackRest 2.45 printed on this machine
(tests/integration/test_physical_view.py runs the real thing)."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest

from pgops.errors import PgbackrestError
from pgops.pgbackrest import log_path, parse_dropped, parse_info
from pgops.physical import judge
from pgops.settings import Settings, build_settings
from pgops.wal_archive import ArchiverState, lsn_text, segment_end

SEG = 16 * 1024 * 1024

FULL = {
    "archive": {"start": "000000010000000000000002", "stop": "000000010000000000000003"},
    "backrest": {"format": 5, "version": "2.45"},
    "database": {"id": 1, "repo-key": 1},
    "error": False,
    "info": {"delta": 22992808, "repository": {"delta": 2823540, "size": 2823540}, "size": 22992808},
    "label": "20261203-154623F",
    "lsn": {"start": "0/2000028", "stop": "0/3000050"},
    "prior": None,
    "reference": None,
    "timestamp": {"start": 1796312783, "stop": 1796312787},
    "type": "full",
}
DIFF = dict(
    FULL,
    label="20261203-154623F_20261203-154700D",
    type="diff",
    prior="20261203-154623F",
    timestamp={"start": 1796312820, "stop": 1796312822},
    info={"delta": 8192, "repository": {"delta": 400, "size": 2823940}, "size": 22992808},
)


def _stanza(code: int = 0, message: str = "ok", backups: list[Any] | None = None, **extra: Any) -> dict[str, Any]:
    return {
        "archive": [{"id": "15-1", "max": "00000001000000000000000A", "min": "000000010000000000000001"}],
        "backup": backups if backups is not None else [FULL, DIFF],
        "cipher": "none",
        "db": [{"id": 1, "repo-key": 1, "system-id": 7715104652569654972, "version": "15"}],
        "name": "main",
        "repo": [{"cipher": "none", "key": 1, "status": {"code": code, "message": message}}],
        "status": {"code": code, "lock": {"backup": {"held": False}}, "message": message},
        **extra,
    }  # fmt: skip


def test_backups_newest_by_type_and_the_wal_range() -> None:
    info = parse_info(json.dumps([_stanza()]), "main")
    assert [b.label for b in info.backups] == [FULL["label"], DIFF["label"]]
    newest_full, newest_diff = info.newest("full"), info.newest("diff")
    assert newest_full is not None and newest_diff is not None
    assert newest_full.repo_size == 2823540 and newest_full.size == 22992808 and newest_full.duration == 4
    assert newest_full.finished_at == dt.datetime.fromtimestamp(1796312787, dt.UTC)
    assert newest_diff.prior == FULL["label"] and info.newest() == newest_diff and info.newest("incr") is None
    assert (info.wal_min, info.wal_max) == ("000000010000000000000001", "00000001000000000000000A")


def test_no_backups_is_an_answer_not_an_error() -> None:
    info = parse_info(json.dumps([_stanza(2, "no valid backups", [])]), "main")
    assert info.backups == () and info.newest() is None and info.status_code == 2


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        ("not json", "printed no JSON"),
        (json.dumps({"name": "main"}), "does not list stanza main"),
        (json.dumps([dict(_stanza(), name="other")]), "does not list stanza main"),
        (json.dumps([_stanza(1, "missing stanza path")]), "stanza main has status 1 (missing stanza path)"),
        (
            json.dumps(
                [_stanza(99, "[PathOpenError] unable to list file info for path '/r/backup': [13] Permission denied")]
            ),
            "repo1: [PathOpenError] unable to list file info",
        ),
        (json.dumps([dict(_stanza(), status={})]), "has no status code"),
        (json.dumps([_stanza(backups=[dict(FULL, type="weird")])]), "unexpected backup entry"),
        (json.dumps([_stanza(backups=[dict(FULL, timestamp={"start": "x"})])]), "unexpected backup entry"),
    ],
)
def test_what_pgops_cannot_use_is_one_clear_line(doc: str, expected: str) -> None:
    with pytest.raises(PgbackrestError) as e:
        parse_info(doc, "main")
    assert expected in str(e.value) and "\n" not in str(e.value)


def test_segment_end_reads_timeline_log_and_segment() -> None:
    assert segment_end("000000010000000000000003", SEG) == 4 * SEG
    assert segment_end("000000020000000000000003", SEG) == 4 * SEG  # the timeline is not a position
    # log 1, segment 0: 256 segments of 16 MiB per 4 GiB "log"
    assert segment_end("000000010000000100000000", SEG) == (256 + 1) * SEG
    assert lsn_text(segment_end("0000000100000001000000FF", SEG) or 0) == "2/0"
    assert segment_end("000000010000000100000000", 64 * SEG) == (4 + 1) * 64 * SEG  # 1 GiB: 4 per log
    assert segment_end("000000010000000000000002.00000028.backup", SEG) == 3 * SEG
    assert segment_end("000000010000000000000002.partial", SEG) == 3 * SEG
    assert segment_end("00000002.history", SEG) is None


T0 = dt.datetime(2026, 12, 3, 12, 0, tzinfo=dt.UTC)


def _state(**kw: Any) -> ArchiverState:
    base: dict[str, Any] = {
        "in_recovery": False,
        "archive_mode": "on",
        "archive_command": "pgbackrest --stanza=main archive-push %p",
        "archive_timeout": "1min",
        "segment_size": SEG,
        "current_lsn": 4 * SEG,
        "archived_count": 3,
        "last_archived_wal": "000000010000000000000003",
        "last_archived_time": T0,
        "failed_count": 0,
        "last_failed_wal": None,
        "last_failed_time": None,
        "stats_reset": None,
        "started_at": T0 - dt.timedelta(hours=1),
        "now": T0 + dt.timedelta(seconds=90),
    }
    return ArchiverState(**(base | kw))


def test_rpo_nothing_pending_is_zero() -> None:
    s = _state()
    assert (s.rpo_bytes, s.rpo_seconds, s.failing) == (0, 0.0, False)


def test_rpo_counts_bytes_past_the_last_archived_segment_and_seconds_since_it() -> None:
    s = _state(current_lsn=4 * SEG + 4096)
    assert (s.rpo_bytes, s.rpo_seconds) == (4096, 90.0)
    assert _state(current_lsn=2 * SEG).rpo_bytes == 0  # clamped: never negative


def test_rpo_when_nothing_was_ever_archived() -> None:
    s = _state(last_archived_wal=None, last_archived_time=None, archived_count=0)
    assert s.rpo_bytes is None and s.rpo_seconds == 3600 + 90  # since the server started
    reset = _state(last_archived_wal=None, last_archived_time=None, stats_reset=T0)
    assert reset.rpo_seconds == 90  # since the statistics reset, the later of the two


def test_failing_means_the_last_failure_is_newer_than_the_last_success() -> None:
    assert _state(last_failed_time=T0 + dt.timedelta(seconds=1), failed_count=1).failing
    assert not _state(last_failed_time=T0 - dt.timedelta(seconds=1), failed_count=1).failing
    assert _state(last_archived_time=None, last_archived_wal=None, last_failed_time=T0).failing


def test_a_replica_has_no_rpo_of_its_own() -> None:
    s = _state(in_recovery=True, current_lsn=None)
    assert s.rpo_seconds is None and s.rpo_bytes is None


def test_dropped_wal_lines_of_pgbackrest() -> None:
    lines = [
        "2026-12-03 15:55:19.169 P00   INFO: push 3 WAL file(s) to archive: 000000010000000000000004...6\n",
        "2026-12-03 15:55:19.170 P00   WARN: dropped WAL file '000000010000000000000004' because archive queue "
        "exceeded 16MB\n",
        "2026-12-03 15:55:19.171 P00   WARN: dropped WAL file '000000010000000000000005' because archive queue "
        "exceeded 16MB\n",
    ]
    found = parse_dropped(lines)
    assert [d.segment for d in found] == ["000000010000000000000004", "000000010000000000000005"]
    local = dt.datetime(2026, 12, 3, 15, 55, 19, 170000).astimezone(dt.UTC)
    assert found[0].at == local  # pgBackRest logs local time


def test_log_path_from_the_most_specific_section(tmp_path: Path) -> None:
    conf = tmp_path / "pgbackrest.conf"
    conf.write_text("[global]\nlog-path=/var/log/a\nrepo1-path=/r\n\n[main]\npg1-path=/d\n")
    assert log_path(str(conf), "main") == Path("/var/log/a")
    conf.write_text("[global]\nlog-path=/var/log/a\n[main:archive-push]\nlog-path=/var/log/b\n")
    assert log_path(str(conf), "main") == Path("/var/log/b")
    assert log_path(str(conf), "other") == Path("/var/log/a")
    assert log_path(str(tmp_path / "missing.conf"), "main") == Path("/var/log/pgbackrest")


def _settings(**env: str) -> Settings:
    return build_settings(environ={"PGOPS_PGBACKREST_STANZA": "main", **{f"PGOPS_{k}": v for k, v in env.items()}})


NOW = dt.datetime.fromtimestamp(1796312822 + 60, dt.UTC)  # a minute after DIFF


def test_judge_green_then_each_cause_is_one_line() -> None:
    info = parse_info(json.dumps([_stanza()]), "main")
    healthy = _state(now=NOW, last_archived_time=NOW)
    assert judge(_settings(), info, healthy, [], NOW) == []

    assert judge(_settings(), info, _state(now=NOW, archive_mode="off"), [], NOW) == [
        "archive_mode is off on this primary: no WAL reaches stanza main"
    ]
    assert judge(_settings(), info, _state(now=NOW, last_archived_time=NOW, archive_command="/bin/true"), [], NOW) == [
        "archive_command does not call pgbackrest"
    ]
    slow = _state(now=NOW, current_lsn=5 * SEG, last_archived_time=NOW - dt.timedelta(seconds=482))
    assert judge(_settings(RPO_MAX_SECONDS="300"), info, slow, [], NOW) == [
        f"current RPO is 482s ({SEG} bytes not archived), more than PGOPS_RPO_MAX_SECONDS=300"
    ]
    assert judge(_settings(RPO_MAX_SECONDS="0"), info, slow, [], NOW) == []  # 0: the check is off
    old = judge(_settings(PHYSICAL_MAX_AGE="30s", PHYSICAL_FULL_MAX_AGE="30s"), info, healthy, [], NOW)
    assert old == [
        f"newest physical backup {DIFF['label']} is 60s old, older than PGOPS_PHYSICAL_MAX_AGE=30s",
        f"newest full physical backup {FULL['label']} is 95s old, older than PGOPS_PHYSICAL_FULL_MAX_AGE=30s",
    ]
    assert judge(_settings(PHYSICAL_MAX_AGE="0", PHYSICAL_FULL_MAX_AGE="0"), info, healthy, [], NOW) == []
    drops = parse_dropped(
        ["2026-12-03 15:55:19.170 P00   WARN: dropped WAL file 'X1' because archive queue exceeded 1MB"]
    )
    [line] = judge(_settings(), info, healthy, drops, NOW)
    assert line.startswith("pgBackRest dropped 1 WAL file(s)") and "(last X1)" in line


def test_judge_without_backups_and_on_a_replica() -> None:
    empty = parse_info(json.dumps([_stanza(2, "no valid backups", [])]), "main")
    failing_replica = _state(now=NOW, in_recovery=True, current_lsn=None, last_failed_time=NOW, archive_mode="off")
    assert judge(_settings(), empty, failing_replica, [], NOW) == ["no full physical backup in stanza main"]


def test_status_owns_every_physical_gauge_field_it_writes() -> None:
    from pgops import metrics
    from pgops.physical import STATUS_FIELDS, PhysicalReport, metric_fields

    info = parse_info(json.dumps([_stanza(backups=[FULL, DIFF, dict(DIFF, type="incr", label="x")])]), "main")
    report = PhysicalReport("main", info, None, _state(current_lsn=5 * SEG), None, (), (), NOW)
    written = set(metric_fields(report))
    assert written == STATUS_FIELDS
    gauge_fields = {f for _, f in metrics.PHYSICAL_GAUGES.values()}
    typed = {f"{p}_{k}" for _, p in metrics.PHYSICAL_TYPED_GAUGES.values() for k in metrics.PHYSICAL_TYPES}
    assert written == gauge_fields | typed  # every field has its gauge, every gauge its field


def test_a_check_replaces_its_own_fields_and_keeps_the_others(tmp_path: Path) -> None:
    from pgops import metrics
    from pgops.physical import PhysicalReport, record_metrics

    settings = _settings(METRICS_DIR=str(tmp_path), TARGET="db1")
    info = parse_info(json.dumps([_stanza()]), "main")
    primary = PhysicalReport("main", info, None, _state(current_lsn=5 * SEG), None, (), (), NOW)
    record_metrics(settings, primary)
    metrics.update(settings, lambda s: s["main"].update(backup_last_attempt=1.0), physical=True)  # another command's
    replica = PhysicalReport("main", info, None, _state(in_recovery=True, current_lsn=None), None, (), (), NOW)
    record_metrics(settings, replica)
    state = json.loads((tmp_path / metrics.STATE_FILE).read_text())["@physical/db1"]["main"]
    assert state["backup_last_attempt"] == 1.0 and state["in_recovery"] == 1
    assert "rpo_seconds" not in state and "archive_failing" not in state
    prom = (tmp_path / metrics.PROM_FILE).read_text()
    assert 'pgops_server_in_recovery{stanza="main",target="db1"} 1.0' in prom and "pgops_rpo_seconds{" not in prom
