"""The runbooks' hosts for the verifier: run a script on one of them, as the operator would, and capture it.

A block runs as one bash script (variables such as `OLD=...` carry over between its commands), each command
followed by a line with its exit status, with stderr merged into stdout as on a terminal. Database hosts run
it through `podman exec`; the controller runs it here, from the project directory, like an operator's
checkout, against a copy of the scenario's inventory that the setup steps may add variables to.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import subprocess
import textwrap
import time
from pathlib import Path

CONTAINERS = {"db": "pgops-rb-db", "restore": "pgops-rb-restore", "store": "pgops-rb-store", "scratch": "pgops-rb-pitr"}
WORKDIR = {"db": "/var/lib/postgresql", "restore": "/root", "store": "/root", "scratch": "/root"}
# The hosts' addresses (molecule.yml), for the `ssh <host>` of a block run from the operator's workstation.
ADDRESS = {"db": "10.213.51.10", "restore": "10.213.51.30", "scratch": "10.213.51.40"}
PROJECT = Path(os.environ.get("MOLECULE_PROJECT_DIRECTORY", Path(__file__).resolve().parents[3]))
EPHEMERAL = Path(os.environ.get("MOLECULE_EPHEMERAL_DIRECTORY", "/nonexistent"))
INVENTORY = EPHEMERAL / "rb-inventory"
_END = "@@runbook-rc="


@dataclasses.dataclass
class Result:
    rc: int
    output: str
    seconds: float


def _controller_env() -> dict[str, str]:
    env = dict(os.environ)
    bindir = str(Path(os.sys.executable).parent)  # type: ignore[attr-defined]
    env["PATH"] = f"{bindir}:{env.get('PATH', '/usr/bin:/bin')}"
    env["PGOPS_DIST"] = str(PROJECT / "dist")
    env["ANSIBLE_HOST_KEY_CHECKING"] = "false"
    env["ANSIBLE_FORCE_COLOR"] = "0"
    env["ANSIBLE_NOCOLOR"] = "1"
    return env


def run_script(host: str, script: str, timeout: float = 900) -> Result:
    """Run a bash script on a host; merged output and exit status."""
    start = time.monotonic()
    if host == "controller":
        argv = ["bash", "-c", script]
        cwd: Path | None = PROJECT
        env: dict[str, str] | None = _controller_env()
    else:
        argv = ["podman", "exec", "-w", WORKDIR[host], CONTAINERS[host], "bash", "-c", script]
        cwd, env = None, None
    p = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    return Result(p.returncode, p.stdout + p.stderr, time.monotonic() - start)


def must(host: str, script: str) -> str:
    """A setup step: it must succeed, or the test stops with its output."""
    script = textwrap.dedent(script)
    r = run_script(host, "set -eu\n" + script)
    assert r.rc == 0, f"setup on {host} failed (exit {r.rc}):\n{script}\n---\n{r.output[-3000:]}"
    return r.output


def run_commands(host: str, commands: list[str]) -> list[Result]:
    """Run a console block's commands in one shell; one Result per command."""
    parts = ["exec 2>&1"]
    for c in commands:
        parts.append(c)
        parts.append(f'printf \'\\n{_END}%s@@%s\\n\' "$?" "$(date +%s.%N)"')
    start = time.time()
    r = run_script(host, "\n".join(parts))
    out: list[Result] = []
    rest = r.output
    prev = start
    for _ in commands:
        m = re.search(re.escape(_END) + r"(\d+)@@([0-9.]+)\n", rest)
        if not m:
            out.append(Result(-1, rest + f"\n(the block's shell ended with exit {r.rc})", 0.0))
            break
        text = rest[: m.start()].rstrip("\n")
        end = float(m.group(2))
        out.append(Result(int(m.group(1)), text, end - prev))
        prev = end
        rest = rest[m.end() :]
    return out


def copy_inventory() -> Path:
    """The scenario's inventory, copied with its group_vars and host_vars (links resolved)."""
    src = EPHEMERAL / "inventory"
    if INVENTORY.exists():
        shutil.rmtree(INVENTORY)
    shutil.copytree(src, INVENTORY, symlinks=False)
    return INVENTORY


def podman_cp(src: str, host: str, dest: str) -> None:
    subprocess.run(["podman", "cp", src, f"{CONTAINERS[host]}:{dest}"], check=True, capture_output=True)
