"""scripts/smoke.sh, the machine check that scripts/bootstrap.sh runs last.

Each fault is caused for real inside a private mount namespace of the check alone (the machine is shared,
so nothing is uninstalled): a program podman needs is covered by a bind mount, either with /dev/null (not
executable: as good as not installed) or with one that fails. The check must then exit 1 with exactly
one line on stderr that names what is missing, and leave no container or network behind.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SMOKE = ROOT / "scripts" / "smoke.sh"
BOOTSTRAP = ROOT / "scripts" / "bootstrap.sh"
CONTAINERS_CONF = ROOT / "molecule" / "containers.conf"
HELPER_DIRS = ["/usr/local/libexec/podman", "/usr/local/lib/podman", "/usr/libexec/podman", "/usr/lib/podman"]

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("unshare") is None or shutil.which("podman") is None,
    reason="needs root, unshare and podman (scripts/bootstrap.sh installs podman)",
)


def env(**extra: str) -> dict[str, str]:
    return {**os.environ, "VENV": str(Path(sys.prefix)), "CONTAINERS_CONF": str(CONTAINERS_CONF), **extra}


def masked(argv: list[str], masks: dict[str, Path]) -> list[str]:
    """argv run in a private mount namespace where each key path is covered by its value."""
    binds = [f"mount --bind {shlex.quote(str(src))} {shlex.quote(dst)}" for dst, src in masks.items()]
    script = " && ".join([*binds, "exec " + shlex.join(argv)])
    return ["unshare", "--mount", "--propagation", "private", "sh", "-ec", script]


def helper(name: str) -> str:
    for d in HELPER_DIRS:
        if os.access(f"{d}/{name}", os.X_OK):
            return f"{d}/{name}"
    pytest.skip(f"podman's {name} is not installed")


def program(name: str) -> str:
    path = shutil.which(name, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")
    assert path, f"{name} is not installed"
    return os.path.realpath(path)


def leftovers(pid: int) -> list[str]:
    """Containers and networks that the check with this process id left behind."""
    prefix = f"pgops-smoke-{pid}-"
    out = []
    for argv in (
        ["podman", "ps", "-a", "--format", "{{.Names}}"],
        ["podman", "network", "ls", "--format", "{{.Name}}"],
    ):
        listed = subprocess.run(argv, env=env(), capture_output=True, text=True, check=True).stdout.split()
        out += [n for n in listed if n.startswith(prefix)]
    return out


def run(argv: list[str], **kw: str) -> tuple[int, str, str, int]:
    proc = subprocess.Popen(argv, env=env(**kw), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    stdout, stderr = proc.communicate(timeout=300)
    return proc.returncode, stdout, stderr, proc.pid


def assert_one_line(stderr: str, *names: str) -> None:
    lines = stderr.splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{stderr}"
    assert lines[0].startswith("smoke: FAILED: "), lines[0]
    for n in names:
        assert n in lines[0], f"{n!r} not named in: {lines[0]}"


@pytest.mark.slow
def test_passes_and_leaves_nothing() -> None:
    start = time.monotonic()
    rc, stdout, stderr, pid = run([str(SMOKE)])
    assert rc == 0, stderr
    assert stderr == ""
    assert stdout.startswith("smoke: ok in "), stdout
    assert "PostgreSQL 15." in stdout and "S3" in stdout and "GCS" in stdout, stdout
    assert time.monotonic() - start < 60
    assert leftovers(pid) == []


INSTALLED: dict[str, Callable[[], str]] = {
    "iptables": lambda: program("iptables"),
    "netavark": lambda: helper("netavark"),
    "aardvark-dns": lambda: helper("aardvark-dns"),
    "runc": lambda: program("runc"),
    "postgres": lambda: "/usr/lib/postgresql/15/bin/postgres",
}


@pytest.mark.parametrize(
    ("what", "names"),
    [
        ("iptables", ["iptables", "netavark needs it", "apt package iptables"]),
        ("netavark", ["netavark", "apt package netavark"]),
        ("aardvark-dns", ["aardvark-dns", "apt package aardvark-dns"]),
        ("runc", ["runc", "apt package runc"]),
        ("postgres", ["PostgreSQL 15", "postgresql-15"]),
    ],
)
def test_names_what_is_not_installed(what: str, names: list[str]) -> None:
    """Each program covered by /dev/null (not executable): one line naming it and its apt package."""
    rc, stdout, stderr, pid = run(masked([str(SMOKE)], {INSTALLED[what](): Path("/dev/null")}))
    assert rc == 1, (stdout, stderr)
    assert_one_line(stderr, *names)
    assert leftovers(pid) == []


def test_names_a_missing_containers_conf(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.conf"
    rc, _, stderr, _ = run([str(SMOKE)], CONTAINERS_CONF=str(missing))
    assert rc == 1
    assert_one_line(stderr, f"CONTAINERS_CONF={missing}", "molecule/containers.conf")


@pytest.mark.parametrize(
    ("line", "names"),
    [
        ('runtime = "runc"', ['runtime = "runc"', "crun"]),
        ("default_ulimits = []", ["default_ulimits = []", "ulimits"]),
    ],
)
def test_names_a_containers_conf_without_a_setting(tmp_path: Path, line: str, names: list[str]) -> None:
    conf = tmp_path / "containers.conf"
    text = CONTAINERS_CONF.read_text()
    assert line in text
    conf.write_text(text.replace(line, ""))
    rc, _, stderr, _ = run([str(SMOKE)], CONTAINERS_CONF=str(conf))
    assert rc == 1
    assert_one_line(stderr, f"CONTAINERS_CONF={conf}", *names)


@pytest.mark.slow
def test_a_failing_network_backend_is_named_by_the_live_check(tmp_path: Path) -> None:
    """iptables is there but fails: only starting a container on the network can find that out."""
    broken = tmp_path / "iptables"
    broken.write_text("#!/bin/sh\necho 'iptables: injected failure' >&2\nexit 4\n")
    broken.chmod(0o755)
    rc, stdout, stderr, pid = run(masked([str(SMOKE)], {program("iptables"): broken}))
    assert rc == 1, (stdout, stderr)
    assert_one_line(stderr, "podman run --network", "netavark", "iptables")
    assert leftovers(pid) == []


@pytest.mark.slow
def test_sigterm_mid_check_leaves_nothing() -> None:
    proc = subprocess.Popen([str(SMOKE)], env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not leftovers(proc.pid):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the check started no container within 60 s"
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=120)
    assert proc.returncode == 143
    assert leftovers(proc.pid) == []


def test_bootstrap_fails_with_the_smoke_line() -> None:
    """bootstrap ends with the check: a machine without a working iptables is not 'ok'."""
    rc, stdout, stderr, _ = run(masked([str(BOOTSTRAP)], {program("iptables"): Path("/dev/null")}), SMOKE="1")
    assert rc != 0, stdout
    assert "bootstrap: ok" not in stdout
    assert_one_line(stderr, "iptables")
    # The failed state is not remembered as passed: the next bootstrap checks again.
    assert not list((ROOT / ".cache").glob("smoke-ok-*"))
