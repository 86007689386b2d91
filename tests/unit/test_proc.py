"""What a failed child's one-line error shows, and that a child never outlives a signal."""

from __future__ import annotations

import os
import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest

from pgops.errors import Interrupted
from pgops.proc import error_summary, running


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


def test_a_signal_while_the_child_starts_still_reaps_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """A signal handler raises where it lands. Landing between the child's start and the `with` body (seen
    under load: pg_dump left behind by a SIGTERM) must still stop and reap the child. A signal cannot be
    placed in that window for real, so the window raises what our handler raises."""
    started: list[subprocess.Popen[bytes]] = []
    real_popen = subprocess.Popen

    def recording_popen(*args: Any, **kwargs: Any) -> subprocess.Popen[bytes]:
        proc = real_popen(*args, **kwargs)
        started.append(proc)
        return proc

    def interrupted(*_: Any, **__: Any) -> None:
        raise Interrupted(15)

    monkeypatch.setattr(subprocess, "Popen", recording_popen)
    # Thread.start() waits for the new thread: under load, the window a SIGTERM landed in.
    monkeypatch.setattr(threading.Thread, "start", interrupted)
    with pytest.raises(Interrupted), running(["sleep", "30"], env={"PATH": os.environ["PATH"]}):
        pytest.fail("the body must not run")
    (child,) = started
    assert child.returncode is not None  # reaped by us, not left to init
    assert not Path(f"/proc/{child.pid}").exists()
