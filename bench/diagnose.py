"""Why targets are missed: pgops varied only through its settings and the environment (the engine is
not changed), side by side on the same data, plus in-process measurements and an optional py-spy profile.

    .venv/bin/python bench/diagnose.py --scale 50 --repeat 3 --py-spy /tmp/pyspy-venv/bin/py-spy

py-spy is not a project dependency: install it into a throwaway venv (python3 -m venv /tmp/pyspy-venv &&
/tmp/pyspy-venv/bin/pip install py-spy). Results: bench/results/diagnose-<time>.json.
"""

from __future__ import annotations

import argparse
import collections
import datetime as dt
import hashlib
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.cluster import BINDIR  # noqa: E402
from bench.run import BUCKET, DB, PGOPS, Bench, bench_environment  # noqa: E402

IMPORTS = "import pgops.cli, pgops.backup, pgops.restore, pgops.storage.local, pgops.storage.s3, boto3, zstandard"
SPOOL_ONLY = """
import sys
from pgops.readback import download_verified
from pgops.restore import RestoreRequest, choose_backup
from pgops.settings import load_settings
from pgops.storage import open_storage
s = load_settings(); st = open_storage(s)
_, m = choose_backup(st, s, RestoreRequest(database="bench"))
with open(sys.argv[1], "wb") as f:
    download_verified(st, m, m.object("dump"), f.write)
"""
MiB = 1024 * 1024
LOCAL = {
    "zstd 3 (default)": {},
    "zstd 3, threads 1": {"PGOPS_COMPRESSION_THREADS": "1"},
    "zstd 1": {"PGOPS_COMPRESSION_LEVEL": "1"},
    "zstd 1, threads 1": {"PGOPS_COMPRESSION_LEVEL": "1", "PGOPS_COMPRESSION_THREADS": "1"},
    "no compression": {"PGOPS_COMPRESSION": "none"},
    "zstd 3, MALLOC_ARENA_MAX=1": {"MALLOC_ARENA_MAX": "1"},
}
S3 = {
    "zstd 3, 16 MiB parts (default)": {},
    "zstd 3, 8 MiB parts": {"PGOPS_S3_PART_SIZE": "8MiB"},
    "zstd 3, MALLOC_MMAP_THRESHOLD_=1MiB": {"MALLOC_MMAP_THRESHOLD_": str(MiB)},
    "zstd 1, 8 MiB parts, MALLOC_MMAP_THRESHOLD_=1MiB": {
        "PGOPS_COMPRESSION_LEVEL": "1",
        "PGOPS_S3_PART_SIZE": "8MiB",
        "MALLOC_MMAP_THRESHOLD_": str(MiB),
    },
}


def backups(b: Bench) -> None:
    b.measure("python: import pgops + boto3 + zstandard only", [sys.executable, "-c", IMPORTS], env=b.base_env())
    b.measure("pg_dump -Fc -Z0 > /dev/null (floor)", b.pg_dump("-Fc", "-Z0"))
    for label, extra in LOCAL.items():
        store = b.stores / "diag-local"
        b.pgops_backup(f"pgops → file://, {label}", b.pgops_env(DB, PGOPS_STORAGE_URL=f"file://{store}", **extra))
        shutil.rmtree(store)
    for label, extra in S3.items():
        b.pgops_backup(f"pgops → s3://, {label}", b.pgops_env(DB, **b.moto.env(BUCKET, "diag"), **extra), emulator=True)
        b.moto.empty(BUCKET, "diag")


def sizes(b: Bench) -> None:
    """Where zstd's edge over gzip comes from: the pgbench tables vs the mixed-entropy table, dumped apart."""
    for part, table in (("pgbench tables", "pgbench_*"), ("mixed table", "mixed")):
        dump = b.pg_dump("-Fc", "-Z0", "-t", table)
        for label, compress in (("gzip -6", ["gzip"]), ("zstd -3", ["zstd", "-q", "-3", "-T2"])):
            out = b.files / "part.out"
            b.measure(f"size: {part}, {label}", b.pipeline(dump, compress), stdout=out)
        b.measure(f"size: {part}, uncompressed", dump, stdout=out)
        out.unlink()


def restores(b: Bench, store: Path) -> None:
    pg_restore = [str(BINDIR / "pg_restore"), "--exit-on-error", "--jobs=2"]
    for label, file in (("written with -f (data offsets)", "z0.dump"), ("written to a pipe (no offsets)", "pipe.dump")):
        b.cluster.create_database("r_diag")
        b.measure(f"pg_restore -j2, file {label}", [*pg_restore, "-d", b.cluster.dsn("r_diag"), str(b.files / file)])
        b.check_restored("r_diag")
    env = b.pgops_env(DB, PGOPS_STORAGE_URL=f"file://{store}")
    b.measure("pgops spool phase only (verify + decompress to a file)",
              [sys.executable, "-c", SPOOL_ONLY, str(b.spool / "spool.pgc")], env=env)  # fmt: skip
    (b.spool / "spool.pgc").unlink()
    restore = [*PGOPS, "restore", "--database", DB, "--target-db", "r_diag"]
    b.measure("pgops restore --jobs 2 --spool-dir", [*restore, "--jobs", "2", "--spool-dir", str(b.spool)], env=env)
    b.check_restored("r_diag")
    b.measure("pgops restore, streaming", restore, env=env)
    b.check_restored("r_diag")


def in_process(b: Bench, store: Path) -> dict[str, Any]:
    """sha256 speed, and how much one 1 MiB read of the stored object inflates to in decompressobj()."""
    import zstandard

    buf = bytes(range(256)) * (256 * MiB // 256)
    t0 = time.perf_counter()
    hashlib.sha256(buf).hexdigest()
    sha_mbs = len(buf) / (time.perf_counter() - t0) / 1e6
    obj = next(store.rglob("dump.pgc.zst"))
    d = zstandard.ZstdDecompressor().decompressobj()
    sizes = []
    with obj.open("rb") as f:
        while chunk := f.read(MiB):
            sizes.append(len(d.decompress(chunk)))
    return {
        "sha256_MB_per_s": round(sha_mbs),
        "decompressobj_output_per_1MiB_read_MiB": {
            "max": round(max(sizes) / MiB, 1),
            "median": round(statistics.median(sizes) / MiB, 1),
        },
    }


def profile(b: Bench, py_spy: str, name: str, args: list[str], env: dict[str, str]) -> dict[str, Any]:
    """py-spy (idle samples included): where each thread of pgops spends its time, by innermost frame."""
    out = b.logs / f"{name}.pyspy.txt"
    subprocess.run([py_spy, "record", "--idle", "--threads", "--format", "raw", "-r", "200", "-o", str(out),
                    "--", *PGOPS, *args], env=env, check=True, capture_output=True)  # fmt: skip
    per_thread: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for line in out.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        thread = next((f for f in frames if f.startswith("thread")), "?")
        py_frames = [f for f in frames if "(" in f and not f.startswith(("thread", "process"))]
        per_thread[thread][py_frames[-1] if py_frames else "?"] += int(count)
    summary: dict[str, Any] = {}
    for thread, counter in sorted(per_thread.items(), key=lambda kv: -sum(kv[1].values())):
        total = sum(counter.values())
        summary[f"{thread} ({total} samples)"] = {k: f"{v * 100 / total:.0f}%" for k, v in counter.most_common(8)}
    return summary


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scale", type=int, default=50)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--py-spy", help="path to a py-spy binary (optional)")
    p.add_argument("--workdir", default=None)
    args = p.parse_args()
    started = dt.datetime.now(dt.UTC)
    extra: dict[str, Any] = {}
    with bench_environment(args.scale, args.workdir) as b:
        store = b.stores / "diag-restore"
        b.pgops_backup("setup: pgops backup for the restores", b.pgops_env(DB, PGOPS_STORAGE_URL=f"file://{store}"))
        with (b.files / "pipe.dump").open("wb") as f:  # pg_dump writes no data offsets into a pipe
            subprocess.run(b.pipeline(b.pg_dump("-Fc", "-Z0"), ["cat"]), stdout=f, check=True)
        subprocess.run([*b.pg_dump("-Fc", "-Z0"), "-f", str(b.files / "z0.dump")], check=True)
        b.samples.clear()
        for n in range(1, args.repeat + 1):
            b.run_no = n
            print(f"-- run {n}/{args.repeat}", flush=True)
            backups(b)
            restores(b, store)
        b.run_no = 0
        sizes(b)
        extra["in_process"] = in_process(b, store)
        if args.py_spy:
            env = b.pgops_env(DB, PGOPS_STORAGE_URL=f"file://{b.stores / 'prof'}")
            extra["py_spy_backup_local"] = profile(b, args.py_spy, "backup-local", ["backup"], env)
            env = b.pgops_env(DB, **b.moto.env(BUCKET, "prof"))
            extra["py_spy_backup_s3"] = profile(b, args.py_spy, "backup-s3", ["backup"], env)
            env = b.pgops_env(DB, PGOPS_STORAGE_URL=f"file://{store}")
            extra["py_spy_restore_stream"] = profile(
                b, args.py_spy, "restore", ["restore", "--database", DB, "--target-db", "r_prof"], env
            )
        samples = b.samples
    rows: dict[str, list[Any]] = collections.defaultdict(list)
    for s in samples:
        rows[s.name].append(s)
    print("\n| experiment | wall s (median) | CPU s client | CPU s server | peak RSS MiB (process) | stored MB |")
    print("|---|---|---|---|---|---|")
    for name, ss in rows.items():
        wall = statistics.median(s.wall for s in ss)
        cpu = statistics.median(s.cpu for s in ss)
        server = statistics.median(s.server_cpu for s in ss)
        rss = max((s.hwm_kib or 0) for s in ss) / 1024
        stored = ss[-1].extra.get("dump_bytes", ss[-1].stored_bytes)
        mb = f"{stored / 1e6:.1f}" if stored else "-"
        print(f"| {name} | {wall:.2f} | {cpu:.1f} | {server:.1f} | {rss:.1f} | {mb} |")
    print(json.dumps(extra, indent=2))
    out = REPO / "bench" / "results" / f"diagnose-{started.strftime('%Y%m%dT%H%M%SZ')}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"extra": extra, "samples": [vars(s) for s in samples]}, indent=2, default=str) + "\n")
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
