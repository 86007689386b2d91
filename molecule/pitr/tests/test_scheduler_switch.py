"""Switching a host's scheduler (the cron/systemd clean-up of roles/postgresql_backup and roles/pgbackrest,
tasks/schedule.yml): db13 runs its jobs on systemd timers. Switched to cron, every unit the two roles wrote is
stopped, disabled and removed, a unit of someone else's beside them is left alone, and cron takes over; switched
back, the cron files go and the same timers run again.

Runs last (file order): the other modules need db13's timers, and it puts them back.
"""

from __future__ import annotations

import os
from typing import Any

from tests.fixtures.instances import ansible_playbook

from conftest import DB13, host_of

PLAYBOOK = os.path.join(os.environ.get("MOLECULE_SCENARIO_DIRECTORY", ""), "schedule-switch.yml")
UNITS = "/etc/systemd/system"
# Someone else's unit under a name like ours: the roles remove their own unit names only.
DECOY = f"{UNITS}/pgops-nightly-report.timer"
CRON = ("/etc/cron.d/pgops", "/etc/cron.d/pgops-pgbackrest")


def units(host: Any, where: str = UNITS) -> list[str]:
    out = host.check_output(f"find {where} -maxdepth 1 -name 'pgops-*' -printf '%f\\n'")
    return sorted(out.split())


def active(host: Any, unit: str) -> str:
    return str(host.run(f"systemctl is-active {unit}").stdout.strip())


def switch(*extra: str) -> None:
    run = ansible_playbook(PLAYBOOK, "--limit", DB13, *extra)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]


def test_switching_from_timers_to_cron_and_back_moves_every_job_and_touches_no_other_unit() -> None:
    db13 = host_of(DB13)
    ours = units(db13)
    timers = [u for u in ours if u.endswith(".timer")]
    assert "pgops-backup.timer" in timers and "pgops-pgbackrest-full.timer" in timers, ours
    running = {t for t in timers if active(db13, t) == "active"}
    assert "pgops-backup.timer" in running and "pgops-pgbackrest-full.timer" in running
    assert not any(db13.file(f).exists for f in CRON)
    db13.check_output(f"printf '[Timer]\\nOnCalendar=*-02-30 00:00:00\\n' > {DECOY}")
    try:
        switch("-e", "postgresql_backup_scheduler=cron")
        assert units(db13) == ["pgops-nightly-report.timer"]
        assert units(db13, f"{UNITS}/timers.target.wants") == []
        assert {t: active(db13, t) for t in running} == dict.fromkeys(running, "inactive")
        assert "pgops backup" in db13.file(CRON[0]).content_string
        assert "physical-backup --type full" in db13.file(CRON[1]).content_string
    finally:
        db13.run(f"rm -f {DECOY}")
        switch()
    assert units(db13) == ours
    assert not any(db13.file(f).exists for f in CRON)
    assert {t for t in timers if active(db13, t) == "active"} == running
