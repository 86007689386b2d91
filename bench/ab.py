"""A/B: the same pgops command from two source trees, interleaved round by round on one bench cluster.

For "did this engine change pay?" without a whole `make bench`: make a worktree of the older commit, then

    git worktree add --detach /tmp/pgops-old <commit>
    .venv/bin/python bench/ab.py --old /tmp/pgops-old/src --new src --what backup,jobs2 --rounds 3

Each round runs the variants in alternating order (ABBA across rounds). Rows: the pg_dump floor and the
`pg_dump -Fc -Z0 | zstd -3 -T2` pipeline (with `backup`), `pgops backup` to file:// (`backup`), and
`pgops restore --jobs 2 --spool-dir` (`jobs2`) or streaming (`stream`) of one backup made by the new tree. Every
restore is checked (row counts) and dropped. Prints each row's median, rounds, client CPU and peak RSS. Not a test;
nothing here runs in `make test`. The numbers in bench/README.md marked "A/B" come from this.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.run import DB, PGOPS, Bench, bench_environment  # noqa: E402

WHAT = ("backup", "jobs2", "stream")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--old", type=Path, required=True, help="the older tree's src directory")
    p.add_argument("--new", type=Path, required=True, help="the newer tree's src directory")
    p.add_argument("--what", default="backup", help=f"comma-separated, from {', '.join(WHAT)} (default backup)")
    p.add_argument("--rounds", type=int, default=3, help="rounds (default 3)")
    p.add_argument("--scale", type=int, default=50, help="pgbench scale of the data set (default 50)")
    args = p.parse_args(argv)
    args.what = [w for w in args.what.split(",") if w]
    bad = [w for w in args.what if w not in WHAT]
    if bad:
        p.error(f"--what: {', '.join(bad)} is not one of {', '.join(WHAT)}")
    for side in ("old", "new"):
        src = getattr(args, side).resolve()
        if not (src / "pgops" / "__init__.py").is_file():
            p.error(f"--{side}: {src} holds no pgops package (give the tree's src directory)")
        setattr(args, side, src)
    return args


def one_round(b: Bench, trees: list[tuple[str, Path]], what: list[str]) -> None:
    if "backup" in what:
        z0 = b.pg_dump("-Fc", "-Z0")
        b.measure("pg_dump -Fc -Z0 > /dev/null (floor)", z0)
        b.measure("pg_dump -Fc -Z0 | zstd -3 -T2 > file", b.pipeline(z0, ["zstd", "-q", "-3", "-T2"]),
                  stdout=b.files / "ab.zst")  # fmt: skip
    restore_store = b.stores / "ab-restore"
    for name, src in trees:
        env = {"PYTHONPATH": str(src)}
        if "backup" in what:
            store = b.stores / f"ab-{name}"
            shutil.rmtree(store, ignore_errors=True)
            b.pgops_backup(
                f"pgops backup → file:// ({name})", b.pgops_env(DB, PGOPS_STORAGE_URL=f"file://{store}", **env)
            )
        restore = [*PGOPS, "restore", "--database", DB, "--target-db", "r_ab"]
        for label, extra in (("jobs2", ["--jobs", "2", "--spool-dir", str(b.spool)]), ("stream", [])):
            if label not in what:
                continue
            b.cluster.drop_database("r_ab")
            b.measure(f"pgops restore {label} ({name})", [*restore, *extra],
                      env=b.pgops_env(DB, PGOPS_STORAGE_URL=f"file://{restore_store}", **env))  # fmt: skip
            b.check_restored("r_ab")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    trees = [("old", args.old), ("new", args.new)]
    with bench_environment(args.scale) as b:
        if "jobs2" in args.what or "stream" in args.what:
            store = b.stores / "ab-restore"
            b.pgops_backup("seed backup (new tree)", b.pgops_env(DB, PGOPS_STORAGE_URL=f"file://{store}",
                                                                 PYTHONPATH=str(args.new)))  # fmt: skip
            b.samples.clear()
        for r in range(args.rounds):
            b.run_no = r + 1
            print(f"-- round {r + 1}/{args.rounds}", flush=True)
            one_round(b, trees if r % 2 == 0 else trees[::-1], args.what)
        rows: dict[str, list[tuple[float, float, float]]] = {}
        for s in b.samples:
            rows.setdefault(s.name, []).append((s.wall, s.cpu, (s.hwm_kib or s.maxrss_kib) / 1024))
        print()
        for name, v in rows.items():
            walls = [w for w, _, _ in v]
            print(
                f"{name:<48} median {statistics.median(walls):6.2f} s  rounds {[round(w, 2) for w in walls]}  "
                f"cpu {statistics.median(c for _, c, _ in v):5.2f} s  peak rss {max(m for _, _, m in v):6.1f} MiB"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
