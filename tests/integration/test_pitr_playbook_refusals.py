"""playbooks/pitr-restore.yml refuses a bad or dangerous request before any play touches a host: the request
is checked on the controller, and an old primary that cannot be fenced stops the play before the restore host
is even looked at. Run with ansible-playbook against a throwaway inventory whose hosts do not exist."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.fixtures.role_validation import PLAYBOOK_BIN, ROOT

# 192.0.2.0/24 is TEST-NET-1: nothing answers there.
INVENTORY: dict[str, Any] = {
    "all": {
        "vars": {"ansible_ssh_common_args": "-o ConnectTimeout=3 -o StrictHostKeyChecking=no"},
        "hosts": {
            "db-a": {"ansible_host": "192.0.2.10", "pgbackrest_stanza": "a", "postgresql_archive_mode": True},
            "db-b": {"ansible_host": "192.0.2.14", "pgbackrest_stanza": "b", "postgresql_archive_mode": True},
            "new-a": {"ansible_host": "192.0.2.11", "pgbackrest_stanza": "a", "postgresql_archive_mode": True},
            "drill-a": {"ansible_host": "192.0.2.12", "pgbackrest_stanza": "a", "postgresql_backup_scheduler": "none"},
            "plain": {"ansible_host": "192.0.2.13"},
        },
    }
}


def playbook(tmp_path: Path, inventory: dict[str, Any], *extra: str) -> str:
    """ansible-playbook pitr-restore.yml against `inventory`; it must fail. Returns its output."""
    (tmp_path / "inventory.yml").write_text(yaml.safe_dump(inventory))
    env = {**os.environ, "ANSIBLE_NOCOLOR": "1", "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg")}
    argv = [str(PLAYBOOK_BIN), "-i", "inventory.yml", str(ROOT / "playbooks" / "pitr-restore.yml"), *extra]
    result = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300, check=False)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output[-3000:]
    return output


def run(tmp_path: Path, *extra: str) -> str:
    output = playbook(tmp_path, INVENTORY, *extra)
    # Nothing reached the restore host: neither the look at its clusters nor the provisioning ran.
    assert "PLAY [Look at the host" not in output and "PLAY [Provision" not in output, output[-3000:]
    return output


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ([], "Give -e pgops_pitr_host=<one inventory host>"),
        (["-e", "pgops_pitr_host=nosuchhost"], "Give -e pgops_pitr_host=<one inventory host>"),
        (["-e", "pgops_pitr_host=new-a", "-e", "pgops_pitr_to=yesterday"], "pgops_pitr_to=yesterday"),
        (
            ["-e", "pgops_pitr_host=new-a", "-e", "pgops_pitr_time=2026-12-03T10:00:00Z", "-e", "pgops_pitr_name=x"],
            "pgops_pitr_time, pgops_pitr_name",
        ),
        (["-e", "pgops_pitr_host=new-a", "-e", "pgops_pitr_replace=perhaps"], "pgops_pitr_replace"),
        (["-e", "pgops_pitr_host=new-a", "-e", "pgops_pitr_drill=true"], "is not a drill host"),
        (["-e", "pgops_pitr_host=plain"], "plain has no pgbackrest_stanza"),
    ],
)
def test_a_bad_request_is_refused_on_the_controller(tmp_path: Path, extra: list[str], expected: str) -> None:
    output = run(tmp_path, *extra)
    assert expected in output, output[-3000:]
    assert "Nothing was changed" in output
    assert "TASK [Reach the old primary" not in output


def test_an_old_primary_that_cannot_be_fenced_stops_the_restore(tmp_path: Path) -> None:
    output = run(tmp_path, "-e", "pgops_pitr_host=new-a")
    assert "db-a (stanza a) cannot be reached, so it cannot be fenced" in output, output[-3000:]
    assert "pgops_pitr_old_primary_lost=true" in output and "Nothing was restored" in output
    # Only hosts that archive into the stanza are fenced: not its drill host, not another stanza's primary.
    assert "drill-a" not in output and "db-b" not in output, output[-3000:]


def test_one_old_primary_left_unfenced_stops_the_restore_even_when_another_was(tmp_path: Path) -> None:
    """db-a is confirmed lost in the inventory (host var); db-c, another old primary of the stanza, cannot be
    reached and is not: the fence play fails only for db-c, and the restore host's play must not go on."""
    inventory = {"all": {"vars": INVENTORY["all"]["vars"], "hosts": dict(INVENTORY["all"]["hosts"])}}
    hosts = inventory["all"]["hosts"]
    hosts["db-a"] = {**hosts["db-a"], "pgops_pitr_old_primary_lost": True}
    hosts["db-c"] = {"ansible_host": "192.0.2.15", "pgbackrest_stanza": "a", "postgresql_archive_mode": True}
    output = playbook(tmp_path, inventory, "-e", "pgops_pitr_host=new-a")
    assert "db-c (stanza a) cannot be reached" in output and "db-a (stanza a) cannot be reached" not in output
    assert "db-c: not fenced" in output and "Nothing was restored" in output, output[-3000:]
    assert "PLAY [Provision" not in output and "TASK [Find data directories" not in output


def test_a_drill_onto_a_host_that_archives_into_the_stanza_is_refused(tmp_path: Path) -> None:
    """A host that takes no backups but archives (postgresql_archive_mode true) is a primary of the stanza, not a
    drill host: a real restore would fence it, and a drill would replace its cluster."""
    inventory = {"all": {"vars": INVENTORY["all"]["vars"], "hosts": dict(INVENTORY["all"]["hosts"])}}
    hosts = inventory["all"]["hosts"]
    hosts["drill-a"] = {**hosts["drill-a"], "postgresql_archive_mode": True}
    output = playbook(tmp_path, inventory, "-e", "pgops_pitr_host=drill-a", "-e", "pgops_pitr_drill=true")
    assert "pgops_pitr_host=drill-a is not a drill host" in output, output[-3000:]
    assert "postgresql_archive_mode: false" in output and "Nothing was changed" in output
    assert "PLAY [Look at the host" not in output and "TASK [Reach the old primary" not in output


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["-e", "pgops_pitr_drill=false"], "verify.yml drills onto pgops_pitr_drill_host=drill-a only"),
        (["-e", "pgops_pitr_host=db-a"], "verify.yml drills onto pgops_pitr_drill_host=drill-a only"),
        ([], "Reach the old primary"),  # never asked: the drill fences nothing (checked below)
    ],
)
def test_the_pitr_drill_of_verify_yml_is_always_a_drill(tmp_path: Path, extra: list[str], expected: str) -> None:
    """verify.yml -e pgops_pitr_drill_host=...: a request that would turn the drill into a takeover is refused on
    the controller; a good one fences nothing and goes on to the drill host (unreachable here, so it fails there)."""
    (tmp_path / "inventory.yml").write_text(yaml.safe_dump(INVENTORY))
    env = {**os.environ, "ANSIBLE_NOCOLOR": "1", "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg")}
    argv = [str(PLAYBOOK_BIN), "-i", "inventory.yml", str(ROOT / "playbooks" / "verify.yml")]
    argv += ["-e", "pgops_pitr_drill_host=drill-a", *extra]
    result = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300, check=False)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output[-3000:]
    # The logical drill is not run when only the PITR drill is asked for.
    assert "Give -e pgops_restore_host" not in output, output[-3000:]
    if extra:
        assert expected in output and "Nothing was changed" in output, output[-3000:]
        assert "PLAY [Look at the host" not in output, output[-3000:]
    else:
        assert "TASK [Reach the old primary" not in output, output[-3000:]
        assert "PLAY [Look at the host before anything changes there]" in output, output[-3000:]
        assert "drill-a" in output and "UNREACHABLE" in output, output[-3000:]
