"""Run one command and measure it: wall time, CPU of the whole process tree it reaped, peak RSS.

- CPU and `maxrss` come from os.wait4 on the direct child. On Linux that rusage is RUSAGE_BOTH of the
  child: its own usage plus everything it waited for. So for `pgops backup` it covers pgops *and* the
  pg_dump it reaps, and `maxrss` is max(pgops, pg_dump), not a sum. For a `sh -c 'a | b'` pipeline it
  covers every stage.
  Caveat: that maxrss also counts the forked copy of this (bench) process before exec, so it is never
  below the bench's own RSS; it is kept in the JSON only.
- `hwm_kib` is the VmHWM (peak RSS) of the direct child *alone*, sampled from /proc every 20 ms (VmHWM
  restarts at exec): that is the number for "peak RSS of the pgops process". `tree_hwm_kib` is the
  largest VmHWM of any process in the child's tree (e.g. gzip in a pipeline, a pgBackRest worker).
- `server_cpu` is the CPU the PostgreSQL server spent meanwhile (postmaster, its live children, and
  the exited backends it reaped), which no client-side number includes.
- `aux_cpu` is the CPU of one extra process (the moto S3 emulator), which runs outside the tree.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclasses.dataclass
class Sample:
    name: str
    wall: float
    user: float
    sys: float
    maxrss_kib: int
    hwm_kib: int | None  # VmHWM of the direct child
    tree_hwm_kib: int | None  # largest VmHWM of any process in its tree
    server_cpu: float
    aux_cpu: float | None
    stored_bytes: int | None = None
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def cpu(self) -> float:
        return self.user + self.sys


class CommandFailed(RuntimeError):
    pass


def _stat_times(pid: int | str) -> tuple[int, float]:
    """(ppid, utime+stime+cutime+cstime in seconds) from /proc/PID/stat."""
    raw = Path(f"/proc/{pid}/stat").read_text()
    fields = raw[raw.rindex(")") + 2 :].split()  # fields[0] is field 3 (state)
    ticks = sum(int(fields[i]) for i in (11, 12, 13, 14))  # fields 14-17: utime stime cutime cstime
    return int(fields[1]), ticks / CLK_TCK


def tree_cpu(root_pid: int) -> float:
    """CPU seconds of root_pid (with its reaped children) plus its live direct children."""
    total = _stat_times(root_pid)[1]
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            ppid, secs = _stat_times(entry.name)
        except (OSError, ValueError, IndexError):
            continue  # exited meanwhile
        if ppid == root_pid:
            total += secs
    return total


def settle(root_pid: int, timeout: float = 10.0) -> None:
    """Wait until the server has no client backends left (so their CPU has landed in the postmaster's
    cutime, where tree_cpu finds it, instead of being lost between two /proc reads)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        busy = False
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                if _stat_times(entry.name)[0] != root_pid:
                    continue
                cmdline = Path(entry.path, "cmdline").read_bytes()
            except (OSError, ValueError, IndexError):
                continue
            if b"[local]" in cmdline or b"127.0.0.1" in cmdline or b"parallel worker" in cmdline:
                busy = True
                break
        if not busy:
            return
        time.sleep(0.02)


def process_cpu(pid: int) -> float:
    try:
        return _stat_times(pid)[1]
    except OSError:
        return 0.0


def vm_hwm_kib(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def children(pid: int) -> list[int]:
    kids: list[int] = []
    try:
        for task in os.scandir(f"/proc/{pid}/task"):
            kids += [int(k) for k in Path(task.path, "children").read_text().split()]
    except OSError:
        pass
    return kids


class _HwmSampler(threading.Thread):
    """Every 20 ms: VmHWM of the direct child, and the largest VmHWM of any process in its tree."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.direct: int | None = None
        self.largest: int | None = None
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            todo, seen = [self.pid], 0
            while todo and seen < 64:
                pid = todo.pop()
                seen += 1
                v = vm_hwm_kib(pid)
                if v is not None:
                    self.largest = max(self.largest or 0, v)
                    if pid == self.pid:
                        self.direct = max(self.direct or 0, v)
                todo += children(pid)
            self.stop.wait(0.02)


def run_measured(
    name: str,
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    server_pid: int,
    stdout: Path | None = None,
    aux_pid: int | None = None,
    log_dir: Path,
) -> tuple[Sample, str]:
    """Run argv to completion; return the sample and its stderr. Raise CommandFailed on a non-zero exit."""
    err_path = log_dir / f"{name}.stderr"
    out: IO[bytes] | int = open(stdout, "wb") if stdout else subprocess.DEVNULL  # noqa: SIM115
    try:
        with open(err_path, "wb") as err:
            settle(server_pid)
            server0 = tree_cpu(server_pid)
            aux0 = process_cpu(aux_pid) if aux_pid else None
            t0 = time.perf_counter()
            proc = subprocess.Popen(list(argv), env=dict(env), stdout=out, stderr=err, stdin=subprocess.DEVNULL)
            sampler = _HwmSampler(proc.pid)
            sampler.start()
            _, status, ru = os.wait4(proc.pid, 0)
            wall = time.perf_counter() - t0
            sampler.stop.set()
            sampler.join()
            proc.returncode = os.waitstatus_to_exitcode(status)
            settle(server_pid)
            server_cpu = tree_cpu(server_pid) - server0
            aux_cpu = process_cpu(aux_pid) - aux0 if aux_pid and aux0 is not None else None
    finally:
        if not isinstance(out, int):
            out.close()
    stderr = err_path.read_text(errors="replace")
    if proc.returncode != 0:
        tail = "\n".join(stderr.strip().splitlines()[-5:])
        raise CommandFailed(f"{name}: {argv[0]} exited {proc.returncode}:\n{tail}")
    sample = Sample(
        name=name,
        wall=wall,
        user=ru.ru_utime,
        sys=ru.ru_stime,
        maxrss_kib=ru.ru_maxrss,
        hwm_kib=sampler.direct,
        tree_hwm_kib=sampler.largest,
        server_cpu=server_cpu,
        aux_cpu=aux_cpu,
    )
    if stdout is not None:
        sample.stored_bytes = stdout.stat().st_size
    return sample, stderr


def tree_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
