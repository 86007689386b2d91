"""Retention: keep what the policy says, delete the rest, and never lose the last good backup.

    ../catalog.py   what is stored: one Backup per backup directory, with its state (good, failed,
                    incomplete, unreadable, orphan, foreign, other-cluster), shared with every command
    planner.py      the pure planner: keep/delete decisions with reasons (the rules are documented there)
    run.py          run_retention: lock, list once, plan, delete data first and manifests last; the report

The CLI calls `run_retention(settings, storage, dry_run=...)`, prints `render_plan_table(report)` or
`report.to_json()`, and exits with `report.exit_code` (OK, or LOCKED_OBJECTS when objects were locked).
A real run shares the per-target lock with `pgops backup` (LockHeld while a backup runs); a dry run
takes no lock.
"""

from __future__ import annotations

from pgops.retention.planner import Decision, Plan, Policy, plan
from pgops.retention.run import Outcome, RetentionReport, build_plan, render_plan_table, run_retention

__all__ = [
    "Decision",
    "Outcome",
    "Plan",
    "Policy",
    "RetentionReport",
    "build_plan",
    "plan",
    "render_plan_table",
    "run_retention",
]
