"""Fault injection for tests that must crash the real process at a named step.

`_PGOPS_KILL_AT=<step>` in the environment makes pgops SIGKILL itself when it reaches that step, which no
handler, finally block or atexit hook can intercept: the state left behind is exactly what a power cut
or an OOM kill at that point leaves. The variable deliberately lacks the PGOPS_ prefix (it is no setting)
and is for tests only (tests/integration/test_replace_swap.py).
"""

from __future__ import annotations

import os
import signal

KILL_AT_ENV = "_PGOPS_KILL_AT"


def crash_point(step: str) -> None:
    if os.environ.get(KILL_AT_ENV) == step:
        os.kill(os.getpid(), signal.SIGKILL)
