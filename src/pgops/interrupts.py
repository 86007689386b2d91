"""SIGTERM, SIGINT and SIGHUP end a run: the handler raises Interrupted in the main thread, and the code it
unwinds aborts uploads and reaps children on the way out.

Some steps must not be cut in two. Starting a child is one: the child exists as soon as the fork returns, but
subprocess.Popen hands back its handle only later (after the exec is confirmed), so an exception raised in between
leaves a child that nobody kills or reaps (it outlived pgops as a zombie, or as a pg_dump still holding its
snapshot). Such a step runs inside `deferred()`: a signal that arrives meanwhile is remembered and raised when the
step ends, where the caller can clean up after it.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from types import FrameType

from pgops.errors import Interrupted


class _Deferral:
    depth = 0  # how many deferred() blocks the main thread is in
    pending: int | None = None  # the first signal that arrived in one


_state = _Deferral()


def on_signal(signum: int, frame: FrameType | None) -> None:
    """The handler for the signals that end a run (Python runs it in the main thread)."""
    if _state.depth:
        if _state.pending is None:
            _state.pending = signum
        return
    raise Interrupted(signum)


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Hold off the signals that end a run until the block ends, then raise Interrupted for the first of them.
    Only the main thread's blocks defer (the handler never interrupts another thread); blocks may nest."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _state.depth += 1
    try:
        yield
    finally:
        _state.depth -= 1
        if _state.depth == 0 and _state.pending is not None:
            signum, _state.pending = _state.pending, None
            raise Interrupted(signum)
