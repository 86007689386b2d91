"""docs/runbooks/high-availability.md, run as written on this scenario's cluster (tests/fixtures/runbooks.py has
the marker rules): each block on the member that leads when it runs, on a replica, on HAProxy's host, or on the
operator's workstation (this checkout, with the scenario's inventory). Shown output is checked as the runbooks'
conventions say. The placeholders of the runbook name this scenario's hosts."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from tests.fixtures.runbooks import Block, ha_blocks, missing_output

from conftest import MEMBERS, PROXY, cluster, leader, whole

testinfra_hosts = [f"podman://{MEMBERS[0]}"]
BLOCKS = ha_blocks()
PROJECT = Path(os.environ["MOLECULE_PROJECT_DIRECTORY"])


def _replica(sync_first: bool = False) -> str:
    """A running replica: the synchronous standby first (a switchover candidate in synchronous mode), or the
    asynchronous one first (a reinit then leaves the synchronous standby alone)."""
    members = sorted(cluster()["members"], key=lambda m: (m["role"] == "sync_standby") != sync_first)
    return str(next(m["name"] for m in members if m["role"] in ("replica", "sync_standby")))


def _substitute(text: str) -> str:
    for shown, real in (
        ("inventory/<env>", os.environ["MOLECULE_INVENTORY_FILE"]),
        ("<scope>", "pgops-ha"),
        ("<sync standby>", _replica(sync_first=True)),
        ("<replica>", _replica()),
        ("<member>", _replica()),
    ):
        text = text.replace(shown, real)
    return text


def _run(host: str, script: str) -> subprocess.CompletedProcess[str]:
    if host == "controller":
        env = {
            **os.environ,
            "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '/usr/bin:/bin')}",
            "PGOPS_DIST": str(PROJECT / "dist"),
            "ANSIBLE_FORCE_COLOR": "0",
            "ANSIBLE_NOCOLOR": "1",
        }
        argv, cwd = ["bash", "-c", script], PROJECT
    else:
        name = {"leader": leader(), "replica": _replica(), "proxy": PROXY}[host]
        assert name is not None, "no leader"
        argv, cwd, env = ["podman", "exec", name, "bash", "-c", script], None, None
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=900, check=False)


@pytest.mark.parametrize("block", BLOCKS, ids=[b.where for b in BLOCKS])
def test_runbook_block(block: Block) -> None:
    if block.not_run is not None:
        pytest.skip(block.not_run)
    assert block.host is not None
    whole(180)
    for command in block.commands():
        script = _substitute(command.text)
        result = _run(block.host, script)
        output = result.stdout + result.stderr
        print(f"\n[{block.where} on {block.host}] $ {script}\n{output.rstrip()}")
        assert result.returncode == block.rc, f"{block.where}: exit {result.returncode}\n{output[-3000:]}"
        missing = missing_output(command.shown, output)
        assert not missing, f"{block.where}: the runbook shows lines the real output lacks: {missing}\n{output[-3000:]}"
