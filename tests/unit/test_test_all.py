"""scripts/test-all.sh (the body of `make test`): each stage timed, the first failure stops the suite with its exit
status, and the summary always ends the output, with each Molecule scenario's time. Run against stub stages in a
copy of the script, so that it takes a second."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def stub(path: Path, body: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/usr/bin/env bash\n" + body + "\n")
    path.chmod(0o755)


def tree(tmp_path: Path, pytest_rc: int, images_rc: int = 0, lint_rc: int = 0) -> Path:
    shutil.copy(ROOT / "scripts" / "test-all.sh", tmp_path / "test-all.sh")
    (tmp_path / "scripts").mkdir()
    shutil.move(tmp_path / "test-all.sh", tmp_path / "scripts" / "test-all.sh")
    stub(tmp_path / "scripts" / "bootstrap.sh", "echo ran >> calls; echo bootstrap")
    # Lint, too, runs beside pytest: it waits for pytest to have started.
    (tmp_path / "Makefile").write_text(
        "lint-only:\n\t@for i in $$(seq 100); do [ -e pytest-started ] && break; sleep 0.1; done; "
        f"echo ran-lint >> calls; echo lint output; exit {lint_rc}\n"
    )
    # The image build starts before pytest and ends after it: it waits for pytest to have started.
    stub(
        tmp_path / "molecule" / "images" / "build.sh",
        "for i in $(seq 100); do [ -e pytest-started ] && break; sleep 0.1; done; "
        f"echo images-built >> images; echo image build output; exit {images_rc}",
    )
    # The call is recorded before pytest-started appears, so lint's line cannot come first (a CI run met that).
    stub(
        tmp_path / ".venv" / "bin" / "pytest",
        'echo "pytest $*" >> calls; touch pytest-started; sleep 0.3; seq 1 40; '
        + (
            # pytest's short summary when CI is set: each failure's whole message, here a long assertion diff
            "echo '=== short test summary info ==='; echo \"FAILED tests/a.py::t - assert '$(seq -s ' ' 1 200)\"; "
            "seq 1 30; echo 'FAILED tests/b.py::u - assert 1 == 2'; echo '=== 2 failed, 7 passed in 1.00s ==='; "
            if pytest_rc
            else ""
        )
        + f"exit {pytest_rc}",
    )
    stub(
        tmp_path / "scripts" / "molecule-all.sh",
        'echo molecule >> calls; printf "e2e\\t12\\tpassed\\nha\\t34\\tFAILED\\n" >> "$MOLECULE_TIMES"; '
        'printf "scenario ha:\\n  FAILED tests/test_failover.py::test_x - AssertionError\\n" '
        '>> "$MOLECULE_FAILURES"; exit 1',
    )
    return tmp_path


def run(root: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTEST_PARALLEL", "VENV")}
    return subprocess.run(
        [str(root / "scripts" / "test-all.sh")], env=env, capture_output=True, text=True, timeout=60, check=False
    )


def test_every_stage_runs_and_the_summary_names_each_stage_and_scenario(tmp_path: Path) -> None:
    root = tree(tmp_path, pytest_rc=0)
    done = run(root)
    assert done.returncode == 1, done.stdout + done.stderr  # the stub molecule-all failed
    calls = (root / "calls").read_text().splitlines()
    assert calls[0] == "ran" and calls[-1] == "molecule"
    # lint waited for pytest to start, so it ran beside it
    assert calls[1:3] == ["pytest -n 4 --dist loadfile --no-loadscope-reorder tests", "ran-lint"]
    summary, why = done.stdout.split("---- time per stage ----", 1)[1].split("test-all: ---- why it failed ----")
    lines = [line.split() for line in summary.strip().splitlines()]
    names = [line[1] for line in lines]
    assert names == ["setup", "pytest", "lint", "images", "molecule", "molecule", "molecule", "total"]
    assert lines[2][-1] == "passed" and lines[3][-1] == "passed"  # lint and the images, beside pytest
    assert (root / "images").read_text() == "images-built\n"
    assert "lint output" not in done.stdout  # shown only when it failed
    assert lines[4][-3:] == ["FAILED", "(exit", "1)"]
    assert lines[5][1:] == ["molecule", "e2e", "12", "s", "passed"]
    assert lines[6][1:3] == ["molecule", "ha"] and lines[6][-1] == "FAILED"
    # The end of the output says why, from scripts/molecule-all.sh's digest of the failed scenario.
    assert why.strip().splitlines() == [
        "test-all: scenario ha:",
        "test-all:   FAILED tests/test_failover.py::test_x - AssertionError",
    ]


def test_a_failed_stage_stops_the_suite_with_its_exit_status_and_still_prints_the_summary(tmp_path: Path) -> None:
    root = tree(tmp_path, pytest_rc=3)
    done = run(root)
    assert done.returncode == 3
    assert "molecule" not in (root / "calls").read_text()
    summary = done.stdout.split("---- time per stage ----", 1)[1]
    assert "pytest" in summary and "FAILED (exit 3)" in summary and "total" in summary
    assert "molecule" not in summary.split("test-all: ---- why it failed ----")[0]
    # The end of the output names each failed test (its message cut to one line) and pytest's result line, however
    # long the messages were.
    why = done.stdout.split("---- why it failed ----", 1)[1].strip().splitlines()
    assert why == [
        "test-all: " + ("FAILED tests/a.py::t - assert '" + " ".join(str(i) for i in range(1, 201)))[:300],
        "test-all: FAILED tests/b.py::u - assert 1 == 2",
        "test-all: === 2 failed, 7 passed in 1.00s ===",
    ]


def test_a_failed_image_build_stops_the_suite_before_molecule_with_its_output(tmp_path: Path) -> None:
    root = tree(tmp_path, pytest_rc=0, images_rc=4)
    done = run(root)
    assert done.returncode == 4
    assert "molecule" not in (root / "calls").read_text()
    assert "image build output" in done.stdout
    summary = done.stdout.split("---- time per stage ----", 1)[1]
    assert "images (built during pytest)" in summary and "FAILED (exit 4)" in summary
    assert done.stdout.split("---- why it failed ----", 1)[1].strip().splitlines() == ["test-all: image build output"]


def test_a_failed_lint_stops_the_suite_before_molecule_and_ends_with_its_output(tmp_path: Path) -> None:
    root = tree(tmp_path, pytest_rc=0, lint_rc=2)
    done = run(root)
    assert done.returncode == 2
    assert "molecule" not in (root / "calls").read_text()
    summary, why = done.stdout.split("---- time per stage ----", 1)[1].split("test-all: ---- why it failed ----")
    assert "lint (beside pytest)" in summary and "FAILED (exit 2)" in summary
    assert "test-all: lint output" in why.strip().splitlines()


def test_the_two_linter_groups_run_side_by_side(tmp_path: Path) -> None:
    """Each stub linter waits for the other to have started: they pass only if make runs them at once."""
    root = tree(tmp_path, pytest_rc=0)
    meet = "touch {me}; for i in $$(seq 100); do [ -e {other} ] && exit 0; sleep 0.1; done; exit 1"
    (root / "Makefile").write_text(
        "lint-only: lint-python lint-ansible\n"
        f"lint-python:\n\t@{meet.format(me='py', other='ans')}\n"
        f"lint-ansible:\n\t@{meet.format(me='ans', other='py')}\n"
    )
    done = run(root)
    summary = done.stdout.split("---- time per stage ----", 1)[1]
    (lint,) = [line.split() for line in summary.strip().splitlines() if line.split()[1] == "lint"]
    assert lint[-1] == "passed", done.stdout + done.stderr


def test_the_makefile_lint_only_is_the_two_groups() -> None:
    done = subprocess.run(
        ["make", "-n", "--no-print-directory", "lint-only"], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert "ruff check" in done.stdout and "ansible-lint --profile production" in done.stdout
    assert "promtool test rules" in done.stdout and "mypy --strict" in done.stdout


def test_the_failure_digest_keeps_failed_tests_and_tasks_and_drops_retries(tmp_path: Path) -> None:
    log = tmp_path / "ha.log"
    log.write_text(
        "CRITICAL 'molecule/default/molecule.yml' glob failed.  Exiting.\n"
        "TASK [patroni : Wait until the cluster has a leader] ***\n"
        "FAILED - RETRYING: [pgops-ha-1]: Wait until the cluster has a leader (60 retries left).\n"
        "ok: [pgops-ha-1]\n"
        'fatal: [pgops-ha-2]: FAILED! => {"msg": "' + "x" * 400 + '"}\n'
        "tests/test_failover.py ..F.\n"
        ">       assert lost == 0\n"
        "E       assert 2 == 0\n"
        "FAILED tests/test_failover.py::test_sync - assert 2 == 0\n"
        "ERROR tests/test_member.py::test_rebuild - TimeoutError\n"
    )
    done = subprocess.run(
        [str(ROOT / "scripts" / "failure-digest.sh"), "ha", str(log)], capture_output=True, text=True, check=True
    )
    lines = done.stdout.splitlines()
    assert lines[0] == "scenario ha:"
    assert lines[1].startswith('  fatal: [pgops-ha-2]: FAILED! => {"msg": "xxx') and len(lines[1]) == 302
    assert lines[2:] == [
        "  E       assert 2 == 0",
        "  FAILED tests/test_failover.py::test_sync - assert 2 == 0",
        "  ERROR tests/test_member.py::test_rebuild - TimeoutError",
    ]
