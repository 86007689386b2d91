"""Every command block of docs/runbooks/, run in runbook order on the scenario's hosts, its output checked.

One test per block (ids file:line), in the runbooks' order: each block starts from the state the blocks
before it left, as an operator following the runbooks would. A block's marker names its host and, where the
runbook starts from an incident, the setup step that causes it for real (setups.py). Placeholders and the
runbooks' host names are replaced by the scenario's; ids and times the runbook shows are bound to this run's
values as the blocks print them (a `--id` in a later command then names the real backup).

Each command's exit status is checked: the `exit=N` of a shown `event=failed` line, otherwise 0 unless the
shown output is an error of another tool (psql's `ERROR:`, `pg_dump: error:`), whose status varies. What
the test saw is written to $MOLECULE_EPHEMERAL_DIRECTORY/runbook-capture.md, the source for refreshing the
output the runbooks show.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
import setups
from tests.fixtures.runbooks import Block, all_blocks, missing_output, normalise

from conftest import ADDRESS, EPHEMERAL, INVENTORY, copy_inventory, run_commands, run_script

BLOCKS = all_blocks()
CAPTURE = EPHEMERAL / "runbook-capture.md"
CAPTURE_JSON = EPHEMERAL / "runbook-capture.json"  # molecule/runbooks/refresh.py reads it
TOKENS = re.compile(r"(?<!\d)\d{8}[Tt]\d{6}[Zz](-[0-9a-f]{6})?(?![0-9a-z])|pgops_(?:restore|verify)_[0-9a-f]{8}")
FAILED_EXIT = re.compile(r"event=failed command=\S+ exit=(\d+)")
ASSIGNMENT = re.compile(r"^[A-Z_][A-Z0-9_]*=\S")
TOOL_ERROR = re.compile(r"^(ERROR|FATAL|PANIC):|^\S+: error:|^\s+ERROR:", re.MULTILINE)

_state: dict[str, Any] = {"bindings": {}, "learned": {}, "inventory": False, "json": []}


NAMES = (("db-prod-1", "pgops-rb-db"), ("db-prod-2", "pgops-rb-restore"), ("db-scratch", "pgops-rb-pitr"))


def _static() -> list[tuple[str, str]]:
    pub = (EPHEMERAL / "age.pub").read_text().strip() if (EPHEMERAL / "age.pub").exists() else "age1"
    # `ssh <host>` from the operator's workstation: the scenario's key, as root, to the host's address.
    ssh = f"ssh -i {EPHEMERAL}/id_ed25519 -o UserKnownHostsFile=/dev/null -o StrictHostKeyChecking=no -o LogLevel=ERROR"
    return [
        ("ssh db-prod-1 ", f"{ssh} root@{ADDRESS['db']} "),
        ("ssh db-prod-2 ", f"{ssh} root@{ADDRESS['restore']} "),
        ("ssh db-scratch ", f"{ssh} root@{ADDRESS['scratch']} "),
        ("<lost host's PGOPS_TARGET>", "pgops-rb-db"),
        ("<lost host>", "pgops-rb-db"),
        ("<new host>", "pgops-rb-restore"),
        ("<host>", "pgops-rb-db"),
        ("<db>", "billing"),
        ("inventory/<env>", str(INVENTORY)),
        ("/path/to/dist/pgops", "/root/dist/pgops"),
        (
            "PGOPS_S3_REGION=eu-central-1",
            "PGOPS_S3_REGION=us-east-1\nPGOPS_S3_ENDPOINT_URL=http://10.213.51.20:9000\nPGOPS_S3_ADDRESSING_STYLE=path",
        ),
        ("PGOPS_S3_ACCESS_KEY_ID=...", "PGOPS_S3_ACCESS_KEY_ID=rb-access-key"),
        ("PGOPS_S3_SECRET_ACCESS_KEY=...", "PGOPS_S3_SECRET_ACCESS_KEY=rb-secret-key"),
        ("PGOPS_AGE_RECIPIENTS=age1...", f"PGOPS_AGE_RECIPIENTS={pub}"),
        *NAMES,
    ]


def _substitute(text: str) -> str:
    for shown, real in _static():
        text = text.replace(shown, real)
    bindings: dict[str, str] = _state["bindings"]
    for shown in sorted(bindings, key=len, reverse=True):
        text = text.replace(shown, bindings[shown])
    return text


def _learn(shown: tuple[str, ...], actual: str, where: tuple[str, int, int]) -> None:
    """Bind the ids a shown line names to the ids of the real line it matched (matched in order, as
    missing_output does, so that the k-th of several alike rows binds to the k-th real one). The first
    binding of an id wins: later output that shows the same id shows the same backup."""
    have = actual.split("\n")
    pos = 0
    for s in shown:
        norm = normalise(_substitute_names(s))
        for j in range(pos, len(have)):
            if normalise(have[j]) != norm:
                continue
            pos = j + 1
            tokens = [m.group(0) for m in TOKENS.finditer(s)]
            real = [m.group(0) for m in TOKENS.finditer(have[j])]
            if len(real) == len(tokens):
                for t, r in zip(tokens, real, strict=True):
                    if t not in _state["bindings"]:
                        _state["bindings"][t] = r
                        _state["learned"][t] = [*where, r]
            break


def _substitute_names(text: str) -> str:
    for shown, real in NAMES:
        text = text.replace(shown, real)
    return text


def _expected_rc(shown: tuple[str, ...]) -> int | None:
    text = "\n".join(shown)
    m = FAILED_EXIT.search(text)
    if m:
        return int(m.group(1))
    if TOOL_ERROR.search(text):
        return None
    return 0


def _capture(block: Block, lines: list[str]) -> None:
    with CAPTURE.open("a", encoding="utf-8") as f:
        f.write(f"\n## {block.where} ({block.host}{', setup ' + block.setup if block.setup else ''})\n\n")
        f.write("\n".join(lines) + "\n")


def _run_sh(block: Block, lines: list[str], problems: list[str]) -> None:
    assert block.host is not None
    script = "set -e\n" + _substitute(block.body)
    r = run_script(block.host, script)
    lines += ["```", f"$ {script}", r.output, f"(exit {r.rc}, {r.seconds:.1f} s)", "```"]
    if r.rc != block.rc:
        problems.append(f"exit {r.rc}, expected {block.rc}:\n{r.output[-4000:]}")


def _run_console(block: Block, lines: list[str], problems: list[str]) -> dict[str, Any]:
    assert block.host is not None
    record: dict[str, Any] = {"file": block.file, "line": block.line, "commands": []}
    prelude: list[str] = []  # `VAR=$(...)` commands, replayed before the later commands of the block
    for index, cmd in enumerate(block.commands()):
        # One at a time: an id a command prints is bound before the next command is substituted.
        text = _substitute(cmd.text)
        res = run_commands(block.host, [*prelude, text])[-1]
        if ASSIGNMENT.match(cmd.text):
            prelude.append(text)
        _learn(cmd.shown, res.output, (block.file, block.line, index))
        lines += ["```", f"$ {text}", res.output, f"(exit {res.rc}, {res.seconds:.1f} s)", "```"]
        want = _expected_rc(cmd.shown)
        if want is not None and res.rc != want:
            problems.append(f"`{cmd.text[:100]}` exited {res.rc}, expected {want}:\n{res.output[-3000:]}")
        missing = missing_output(tuple(_substitute_names(s) for s in cmd.shown), res.output)
        if missing:
            problems.append(
                f"`{cmd.text[:100]}`: the runbook shows lines the real output lacks:\n  "
                + "\n  ".join(missing)
                + f"\nreal output:\n{res.output[-3000:]}"
            )
        record["commands"].append(
            {"shown": list(cmd.shown), "actual": res.output, "missing": missing, "rc": res.rc}
            | {"seconds": round(res.seconds, 2)}
        )
    return record


@pytest.mark.parametrize("block", BLOCKS, ids=[b.where for b in BLOCKS])
def test_runbook_block(block: Block) -> None:
    if not _state["inventory"]:
        copy_inventory()
        CAPTURE.write_text("# What the runbooks' test saw\n", encoding="utf-8")
        _state["inventory"] = True
    if block.not_run is not None:
        pytest.skip(f"not run: {block.not_run}")
    if block.setup:
        _state["bindings"].update(setups.SETUPS[block.setup]())
    problems: list[str] = []
    lines: list[str] = []
    if block.lang == "sh":
        _run_sh(block, lines, problems)
    else:
        _state["json"].append(_run_console(block, lines, problems))
        CAPTURE_JSON.write_text(
            json.dumps({"blocks": _state["json"], "learned": _state["learned"]}, indent=1), encoding="utf-8"
        )
    _capture(block, lines + [f"PROBLEMS: {p}" for p in problems])
    assert not problems, f"{block.where}:\n" + "\n\n".join(problems)


def test_capture_was_written() -> None:
    assert CAPTURE.exists() and os.path.getsize(CAPTURE) > 0
    assert Path(CAPTURE).read_text(encoding="utf-8").count("\n## ") >= len([b for b in BLOCKS if b.not_run is None])
