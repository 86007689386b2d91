"""roles/postgresql_backup/tasks/wheelhouse.yml, run for real on this machine (a local connection, into a scratch
directory): a host whose wheelhouse directory already is the controller's is left alone after one `find` (nothing
packed, copied or unpacked), and every other state is put back to the controller's files: a wheel edited, added,
removed, its mode or owner changed, the directory gone, a wheel rebuilt on the controller. Check mode changes
nothing on disk, also with the directory gone (its unpack once failed there)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.role_validation import run_role_validation

# The tasks set owner root (as on a real host, where they run with become).
pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the wheelhouse tasks chown to root")
PACK = "TASK [postgresql_backup : Pack the wheelhouse on the controller"


def _converge(tmp: Path, src: Path, dest: Path, *extra: str) -> dict[str, Any]:
    """One run: whether the pack-copy-unpack path was skipped, and the play's recap counts."""
    variables = {"__postgresql_backup_wheelhouse_src": str(src), "__postgresql_backup_wheelhouse_dest": str(dest)}
    result = run_role_validation(tmp, "postgresql_backup", variables, ("wheelhouse",), extra)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    lines = result.stdout.splitlines()
    after_pack = lines[next(i for i, line in enumerate(lines) if line.startswith(PACK)) :]
    outcome = next(line for line in after_pack if line.startswith(("ok:", "changed:", "skipping:")))
    (recap,) = [line for line in lines if line.startswith("localhost ") and "changed=" in line]
    return {"skipped": outcome.startswith("skipping:"), "changed": int(recap.split("changed=")[1].split()[0])}


def _tree(directory: Path) -> dict[str, tuple[bytes, int, int, int]]:
    """Every entry under the directory: its bytes, mode, owner and group."""
    out = {}
    for path in sorted(directory.rglob("*")):
        st = path.lstat()
        out[str(path.relative_to(directory))] = (
            path.read_bytes() if path.is_file() else b"",
            st.st_mode,
            st.st_uid,
            st.st_gid,
        )
    return out


def _replace_with_symlink(path: Path, target: Path) -> None:
    path.unlink()
    path.symlink_to(target)


@pytest.fixture
def wheelhouse(tmp_path: Path) -> tuple[Path, Path, Path]:
    src = tmp_path / "controller"
    src.mkdir()
    for name, body in {
        "pgops-0.1.0-py3-none-any.whl": b"pgops wheel",
        "six-1.17.0-py2.py3-none-any.whl": b"six wheel",
        "constraints.txt": b"six==1.17.0\n",
    }.items():
        (src / name).write_bytes(body)
        (src / name).chmod(0o644)
    run = tmp_path / "run"
    run.mkdir()
    return src, tmp_path / "host" / "wheels", run


def test_an_unchanged_wheelhouse_is_left_alone_and_every_drift_is_put_back(wheelhouse: tuple[Path, Path, Path]) -> None:
    src, dest, run = wheelhouse
    first = _converge(run, src, dest)
    assert first == {"skipped": False, "changed": first["changed"]} and first["changed"] > 0
    want = _tree(dest)
    assert {name: (body, mode & 0o7777, uid, gid) for name, (body, mode, uid, gid) in want.items()} == {
        name: ((src / name).read_bytes(), 0o644, 0, 0)
        for name in ("constraints.txt", "pgops-0.1.0-py3-none-any.whl", "six-1.17.0-py2.py3-none-any.whl")
    }
    archive = dest.parent / "wheels.tar"
    archive_mtime = archive.stat().st_mtime_ns

    # The same files: one find, nothing else runs, nothing changes (the archive is not even rewritten).
    assert _converge(run, src, dest) == {"skipped": True, "changed": 0}
    assert archive.stat().st_mtime_ns == archive_mtime

    six = dest / "six-1.17.0-py2.py3-none-any.whl"
    drifts: dict[str, Callable[[], object]] = {
        "a wheel edited on the host": lambda: six.write_bytes(b"tampered"),
        "a file added": lambda: (dest / "extra-1.0-py3-none-any.whl").write_bytes(b"x"),
        "a mode changed": lambda: six.chmod(0o600),
        "an owner changed": lambda: os.chown(six, 65534, 0),
        "a group changed": lambda: os.chown(six, 0, 65534),
        "a wheel removed": six.unlink,
        "a symlink in place of a file": lambda: _replace_with_symlink(six, src / six.name),
        "the directory gone": lambda: shutil.rmtree(dest),
    }
    for what, drift in drifts.items():
        drift()
        assert _converge(run, src, dest)["skipped"] is False, what
        assert _tree(dest) == want, what
    assert _converge(run, src, dest) == {"skipped": True, "changed": 0}
    # A directory is not compared (pip reads only the top level), and is left alone.
    (dest / "sub").mkdir()
    assert _converge(run, src, dest) == {"skipped": True, "changed": 0}
    assert (dest / "sub").is_dir()
    (dest / "sub").rmdir()

    # A wheel rebuilt on the controller (same name, new bytes) reaches the host, and the archive with it (the copy and
    # the unpack change).
    (src / "six-1.17.0-py2.py3-none-any.whl").write_bytes(b"six wheel, rebuilt")
    assert _converge(run, src, dest) == {"skipped": False, "changed": 2}
    assert six.read_bytes() == b"six wheel, rebuilt"
    assert archive.stat().st_mtime_ns != archive_mtime
    # A wheel the controller no longer ships leaves the host.
    (src / "six-1.17.0-py2.py3-none-any.whl").unlink()
    assert _converge(run, src, dest)["skipped"] is False
    assert sorted(p.name for p in dest.iterdir()) == ["constraints.txt", "pgops-0.1.0-py3-none-any.whl"]
    assert _converge(run, src, dest) == {"skipped": True, "changed": 0}


def test_check_mode_changes_nothing_on_disk_even_with_the_directory_gone(wheelhouse: tuple[Path, Path, Path]) -> None:
    src, dest, run = wheelhouse
    _converge(run, src, dest)
    want = _tree(dest.parent)
    (dest / "six-1.17.0-py2.py3-none-any.whl").write_bytes(b"tampered")
    tampered = _tree(dest.parent)
    assert _converge(run, src, dest, "--check")["changed"] > 0
    assert _tree(dest.parent) == tampered

    shutil.rmtree(dest)
    gone = _tree(dest.parent)
    assert _converge(run, src, dest, "--check")["changed"] > 0
    assert _tree(dest.parent) == gone
    _converge(run, src, dest)
    assert _tree(dest.parent) == want
