"""Refresh the output the runbooks show from what molecule/runbooks captured (runbook-capture.json).

    python molecule/runbooks/refresh.py $MOLECULE_EPHEMERAL_DIRECTORY/runbook-capture.json

For each command whose shown output the real output did not contain, the shown output becomes the real one:
the scenario's host names mapped back to the runbooks' (db-prod-1, db-prod-2), `event=progress` lines left
out, and long output cut to its first and last lines around `...`, as the runbooks' conventions say. Output
that matched is left as it is. An id a later command uses (`--id`, a `_pgops_old_` name) that the test
bound from output that is now refreshed becomes the id that output shows. Run it on
the same revision of the runbooks that the capture ran; review the diff.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.fixtures.runbooks import RUNBOOK_DIR, parse

NAMES = (("pgops-rb-restore", "db-prod-2"), ("pgops-rb-db", "db-prod-1"), ("pgops-rb-pitr", "db-scratch"))
KEEP = 7  # lines kept at each end of long output


def _shown(actual: str, inventory: str) -> list[str]:
    lines = [x for x in actual.split("\n") if x.strip() and "event=progress" not in x]
    out = []
    for line in lines:
        shown = line.replace(inventory, "inventory/<env>")
        for real, doc in NAMES:
            shown = shown.replace(real, doc)
        out.append(shown)
    return out if len(out) <= 2 * KEEP + 1 else [*out[:KEEP], "...", *out[-KEEP:]]


def main(capture_path: str) -> int:
    capture = json.loads(Path(capture_path).read_text(encoding="utf-8"))
    inventory = str(Path(capture_path).parent / "rb-inventory")
    records = {(r["file"], r["line"]): r for r in capture["blocks"]}
    refreshed = {
        (r["file"], r["line"], i) for r in capture["blocks"] for i, c in enumerate(r["commands"]) if c["missing"]
    }
    # token -> the id the refreshed output shows, for tokens bound from output that gets refreshed
    renamed = {t: v[3] for t, v in capture["learned"].items() if (v[0], v[1], v[2]) in refreshed}
    for name in {r["file"] for r in capture["blocks"]}:
        path = RUNBOOK_DIR / name
        text = path.read_text(encoding="utf-8").split("\n")
        for block in sorted(parse(path), key=lambda b: b.line, reverse=True):
            rec = records.get((name, block.line))
            if rec is None or block.lang != "console" or len(rec["commands"]) != len(block.commands()):
                continue
            indent = text[block.line - 1][: len(text[block.line - 1]) - len(text[block.line - 1].lstrip())]
            body: list[str] = []
            for cmd, res in zip(block.commands(), rec["commands"], strict=True):
                command = cmd.text
                for token in sorted(renamed, key=len, reverse=True):
                    command = command.replace(token, renamed[token])
                first, *rest = command.split("\n")
                body += [f"$ {first}", *rest]
                body += _shown(res["actual"], inventory) if res["missing"] else list(cmd.shown)
            end = block.line
            while text[end].strip() != "```":
                end += 1
            text[block.line : end] = [(indent + x) if x else x for x in body]
        path.write_text("\n".join(text), encoding="utf-8")
        print(f"{path}: refreshed")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1]))
