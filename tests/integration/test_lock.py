"""The target lock when its file belongs to another user: root ran pgops by hand, then cron runs it as
postgres. The scheduled run must still lock (and still be refused while root's run holds it)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from pgops.lock import target_lock

LOCK_AS_POSTGRES = """
import sys
from pgops.errors import LockHeld
from pgops.lock import target_lock
try:
    with target_lock(sys.argv[1], "db1"):
        print("locked")
except LockHeld as e:
    print("held:", e)
"""


def _as_postgres(lock_dir: Path) -> str:
    # A copy of the source beside the lock directory: the checkout itself may be unreadable for postgres
    # (a clone under root's 0700 home, as on a fresh machine).
    src = lock_dir.parent / "src"
    if not src.exists():
        shutil.copytree(
            Path(__file__).resolve().parents[2] / "src" / "pgops",
            src / "pgops",
            ignore=shutil.ignore_patterns("__pycache__"),
        )
    result = subprocess.run(
        [
            shutil.which("runuser") or "/usr/sbin/runuser",
            "-u",
            "postgres",
            "--",
            "/usr/bin/python3",  # the venv's interpreter lives under root's home; the lock needs only stdlib
            "-c",
            LOCK_AS_POSTGRES,
            str(lock_dir),
        ],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(src)},
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as two users")
def test_lock_file_left_by_root_still_locks_for_postgres() -> None:
    with tempfile.TemporaryDirectory(prefix="pgops-lock-") as top:  # pytest's tmp_path is root-only (0700)
        lock_dir = Path(top) / "lock"
        lock_dir.mkdir()
        os.chmod(top, 0o755)  # noqa: S103 - postgres must reach the directory
        os.chmod(lock_dir, 0o1777)  # noqa: S103 - like /run/lock
        _root_then_postgres(lock_dir)


def _root_then_postgres(lock_dir: Path) -> None:
    with target_lock(str(lock_dir), "db1") as path:  # root's run by hand: the file is root's, 0644
        assert path.stat().st_uid == 0 and (path.stat().st_mode & 0o777) == 0o644
        assert _as_postgres(lock_dir).startswith("held: another pgops run")
    assert _as_postgres(lock_dir) == "locked"
