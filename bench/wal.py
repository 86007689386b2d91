"""WAL archiving under write load: what pgBackRest's archive-push costs a busy server, and the RPO pgops
reports while it runs.

    make bench BENCH_ARGS="--wal --scale 10 --repeat 3 --wal-seconds 60"

Each round runs the same pgbench write load (`-N`, the simple-update script: every transaction writes WAL)
three times on the bench cluster, in a rotating order, with a different `archive_command`:

- `/bin/true`: the server archives nothing (the baseline a paired ratio divides by);
- pgBackRest `archive-push`, synchronous: one pgbackrest process per segment, the archiver waits for it;
- pgBackRest `archive-push --archive-async`: the settings roles/pgbackrest writes (a spool directory and
  two processes that push ahead of the archiver).

While the load runs, a sampler reads `pg_stat_archiver` through pgops' own code (pgops.wal_archive, the one
behind `pgops status`) twice a second: the largest RPO in bytes and seconds it would have reported. After the
load, one `pg_switch_wal()` and the time until the archive holds every byte written ("drain"). The repository
is pgBackRest's posix type in the bench's temp directory (zst level 1, as for its backups).
"""

from __future__ import annotations

import dataclasses
import re
import statistics
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import psycopg

from bench.cluster import BINDIR, BenchCluster, PgBackRest, chown_postgres
from pgops.wal_archive import read_archiver

NONE = "no archiving (archive_command /bin/true)"
SYNC = "pgBackRest archive-push, synchronous"
ASYNC = "pgBackRest archive-push, async (spool, 2 processes)"
VARIANTS = (NONE, SYNC, ASYNC)
SAMPLE_EVERY = 0.5
DRAIN_TIMEOUT = 600.0
_TPS = re.compile(r"^tps = ([0-9.]+) \(without initial connection time\)", re.M)
_LATENCY = re.compile(r"^latency average = ([0-9.]+) ms", re.M)


@dataclasses.dataclass
class WalSample:
    name: str
    run: int
    tps: float
    latency_ms: float
    wal_bytes: int
    seconds: float
    max_rpo_bytes: int
    max_rpo_seconds: float
    drain_seconds: float
    archived: int
    failed: int

    @property
    def wal_mb_per_s(self) -> float:
        return self.wal_bytes / 1e6 / self.seconds


class WalBench:
    def __init__(self, root: Path, cluster: BenchCluster, pgbr: PgBackRest, dbname: str) -> None:
        self.cluster, self.pgbr, self.dbname = cluster, pgbr, dbname
        self.spool = root / "pgbackrest-spool"
        self.spool.mkdir(exist_ok=True)
        chown_postgres(self.spool)
        self.samples: list[WalSample] = []

    def command(self, variant: str) -> str:
        if variant == NONE:
            return "/bin/true"
        if variant == SYNC:
            return self.pgbr.archive_command()
        return self.pgbr.archive_command("--archive-async", f"--spool-path={self.spool}", "--process-max=2")

    def _conn(self) -> psycopg.Connection[Any]:
        return psycopg.connect(self.cluster.dsn("postgres"), autocommit=True)

    def _drain(self) -> float:
        """Seconds from a segment switch until the archive holds every byte written (RPO 0 bytes)."""
        t0 = time.monotonic()
        with self._conn() as c:
            c.execute("SELECT pg_switch_wal()")
            while True:
                a = read_archiver(c)
                if a.rpo_bytes == 0:
                    return time.monotonic() - t0
                if time.monotonic() - t0 > DRAIN_TIMEOUT:
                    raise RuntimeError(f"the archive did not catch up in {DRAIN_TIMEOUT:.0f} s: {a.to_json()}")
                time.sleep(0.1)

    def run(self, variant: str, run_no: int, seconds: int, clients: int) -> WalSample:
        self.cluster.set_archive_command(self.command(variant))
        self.cluster.quiesce()
        # Start with nothing waiting (whatever the previous variant or the checkpoint left) and the archiver's
        # clock just reset, so the RPO in seconds measures this load and not the sync before it.
        self._drain()
        with self._conn() as c:
            before = read_archiver(c)
        stop = threading.Event()
        peak_bytes, peak_seconds = [0], [0.0]

        def sample() -> None:
            with self._conn() as c:
                while not stop.wait(SAMPLE_EVERY):
                    a = read_archiver(c)
                    peak_bytes[0] = max(peak_bytes[0], a.rpo_bytes or 0)
                    peak_seconds[0] = max(peak_seconds[0], a.rpo_seconds or 0.0)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        t0 = time.monotonic()
        try:
            out = subprocess.run(
                [str(BINDIR / "pgbench"), "-n", "-N", "-c", str(clients), "-j", "2", "-T", str(seconds),
                 self.cluster.dsn(self.dbname)],  # the last argument, not -d: pgbench's -d is --debug
                check=True, capture_output=True, text=True,
            ).stdout  # fmt: skip
        finally:
            elapsed = time.monotonic() - t0
            stop.set()
            sampler.join()
        with self._conn() as c:
            end_lsn = read_archiver(c).current_lsn
        drain = self._drain()
        with self._conn() as c:
            after = read_archiver(c)
        tps, latency = _TPS.search(out), _LATENCY.search(out)
        if not tps or not latency or before.current_lsn is None or end_lsn is None:
            raise RuntimeError(f"pgbench printed no tps or latency:\n{out}")
        s = WalSample(
            name=variant,
            run=run_no,
            tps=float(tps.group(1)),
            latency_ms=float(latency.group(1)),
            wal_bytes=end_lsn - before.current_lsn,
            seconds=elapsed,
            max_rpo_bytes=peak_bytes[0],
            max_rpo_seconds=peak_seconds[0],
            drain_seconds=drain,
            archived=after.archived_count - before.archived_count,
            failed=after.failed_count - before.failed_count,
        )
        self.samples.append(s)
        print(
            f"  {variant:<52} {s.tps:8.0f} tps  {s.latency_ms:6.2f} ms  WAL {s.wal_mb_per_s:5.1f} MB/s  "
            f"max RPO {s.max_rpo_bytes / 1e6:6.1f} MB / {s.max_rpo_seconds:5.1f} s  drain {s.drain_seconds:5.1f} s"
            f"  failed {s.failed}",
            flush=True,
        )
        return s

    def round(self, run_no: int, seconds: int, clients: int) -> None:
        """Every variant once, the order rotated by round so that no variant always runs first or last."""
        k = (run_no - 1) % len(VARIANTS)
        for variant in VARIANTS[k:] + VARIANTS[:k]:
            self.run(variant, run_no, seconds, clients)


def summary(samples: list[WalSample]) -> dict[str, dict[str, Any]]:
    """Per variant: medians, and the TPS paired with the baseline of the same round (median of the ratios)."""
    base = {s.run: s.tps for s in samples if s.name == NONE}
    rows: dict[str, dict[str, Any]] = {}
    for name in VARIANTS:
        ss = [s for s in samples if s.name == name]
        if not ss:
            continue
        ratios = [s.tps / base[s.run] for s in ss if s.run in base]
        rows[name] = {
            "runs": len(ss),
            "tps": statistics.median(s.tps for s in ss),
            "tps_vs_none": statistics.median(ratios) if ratios else None,
            "latency_ms": statistics.median(s.latency_ms for s in ss),
            "wal_mb_per_s": statistics.median(s.wal_mb_per_s for s in ss),
            "max_rpo_mb": max(s.max_rpo_bytes for s in ss) / 1e6,
            "max_rpo_seconds": max(s.max_rpo_seconds for s in ss),
            "drain_seconds": statistics.median(s.drain_seconds for s in ss),
            "archived_segments": sum(s.archived for s in ss),
            "failed": sum(s.failed for s in ss),
        }
    return rows


def markdown(rows: dict[str, dict[str, Any]]) -> str:
    head = (
        "| archive_command | TPS (median) | TPS ÷ no archiving (paired) | latency ms | WAL MB/s | worst RPO seen "
        "(MB / s) | drain after the load (s) | segments archived | failures |\n|---|---|---|---|---|---|---|---|---|"
    )
    lines = [head]
    for name, r in rows.items():
        ratio = "-" if r["tps_vs_none"] is None else f"{r['tps_vs_none']:.2f}"
        lines.append(
            f"| {name} | {r['tps']:.0f} | {ratio} | {r['latency_ms']:.2f} | {r['wal_mb_per_s']:.1f} | "
            f"{r['max_rpo_mb']:.1f} / {r['max_rpo_seconds']:.1f} | {r['drain_seconds']:.1f} | "
            f"{r['archived_segments']} | {r['failed']} |"
        )
    return "\n".join(lines)
