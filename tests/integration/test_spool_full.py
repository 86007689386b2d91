"""A full spool disk during `restore --jobs N` is a clean exit 3 naming the spool directory, even for a dump
smaller than one block of the file system, and although the spool is written by a thread of its own (the
write-behind of pgops.pipeline), whose error must reach the restore as itself."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from pgops.errors import ExitCode
from tests.fixtures.engine import run_pgops
from tests.fixtures.pg import Cluster


@pytest.fixture
def full_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 64 KiB tmpfs (a real file system, mounted for this test) filled to the last byte."""
    mnt = tmp_path / "spool"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k,mode=0777", "tmpfs", str(mnt)], check=True)
    try:
        with (mnt / "filler").open("wb", buffering=0) as f:
            try:
                while True:
                    f.write(b"\0" * 4096)
            except OSError as e:
                assert e.errno == 28  # ENOSPC: not a byte is left
        with pytest.raises(OSError, match="No space left"), (mnt / "probe").open("wb", buffering=0) as f:
            f.write(b"x")
        (mnt / "probe").unlink()
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def test_spool_full_on_the_first_write_is_a_clean_storage_error(
    pg: Cluster, engine_env: dict[str, str], full_tmpfs: Path
) -> None:
    pg.create_database("tiny_spool")
    try:
        run_pgops(["backup", "--databases", "tiny_spool", "--no-globals"], engine_env, check=True)
        listed = json.loads(run_pgops(["list", "--json"], engine_env, check=True).stdout)["backups"]
        (dump,) = [o for o in listed[0]["objects"] if o["role"] == "dump"]
        # The whole dump is smaller than one block: the disk is full from its first byte on. (The spool used to
        # be buffered, which found this only when the file closed; it is written unbuffered now.)
        assert dump["raw_size"] < os.stat(full_tmpfs).st_blksize, dump

        before = pg.databases()
        result = run_pgops(
            [
                "restore",
                "--database",
                "tiny_spool",
                "--target-db",
                "tiny_spool_back",
                "--jobs",
                "2",
                "--spool-dir",
                str(full_tmpfs),
            ],
            engine_env,
        )
        assert result.returncode == ExitCode.STORAGE, result.stderr
        assert "Traceback" not in result.stderr and "error_type=bug" not in result.stderr
        errors = [line for line in result.stderr.splitlines() if "level=error" in line]
        assert len(errors) == 1, result.stderr
        assert "error_type=StorageError" in errors[0] and str(full_tmpfs) in errors[0] and "is full" in errors[0]
        assert sorted(p.name for p in full_tmpfs.iterdir()) == ["filler"]  # the spool file is removed
        assert pg.databases() == before  # neither the target nor a scratch database is left
    finally:
        pg.drop_database("tiny_spool")
