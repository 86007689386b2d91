"""Child processes: started without a shell, stderr kept (bounded), always reaped, exit status always checked."""

from __future__ import annotations

import collections
import contextlib
import fcntl
import logging
import re
import signal
import subprocess
import threading
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO

from pgops import interrupts
from pgops.errors import PostgresError

log = logging.getLogger(__name__)

_STDERR_KEEP = 64 * 1024


class Child:
    """A running child with its stderr drained in the background into a bounded tail buffer."""

    def __init__(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str],
        stdin: int | IO[bytes] | None = None,
        stdout: int | IO[bytes] | None = None,
    ) -> None:
        self.name = Path(argv[0]).name
        self._tail: collections.deque[bytes] = collections.deque()
        self._tail_len = 0
        # The child exists before Popen returns its handle: a signal in between would leave it unreaped, so
        # signals wait until the handle is ours and the stderr drain runs (interrupts.deferred).
        try:
            with interrupts.deferred():
                self.proc = subprocess.Popen(
                    list(argv),
                    stdin=stdin,
                    stdout=stdout,
                    stderr=subprocess.PIPE,
                    env=dict(env),
                    start_new_session=False,
                )
                self._drain = threading.Thread(target=self._read_stderr, name=f"{self.name}-stderr", daemon=True)
                self._drain.start()
        except BaseException:
            # Interrupted (raised as the block ends), or the drain thread could not start: stop and reap the child
            # now, or it outlives us.
            if hasattr(self, "proc"):
                self.proc.kill()
                self.proc.wait()
            raise

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in iter(self.proc.stderr.readline, b""):
            self._tail.append(line)
            self._tail_len += len(line)
            while self._tail_len > _STDERR_KEEP and len(self._tail) > 1:
                self._tail_len -= len(self._tail.popleft())

    @property
    def stderr_text(self) -> str:
        return b"".join(self._tail).decode("utf-8", "replace").strip()

    def wait(self) -> int:
        rc = self.proc.wait()
        self._drain.join(timeout=5)
        return rc

    def check(self, what: str) -> None:
        """Wait, then raise PostgresError with the stderr tail if the child did not exit 0."""
        rc = self.wait()
        if rc != 0:
            how = f"was killed by signal {-rc}" if rc < 0 else f"exited {rc}"
            raise PostgresError(f"{self.name} {how} during {what}: {error_summary(self.stderr_text)}")

    def kill(self) -> None:
        """Stop the child now and reap it. Safe to call on a finished child."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        self.wait()


PIPE_SIZE = 1024 * 1024  # Linux's default pipe-max-size: the most an unprivileged process may ask for


def widen_pipe(stream: IO[bytes], size: int = PIPE_SIZE) -> None:
    """Let the child write up to `size` bytes ahead of our reads, instead of the default 64 KiB, so it
    waits less while we hash, compress and write. Best effort: the default pipe works, only slower."""
    with contextlib.suppress(OSError):
        fcntl.fcntl(stream.fileno(), fcntl.F_SETPIPE_SZ, size)


@contextlib.contextmanager
def running(
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    stdin: int | IO[bytes] | None = None,
    stdout: int | IO[bytes] | None = None,
) -> Iterator[Child]:
    """Start a child; on any exception (including signals) kill and reap it before propagating."""
    log.debug("exec %s", argv[0])
    child: Child | None = None
    try:
        # Made inside the try, so that a signal between the start and the yield still kills and reaps it.
        child = Child(argv, env=env, stdin=stdin, stdout=stdout)
        yield child
    except BaseException:
        if child is not None:
            child.kill()
        raise
    finally:
        if child is not None and child.proc.poll() is None and child.proc.returncode is None:
            # The body returned without waiting: that is a bug in the caller, never leave a zombie.
            child.kill()


def capture(argv: Sequence[str], *, env: Mapping[str, str]) -> tuple[int, str, str]:
    """Run a child to its end through `running` (so a signal never leaves it behind): its exit status, its
    stdout and the tail of its stderr, as text."""
    with running(argv, env=env, stdout=subprocess.PIPE) as child:
        assert child.proc.stdout is not None
        out = child.proc.stdout.read().decode("utf-8", "replace")
        rc = child.wait()
    return rc, out, child.stderr_text


_ERROR_LINE = re.compile(r"\b(error|fatal|panic)\b", re.IGNORECASE)


def error_summary(stderr: str) -> str:
    """The lines that say what went wrong, not the last one. pg_dump ends with "detail: Command was: COPY
    ...", while the cause ("ERROR: invalid page in block 0") is on an earlier line."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    if not lines:
        return "no error output"
    errors = [line for line in lines if _ERROR_LINE.search(line) and "Command was:" not in line]
    return " | ".join(errors[:3]) if errors else lines[-1]
