"""What a failed child's one-line error shows."""

from __future__ import annotations

from pgops.proc import error_summary


def test_pg_dump_failure_names_the_cause_not_the_command() -> None:
    stderr = (
        'pg_dump: error: Dumping the contents of table "t" failed: PQgetResult() failed.\n'
        "pg_dump: detail: Error message from server: ERROR:  invalid page in block 0 of relation base/16384/16385\n"
        "pg_dump: detail: Command was: COPY public.t (id, v) TO stdout;\n"
    )
    summary = error_summary(stderr)
    assert "invalid page in block 0" in summary and "Dumping the contents" in summary
    assert "Command was" not in summary


def test_without_error_lines_the_last_line_is_shown() -> None:
    assert error_summary("starting\nconnection lost\n") == "connection lost"
    assert error_summary("") == "no error output"
