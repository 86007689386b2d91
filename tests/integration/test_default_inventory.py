"""Forgetting `-i` is harmless (issue 11): ansible.cfg names no inventory, so a playbook run from the repository
root without one sees only the implicit localhost, matches no host and changes nothing.

The listing checks come first: on a checkout whose ansible.cfg still defaults to inventory/local they fail
without contacting any host, before the real runs below could reach the demo's containers."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
PLAYBOOKS = sorted(p.name for p in (ROOT / "playbooks").glob("*.yml"))


def ansible(*argv: str) -> subprocess.CompletedProcess[str]:
    """Run an ansible command from the repository root as an operator's shell would: no ANSIBLE_* overrides."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANSIBLE_", "MOLECULE_"))}
    env |= {"LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "PATH": f"{BIN}:{env.get('PATH', '/usr/bin:/bin')}"}
    return subprocess.run(
        [str(BIN / argv[0]), *argv[1:]], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False
    )


def recap_hosts(stdout: str) -> dict[str, str]:
    """The PLAY RECAP lines, by host."""
    recap = stdout.split("PLAY RECAP", 1)[1] if "PLAY RECAP" in stdout else ""
    return dict(re.findall(r"^(\S+)\s+:\s+(ok=.*)$", recap, re.MULTILINE))


def test_the_default_inventory_holds_no_host() -> None:
    listed = ansible("ansible-inventory", "--list")
    assert listed.returncode == 0, listed.stderr
    inventory = json.loads(listed.stdout)
    assert inventory["_meta"]["hostvars"] == {}
    hosts = {h for group in inventory.values() if isinstance(group, dict) for h in group.get("hosts", [])}
    assert hosts == set()


@pytest.mark.parametrize("playbook", PLAYBOOKS)
def test_no_play_matches_a_host_without_dash_i(playbook: str) -> None:
    listed = ansible("ansible-playbook", "--list-hosts", f"playbooks/{playbook}")
    assert listed.returncode == 0, listed.stderr
    # Each play: an indented "hosts (N):" line (a play's name may hold "hosts (" too), then one host a line, up to a
    # blank line.
    plays = [block.split("\n\n", 1)[0] for block in re.split(r"\n\s+hosts \(", listed.stdout)[1:]]
    assert len(plays) == listed.stdout.count("  play #"), listed.stdout
    for block in plays:
        names = block.split(":", 1)[1]
        # restore.yml (and verify.yml through it) check the request on the implicit localhost first.
        assert set(names.split()) <= {"localhost"}, listed.stdout


def test_site_yml_without_dash_i_changes_nothing_and_touches_no_host() -> None:
    run = ansible("ansible-playbook", "playbooks/site.yml")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "skipping: no hosts matched" in run.stdout
    assert recap_hosts(run.stdout) == {}


def test_a_drill_without_dash_i_stops_at_its_request_check() -> None:
    run = ansible("ansible-playbook", "playbooks/verify.yml", "-e", "pgops_restore_host=db-prod-1")
    assert run.returncode != 0
    refusal = "Give -e pgops_restore_host=<one inventory host> (got db-prod-1, which matches 0 hosts)"
    assert refusal in run.stdout + run.stderr
    recap = recap_hosts(run.stdout)
    assert list(recap) == ["localhost"]
    assert "changed=0" in recap["localhost"]
