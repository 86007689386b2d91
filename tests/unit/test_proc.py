"""What a failed child's one-line error shows, and that a child never outlives a signal."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pgops import interrupts
from pgops.errors import Interrupted
from pgops.proc import capture, error_summary, running


@pytest.fixture
def handler() -> Iterator[None]:
    """pgops' handler for SIGTERM, as `pgops` installs it (tests run in the main thread)."""
    old = signal.signal(signal.SIGTERM, interrupts.on_signal)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


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


def test_a_real_sigterm_inside_popen_after_the_child_exists_still_reaps_it(
    monkeypatch: pytest.MonkeyPatch, handler: None
) -> None:
    """The child exists as soon as Popen forks, but Popen returns its handle only later. A SIGTERM in between
    (a test found pg_dump as a zombie of init after `pgops backup` exited 143, 3 runs in 144) must still stop and
    reap the child. The signal is real; the wrapper only sends it at that moment."""
    started: list[subprocess.Popen[bytes]] = []
    real_popen = subprocess.Popen

    def signalled_popen(*args: Any, **kwargs: Any) -> subprocess.Popen[bytes]:
        proc = real_popen(*args, **kwargs)
        started.append(proc)
        os.kill(os.getpid(), signal.SIGTERM)  # the handler runs here, before Popen's handle reaches the caller
        return proc

    monkeypatch.setattr(subprocess, "Popen", signalled_popen)
    with pytest.raises(Interrupted) as caught, running(["sleep", "30"], env={"PATH": os.environ["PATH"]}):
        pytest.fail("the body must not run")
    assert caught.value.signum == signal.SIGTERM
    (child,) = started
    assert child.returncode is not None  # reaped by us, not left to init
    assert not Path(f"/proc/{child.pid}").exists()


def test_deferred_holds_the_first_signal_until_the_outermost_block_ends(handler: None) -> None:
    reached = []
    with pytest.raises(Interrupted) as caught, interrupts.deferred():
        with interrupts.deferred():
            os.kill(os.getpid(), signal.SIGTERM)
            reached.append("inner")
        reached.append("outer")
        os.kill(os.getpid(), signal.SIGTERM)
        reached.append("after a second signal")
    assert reached == ["inner", "outer", "after a second signal"]
    assert caught.value.signum == signal.SIGTERM
    # Outside a block the handler raises where it lands, and nothing is left pending.
    with pytest.raises(Interrupted):
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(1000):
            pass
    with interrupts.deferred():
        pass


def test_a_signal_deferred_during_a_failing_block_still_ends_the_run(handler: None) -> None:
    """The block's own error is kept as the context; the run still stops as the signal asked."""
    with pytest.raises(Interrupted) as caught, interrupts.deferred():
        os.kill(os.getpid(), signal.SIGTERM)
        raise OSError("exec failed")
    assert isinstance(caught.value.__context__, OSError)


def test_other_threads_do_not_defer(handler: None) -> None:
    """The handler only ever runs in the main thread; a block in another thread must not hold it off."""
    entered, release = threading.Event(), threading.Event()

    def worker() -> None:
        with interrupts.deferred():
            entered.set()
            release.wait(10)

    t = threading.Thread(target=worker)
    t.start()
    entered.wait(10)
    try:
        with pytest.raises(Interrupted):
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(1000):
                pass
    finally:
        release.set()
        t.join()


def test_capture_returns_the_status_the_output_and_the_stderr_tail() -> None:
    """pg_amcheck and `--version` run through it (and so through `running`, which reaps on a signal)."""
    rc, out, err = capture(["sh", "-c", "echo out; echo err >&2; exit 3"], env={"PATH": os.environ["PATH"]})
    assert (rc, out, err) == (3, "out\n", "err")
