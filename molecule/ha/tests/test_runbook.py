"""docs/runbooks/high-availability.md, run as written on this scenario's cluster (tests/fixtures/runbooks.py has
the marker rules): each block on the member that leads when it runs, on a replica, on HAProxy's host, or on the
operator's workstation (this checkout, with the scenario's inventory). Shown output is checked as the runbooks'
conventions say. The placeholders of the runbook name this scenario's hosts."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.fixtures.runbooks import Block, ha_blocks, missing_output

from conftest import MEMBERS, run, substitute, whole

testinfra_hosts = [f"podman://{MEMBERS[0]}"]
# A block with setup=NAME needs a state that only a test file can make before it runs the block (a member's host
# wiped, for "Replace a lost member"); that test file runs it, with its own checks after.
SETUPS = {"lost-member": "test_member.py"}
# Blocks marked not-run carry their reason in the page (runbooks.py requires one); they are left out, not skipped.
BLOCKS = [b for b in ha_blocks() if b.setup is None and b.not_run is None]


def test_every_setup_block_is_run_by_its_test_file() -> None:
    for block in ha_blocks():
        if block.setup is not None:
            assert block.setup in SETUPS, f"{block.where}: setup={block.setup}; known: {sorted(SETUPS)}"
            runner = Path(__file__).with_name(SETUPS[block.setup]).read_text()
            assert f'"{block.setup}"' in runner, f"{block.where}: {SETUPS[block.setup]} does not run it"


@pytest.mark.parametrize("block", BLOCKS, ids=[b.where for b in BLOCKS])
def test_runbook_block(block: Block) -> None:
    assert block.host is not None
    whole(180)
    for command in block.commands():
        script = substitute(command.text)
        result = run(block.host, script)
        output = result.stdout + result.stderr
        print(f"\n[{block.where} on {block.host}] $ {script}\n{output.rstrip()}")
        assert result.returncode == block.rc, f"{block.where}: exit {result.returncode}\n{output[-3000:]}"
        missing = missing_output(command.shown, output)
        assert not missing, f"{block.where}: the runbook shows lines the real output lacks: {missing}\n{output[-3000:]}"
