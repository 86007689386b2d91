"""PgBouncer against direct connections, side by side in one run (issue 14):

    make bench BENCH_ARGS="--pooling --repeat 3"

pgbench with a new connection for every transaction (-C), the default TPC-B-like script, over TCP with SCRAM
(as an application that does not pool would connect), once straight to PostgreSQL and once through PgBouncer in
transaction mode with a pool of 20 server connections. Both use the same throwaway PostgreSQL 15 cluster and the
same pgbench data; the variants alternate within each round, so machine noise hits both alike.

Reported per variant (medians over the rounds): TPS including the reconnections, the mean connection time pgbench
measures, the median and p99 of the transaction latency from pgbench's per-transaction log (pgbench starts a
transaction's clock after its connection is made, so the connection cost shows in the TPS and the connection
time, not in the latency), the peak number of PostgreSQL server processes and their peak memory (the sum of
their proportional set sizes, sampled every 0.5 s), and PgBouncer's peak RSS.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import signal
import statistics
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.cluster import BINDIR, BenchCluster, as_postgres, chown_postgres, free_port
from bench.measure import children, vm_hwm_kib

USER, DB = "pooled_app", "pooling"
# A throwaway password for a throwaway cluster on loopback; pgbench reads it from PGPASSWORD.
PASSWORD = "pgops-bench-pooling"  # noqa: S105
POOL_SIZE = 20
PGBOUNCER = "/usr/sbin/pgbouncer"
VARIANTS = ("direct", "pgbouncer")
PGBOUNCER_INI = """[databases]
{db} = host=127.0.0.1 port={pg_port} dbname={db}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = scram-sha-256
auth_file = {root}/userlist.txt
pool_mode = transaction
default_pool_size = {pool}
max_client_conn = 1000
logfile = {root}/pgbouncer.log
pidfile = {root}/pgbouncer.pid
log_connections = 0
log_disconnections = 0
"""


@dataclasses.dataclass
class PoolSample:
    variant: str
    run: int
    clients: int
    seconds: int
    tps: float
    connection_ms: float
    latency_p50_ms: float
    latency_p99_ms: float
    transactions: int
    failed: int
    server_processes_peak: int
    server_pss_peak_bytes: int
    pgbouncer_rss_peak_bytes: int


def _pss(pid: int) -> int:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    return 0


class ServerSampler(threading.Thread):
    """Every 0.5 s: the postmaster's children (the server processes) and the sum of their PSS; the peaks."""

    def __init__(self, postmaster: int) -> None:
        super().__init__(daemon=True)
        self.postmaster, self.stop_event = postmaster, threading.Event()
        self.peak_processes = self.peak_pss = 0

    def run(self) -> None:
        while not self.stop_event.wait(0.5):
            pids = [self.postmaster, *children(self.postmaster)]
            self.peak_processes = max(self.peak_processes, len(pids) - 1)
            self.peak_pss = max(self.peak_pss, sum(_pss(p) for p in pids))


class PoolingBench:
    def __init__(self, root: Path, clients: int, seconds: int) -> None:
        self.root, self.clients, self.seconds = root, clients, seconds
        self.cluster = BenchCluster(root)
        self.bouncer_port = free_port()
        self.bouncer: subprocess.Popen[bytes] | None = None
        self.samples: list[PoolSample] = []

    def setup(self, scale: int) -> None:
        cluster = self.cluster
        cluster.init_and_start()
        # TCP on loopback with SCRAM, and room for one backend per direct client.
        with (cluster.data / "postgresql.conf").open("a") as f:
            f.write(f"listen_addresses = '127.0.0.1'\nmax_connections = {max(100, self.clients + 10)}\n")
        with (cluster.data / "pg_hba.conf").open("a") as f:
            f.write("host all all 127.0.0.1/32 scram-sha-256\n")
        restart = ["-w", "-m", "fast", "restart"]
        subprocess.run(
            # -l: the server must not inherit this pipe, or capture_output waits for it forever
            as_postgres([str(BINDIR / "pg_ctl"), "-D", str(cluster.data), "-l", str(self.root / "pg.log"), *restart]),
            check=True,
            capture_output=True,
        )
        cluster.execute(f"CREATE ROLE {USER} LOGIN PASSWORD '{PASSWORD}'")
        cluster.execute(f"CREATE DATABASE {DB} OWNER {USER}")
        init = [str(BINDIR / "pgbench"), "-i", "-q", "-s", str(scale)]
        subprocess.run(
            [*init, "-h", str(self.root), "-p", str(cluster.port), "-U", USER, DB],
            check=True,
            capture_output=True,
        )
        verifier = cluster.execute("SELECT rolpassword FROM pg_authid WHERE rolname = %s", params=(USER,))[0][0]
        assert str(verifier).startswith("SCRAM-SHA-256$"), "the role's password is not a SCRAM verifier"
        (self.root / "userlist.txt").write_text(f'"{USER}" "{verifier}"\n')
        (self.root / "pgbouncer.ini").write_text(
            PGBOUNCER_INI.format(db=DB, pg_port=cluster.port, port=self.bouncer_port, root=self.root, pool=POOL_SIZE)
        )
        for name in ("userlist.txt", "pgbouncer.ini"):
            chown_postgres(self.root / name)
        self.bouncer = subprocess.Popen(  # it logs to pgbouncer.log too
            as_postgres([PGBOUNCER, str(self.root / "pgbouncer.ini")]),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while self.pgbench("pgbouncer", ["-t", "1", "-c", "1"], check=False).returncode != 0:
            if time.monotonic() > deadline:
                raise RuntimeError(f"PgBouncer did not answer: {(self.root / 'pgbouncer.log').read_text()[-2000:]}")
            time.sleep(0.5)

    def close(self) -> None:
        if self.bouncer is not None:
            with contextlib.suppress(OSError, ValueError):
                os.kill(self.bouncer_pid(), signal.SIGTERM)
            self.bouncer.wait(timeout=30)
        self.cluster.stop()

    def bouncer_pid(self) -> int:
        return int((self.root / "pgbouncer.pid").read_text().split()[0])

    def pgbench(
        self, variant: str, extra: list[str], cwd: Path | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        port = self.cluster.port if variant == "direct" else self.bouncer_port
        argv = [str(BINDIR / "pgbench"), "-h", "127.0.0.1", "-p", str(port), "-U", USER, "-n", *extra, DB]
        env = {**os.environ, "PGPASSWORD": PASSWORD, "PGSSLMODE": "disable"}
        return subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, check=check, timeout=3600)

    def run(self, variant: str, run_no: int) -> PoolSample:
        logs = self.root / f"log-{variant}-{run_no}"
        logs.mkdir()
        self.cluster.quiesce()
        sampler = ServerSampler(self.cluster.postmaster_pid)
        sampler.start()
        extra = ["-C", "-c", str(self.clients), "-j", "2", "-T", str(self.seconds), "--log", "--log-prefix=tx"]
        try:
            result = self.pgbench(variant, extra, cwd=logs)
        finally:
            sampler.stop_event.set()
            sampler.join()
        out = result.stdout
        latencies = sorted(
            int(line.split()[2]) for f in logs.glob("tx.*") for line in f.read_text().splitlines() if line.strip()
        )
        q = statistics.quantiles(latencies, n=100)
        sample = PoolSample(
            variant=variant,
            run=run_no,
            clients=self.clients,
            seconds=self.seconds,
            tps=_number(out, r"tps = ([\d.]+)"),
            connection_ms=_number(out, r"average connection time = ([\d.]+) ms"),
            latency_p50_ms=q[49] / 1000,
            latency_p99_ms=q[98] / 1000,
            transactions=int(_number(out, r"number of transactions actually processed: (\d+)")),
            failed=int(_number(out, r"number of failed transactions: (\d+)", default=0.0)),
            server_processes_peak=sampler.peak_processes,
            server_pss_peak_bytes=sampler.peak_pss,
            pgbouncer_rss_peak_bytes=(vm_hwm_kib(self.bouncer_pid()) or 0) * 1024 if variant == "pgbouncer" else 0,
        )
        self.samples.append(sample)
        print(
            f"   {variant:<9} {sample.tps:9.0f} tps, connect {sample.connection_ms:6.2f} ms, "
            f"p99 {sample.latency_p99_ms:6.2f} ms, {sample.server_processes_peak} server processes",
            flush=True,
        )
        return sample


def _number(text: str, pattern: str, default: float | None = None) -> float:
    m = re.search(pattern, text)
    if m is None:
        if default is not None:
            return default
        raise RuntimeError(f"pgbench printed no {pattern!r}:\n{text[-2000:]}")
    return float(m.group(1))


@contextlib.contextmanager
def pooling_bench(root: Path, clients: int, seconds: int, scale: int) -> Iterator[PoolingBench]:
    bench = PoolingBench(root, clients, seconds)
    try:
        bench.setup(scale)
        yield bench
    finally:
        bench.close()


def summary(samples: list[PoolSample]) -> dict[str, dict[str, Any]]:
    rows: dict[str, dict[str, Any]] = {}
    for variant in VARIANTS:
        mine = [s for s in samples if s.variant == variant]
        row: dict[str, Any] = {"runs": len(mine)}
        for field in dataclasses.fields(PoolSample):
            if field.name not in ("variant", "run", "clients", "seconds"):
                row[field.name] = statistics.median(getattr(s, field.name) for s in mine)
        rows[variant] = row
    rows["pgbouncer"]["tps_ratio"] = rows["pgbouncer"]["tps"] / rows["direct"]["tps"]
    rows["pgbouncer"]["p99_ratio"] = rows["pgbouncer"]["latency_p99_ms"] / rows["direct"]["latency_p99_ms"]
    return rows


def markdown(rows: dict[str, dict[str, Any]], clients: int, seconds: int) -> str:
    mib = 1024 * 1024
    lines = [
        f"pgbench -C (a new connection per transaction), {clients} clients, {seconds} s per run, TCP + SCRAM; medians",
        "",
        "| variant | TPS | connection (ms) | latency p50 (ms) | latency p99 (ms) | server processes (peak) "
        "| server PSS (peak, MiB) | PgBouncer RSS (peak, MiB) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for variant in VARIANTS:
        r = rows[variant]
        bouncer = f"{r['pgbouncer_rss_peak_bytes'] / mib:.1f}" if variant == "pgbouncer" else "-"
        lines.append(
            f"| {variant} | {r['tps']:.0f} | {r['connection_ms']:.2f} | {r['latency_p50_ms']:.2f} "
            f"| {r['latency_p99_ms']:.2f} | {r['server_processes_peak']:.0f} | {r['server_pss_peak_bytes'] / mib:.0f} "
            f"| {bouncer} |"
        )
    p = rows["pgbouncer"]
    lines.append("")
    lines.append(f"PgBouncer / direct: TPS x{p['tps_ratio']:.2f}, p99 latency x{p['p99_ratio']:.2f}")
    return "\n".join(lines)
