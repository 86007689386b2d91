"""Every command block of docs/runbooks/ says how the runbooks' test runs it (tests/fixtures/runbooks.py).

molecule/runbooks runs the blocks against real hosts; this unit test keeps the markdown in a shape it can
run: a block without a marker, a marker without a block, an unknown host, or too many blocks left unrun
fail here, in the fast suite, before anyone starts containers.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fixtures.runbooks import (
    HA_HOSTS,
    HA_RUNBOOK_FILES,
    HOSTS,
    RUNBOOK_DIR,
    RUNBOOK_FILES,
    RunbookSyntaxError,
    all_blocks,
    ha_blocks,
    missing_output,
    normalise,
    parse,
    split_console,
)

MAX_NOT_RUN = 6  # rare and justified: interactive input, an AWS account, a section another change owns


def test_every_command_block_of_the_runbooks_has_a_marker() -> None:
    blocks = all_blocks()  # raises RunbookSyntaxError naming file:line of the first unmarked block
    assert len(blocks) >= 70, f"only {len(blocks)} command blocks found: is the parser missing some?"
    for b in blocks:
        assert b.not_run is not None or b.host in HOSTS, b.where
        if b.lang == "console":
            assert b.commands(), f"{b.where}: a console block without a `$ ` command"


def test_the_high_availability_runbook_runs_on_the_ha_scenarios_hosts() -> None:
    blocks = ha_blocks()
    assert len(blocks) >= 8, f"only {len(blocks)} command blocks found in {HA_RUNBOOK_FILES}"
    for b in blocks:
        assert b.not_run is not None or b.host in HA_HOSTS, b.where


def test_every_runbook_is_run_by_a_scenario() -> None:
    assert {p.name for p in RUNBOOK_DIR.glob("*.md")} - {"README.md"} == {*RUNBOOK_FILES, *HA_RUNBOOK_FILES}


def test_blocks_that_are_not_run_are_rare_and_say_why() -> None:
    not_run = [b for b in [*all_blocks(), *ha_blocks()] if b.not_run is not None]
    assert len(not_run) <= MAX_NOT_RUN, [f"{b.where}: {b.not_run}" for b in not_run]
    for b in not_run:
        assert b.not_run is not None and len(b.not_run) >= 20, f"{b.where}: give the reason: {b.not_run!r}"


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "runbook.md"
    p.write_text(text, encoding="utf-8")
    return p


def test_a_block_without_a_marker_fails_naming_its_line(tmp_path: Path) -> None:
    p = _write(tmp_path, "# x\n\n<!-- runbook: host=db -->\n```sh\ntrue\n```\n\ntext\n\n```console\n$ true\n```\n")
    with pytest.raises(RunbookSyntaxError, match=r"runbook\.md:10: ```console block without a marker"):
        parse(p)


@pytest.mark.parametrize(
    ("marker", "message"),
    [
        ("host=laptop", "host=laptop: valid hosts are db, restore, scratch, store, controller"),
        ("setup=x", "marker without host="),
        ("host=db when=later", "marker option 'when=later'"),
        ("not run: short", "marker option 'not'"),
    ],
)
def test_a_bad_marker_is_refused(tmp_path: Path, marker: str, message: str) -> None:
    p = _write(tmp_path, f"<!-- runbook: {marker} -->\n```sh\ntrue\n```\n")
    with pytest.raises(RunbookSyntaxError, match=message):
        parse(p)


def test_a_marker_must_sit_right_before_its_block(tmp_path: Path) -> None:
    p = _write(tmp_path, "<!-- runbook: host=db -->\nsome prose\n```sh\ntrue\n```\n")
    with pytest.raises(RunbookSyntaxError, match="marker without a command block"):
        parse(p)


def test_console_blocks_split_into_commands_with_continuations_and_heredocs() -> None:
    body = "\n".join(
        [
            "$ sudo -u postgres pgops restore --database billing \\",
            "    --check",
            "ts=... event=restore_done",
            "$ psql <<'SQL'",
            "BEGIN;",
            "SQL",
            "BEGIN",
            "$ echo done",
        ]
    )
    cmds = split_console(body, "x.md:1")
    assert [c.text for c in cmds] == [
        "sudo -u postgres pgops restore --database billing \\\n    --check",
        "psql <<'SQL'\nBEGIN;\nSQL",
        "echo done",
    ]
    assert [c.shown for c in cmds] == [("ts=... event=restore_done",), ("BEGIN",), ()]


def test_output_is_compared_after_the_conventions_normalisation() -> None:
    shown = (
        "ts=2026-11-22T08:02:41.804Z level=info event=restore_done database=billing id=20261122T080114Z-8ce130 "
        "into=billing seconds=0.55",
        "...",
        "billing_pgops_old_20261122t080241z|t",
    )
    actual = (
        "ts=2026-12-03T13:01:02.000Z level=info event=restore_start database=billing\n"
        "ts=2026-12-03T13:01:03.123Z level=info event=restore_done database=billing id=20261203T130101Z-a1b2c3 "
        "into=billing seconds=1.25\n"
        "billing_pgops_old_20261203t130101z|t\n"
    )
    assert missing_output(shown, actual) == []
    assert missing_output(shown, actual.replace("into=billing", "into=billing_side")) == [normalise(shown[0])]
    # Order matters: a shown line that only appears before the previous match is missing.
    assert missing_output((shown[2], shown[0]), actual) == [normalise(shown[0])]


def test_pgbackrest_labels_and_wal_names_are_placeholders() -> None:
    shown = ("  newest diff  20261203-192517F_20261203-193002D  finished 2026-12-03T19:30:05.000Z",)
    actual = "  newest diff  20261204-010001F_20261204-020002D  finished 2026-12-04T02:00:04.000Z\n"
    assert missing_output(shown, actual) == []
    wal = "WAL archive  ok; last archived 000000010000000000000005.00000028.backup at 2026-12-03T19:25:20.420Z"
    other = wal.replace("000000010000000000000005.00000028", "000000020000000000000017.000000A0")
    assert other != wal and normalise(wal) == normalise(other)
    assert missing_output(("full backup: 20261203-192517F",), "diff backup: 20261203-192517F_20261203-193002D") != []


def test_a_utc_stamp_in_a_name_is_a_placeholder_but_an_id_stays_an_id() -> None:
    shown = "event=restore_point_created name=pgops-before-repair-20261203T195110Z lsn=0/1C577110"
    assert missing_output((shown,), shown.replace("20261203T195110Z", "20261204T081502Z")) == []
    assert normalise("id=20261203T195110Z-ab12cd") == "id=<ID>"


def test_a_float_is_a_float_whatever_the_number_of_its_digits() -> None:
    shown = 'pgops_restore_test_duration_seconds{database="appdb",target="db-prod-1"} 0.25507642599950486'
    actual = shown.replace("0.25507642599950486", "0.257368956998107") + "\n"
    assert missing_output((shown,), actual) == []
    stamp = 'pgops_restore_test_last_success_timestamp_seconds{database="appdb"} 1.7963036739333925e+09'
    assert missing_output((stamp,), stamp.replace("1.7963036739333925e+09", "1.796333028099276e+09")) == []
    assert normalise("database system identifier 7443165327893477144") == "database system identifier <SYSID>"
