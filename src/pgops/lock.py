"""A per-target lock so that cron overlaps never run two backups (or a backup and retention) at once."""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from pgops.errors import ConfigError, LockHeld


@contextlib.contextmanager
def target_lock(lock_dir: str, target: str) -> Iterator[Path]:
    """flock(LOCK_EX | LOCK_NB) on <lock_dir>/pgops-<target>.lock. Released by the kernel if we die."""
    directory = Path(lock_dir)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"PGOPS_LOCK_DIR={lock_dir!r} cannot be created: {e.strerror}") from None
    path = directory / f"pgops-{target}.lock"
    flags = os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
    writable = True
    try:
        fd = os.open(path, os.O_RDWR | flags, 0o644)
    except PermissionError:
        # Another user made the file (root running pgops by hand, say): flock works on a read-only
        # descriptor too, so the scheduled run still locks; it just cannot record its pid.
        writable = False
        try:
            fd = os.open(path, os.O_RDONLY | flags, 0o644)
        except OSError as e:
            raise ConfigError(f"PGOPS_LOCK_DIR={lock_dir!r}: cannot open {path.name}: {e.strerror}") from None
    except OSError as e:
        raise ConfigError(f"PGOPS_LOCK_DIR={lock_dir!r}: cannot open {path.name}: {e.strerror}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            raise LockHeld(f"another pgops run (pid {holder}) holds the lock for target {target!r} ({path})") from None
        if writable:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield path
    finally:
        os.close(fd)
