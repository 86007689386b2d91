#!/usr/bin/python3
"""Judge a candidate PostgreSQL configuration file without ever touching the live one.

roles/postgresql installs this file as /usr/local/libexec/pgops/pgops-validate. It runs with the host's
python3 and its standard library only. Ansible's `validate:` calls it with the candidate's temporary path;
validate.yml passes "-" and the candidate on stdin to ask before anything is written.

  pgops-validate hba VERSION CLUSTER CANDIDATE
      initdb a tiny scratch cluster in a private directory, and ask a single-user backend of it, started
      with hba_file pointing at a private copy of CANDIDATE, for pg_hba_file_rules. Every error is reported
      with its line, and so is a file without entries (the postmaster refuses both). The live server is never
      contacted and the live pg_hba.conf is never written, so neither a frozen server nor a killed validator
      can leave a candidate live. Relative `@file` and `include` references resolve against the live
      configuration directory, as they will once the file is installed. hostssl lines are judged as with
      ssl = on, which the role always sets.
  pgops-validate conf VERSION CLUSTER DROPIN CANDIDATE
      Copy postgresql.conf and conf.d/*.conf into the private directory with CANDIDATE as conf.d/DROPIN,
      and let the server binary parse them (postgres -C data_directory).
  pgops-validate sync PATH...
      fsync each file and its directory, or a directory itself.

An approved CANDIDATE file is fsynced before the exit: Ansible then renames data that is already on disk
(write, fsync, rename). Every step has a deadline (--timeout). SIGTERM, SIGHUP and SIGINT stop the step,
kill its processes and remove the private directory. Children get SIGKILL when this process dies, so a
SIGKILL leaves at most the private directory, which the next run removes.

Exit status: 0 approved; 2 bad arguments; 5 PostgreSQL rejected the candidate (its messages on stderr);
6 the candidate could not be checked (a step failed or timed out), so it is refused; 128 + N after signal N.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import fcntl
import json
import logging
import os
import pwd
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

log = logging.getLogger("pgops-validate")

EXIT_OK, EXIT_USAGE, EXIT_REJECTED, EXIT_UNCHECKED = 0, 2, 5, 6
RUN_PREFIX = "pgops-validate."
LOCK_NAME = "lock"
# A run directory whose lock file does not exist yet is being created, unless it is this old (killed then).
UNLOCKED_RUN_GRACE = 600.0
HBA_NAME = "pg_hba.conf"
HBA_ROW = "pgops-hba-row:"
HBA_DONE = "pgops-hba-done:"
# One statement, so that the done marker proves the view was read completely. Rows as hex-encoded JSON:
# the columns differ between versions (file_name and rule_number since 16), and hex survives COPY's escaping.
HBA_QUERY = (
    "COPY (SELECT 'pgops-hba-row:' || encode(convert_to(to_jsonb(h)::text, 'UTF8'), 'hex') FROM pg_hba_file_rules h"
    " UNION ALL SELECT 'pgops-hba-done:') TO STDOUT\n"
)
# A scratch cluster as small and quick as initdb makes it; nothing in it is kept.
INITDB_OPTIONS = ("-U", "postgres", "-A", "trust", "-E", "UTF8", "--locale=C", "--no-sync", "--no-instructions")
CHILD_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C"}
HANDLED_SIGNALS = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)
PR_SET_PDEATHSIG = 1
_LIBC = ctypes.CDLL(None, use_errno=True)


class Rejected(Exception):
    """PostgreSQL refused the candidate."""


class Unchecked(Exception):
    """The candidate could not be judged, so it is refused."""


class Interrupted(BaseException):  # like KeyboardInterrupt: no `except Exception` may swallow it
    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _on_signal(signum: int, _frame: FrameType | None) -> None:
    for s in HANDLED_SIGNALS:  # one interruption is enough; the cleanup it starts must not be cut short
        signal.signal(s, signal.SIG_IGN)
    raise Interrupted(signum)


@dataclass(frozen=True)
class Host:
    """Where the cluster's files are, and as whom its binaries run."""

    version: str
    confdir: Path
    bindir: Path
    tmpdir: Path
    deadline: float
    user: pwd.struct_passwd | None  # None: run the binaries as this process's own user (not root)

    def own(self, path: Path, mode: int) -> None:
        """Give PATH to the server's OS user (when running as root) with MODE."""
        if self.user is not None:
            os.chown(path, self.user.pw_uid, self.user.pw_gid)
        path.chmod(mode)

    def share(self, path: Path, mode: int) -> None:
        """Keep PATH ours, readable by the server's OS user through its group."""
        if self.user is not None:
            os.chown(path, -1, self.user.pw_gid)
        path.chmod(mode)

    def run(self, argv: Sequence[str], what: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
        """Run a server binary within the deadline. Any exception, a signal's included, kills it first."""
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise Unchecked(f"no time left for {what} (--timeout)")
        creds: dict[str, object] = {}
        if self.user is not None:
            u = self.user
            creds = {"user": u.pw_uid, "group": u.pw_gid, "extra_groups": os.getgrouplist(u.pw_name, u.pw_gid)}
        with subprocess.Popen(  # type: ignore[call-overload]
            list(argv),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd="/",
            env=CHILD_ENV,
            start_new_session=True,  # its own group: killed as one, and a terminal's ^C reaches only us
            preexec_fn=_die_with(os.getpid()),  # noqa: PLW1509 - single-threaded; prctl must run in the child
            **creds,
        ) as proc:
            try:
                out, err = proc.communicate(stdin, timeout=remaining)
            except BaseException as exc:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                if isinstance(exc, subprocess.TimeoutExpired):
                    raise Unchecked(f"{what} did not finish within the deadline (--timeout)") from None
                raise
        return subprocess.CompletedProcess(list(argv), proc.returncode, out, err)


def _die_with(parent: int) -> Callable[[], None]:
    def arm() -> None:  # runs in the child, after it became the server's OS user (which clears the setting)
        _LIBC.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl: nobody would ever send the signal
            os.kill(os.getpid(), signal.SIGKILL)

    return arm


# ---------------------------------------------------------------------------------------- private runs


@contextlib.contextmanager
def private_run(host: Host) -> Iterator[Path]:
    """A private directory, locked for this process's life, removed on the way out (a SIGKILL leaves it)."""
    remove_stale_runs(host.tmpdir)
    run = Path(tempfile.mkdtemp(prefix=RUN_PREFIX, dir=host.tmpdir))
    lock = -1
    try:
        lock = os.open(run / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        fcntl.flock(lock, fcntl.LOCK_EX)  # released by the kernel however this process ends
        host.share(run, 0o750)
        yield run
    finally:
        shutil.rmtree(run, ignore_errors=True)
        if lock >= 0:
            os.close(lock)


def remove_stale_runs(tmpdir: Path) -> None:
    """Remove the private directories of validators that were killed, and anything still running in them."""
    for run in tmpdir.glob(RUN_PREFIX + "*"):
        with _claim_if_stale(run) as stale:
            if stale:
                _kill_processes_under(run)
                shutil.rmtree(run, ignore_errors=True)
                log.info("removed %s, left by a validator that was killed", run)


@contextlib.contextmanager
def _claim_if_stale(run: Path) -> Iterator[bool]:
    try:
        st = run.lstat()
    except FileNotFoundError:
        yield False
        return
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
        yield False  # not one of ours: never touched
        return
    try:
        fd = os.open(run / LOCK_NAME, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        yield time.time() - st.st_mtime > UNLOCKED_RUN_GRACE
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False  # its validator is alive
            return
        yield True
    finally:
        os.close(fd)


def _kill_processes_under(run: Path) -> None:
    needle = os.fsencode(run)
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            args = (proc / "cmdline").read_bytes().split(b"\0")
            if any(needle in a for a in args):
                os.kill(int(proc.name), signal.SIGKILL)
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue


# ---------------------------------------------------------------------------------------- the checks


def check_hba(host: Host, candidate: bytes) -> None:
    with private_run(host) as run:
        hba_dir = run / "hba"
        hba_dir.mkdir()
        host.share(hba_dir, 0o750)
        for entry in sorted(host.confdir.iterdir()):  # relative @file / include references resolve as when live
            if entry.name != HBA_NAME:
                (hba_dir / entry.name).symlink_to(entry)
        hba = hba_dir / HBA_NAME
        hba.write_bytes(candidate)
        host.share(hba, 0o640)
        data = run / "data"
        data.mkdir()
        host.own(data, 0o700)
        bindir = host.bindir
        initdb = host.run(
            [str(bindir / "initdb"), "-D", str(data), *INITDB_OPTIONS],
            "initdb of the scratch cluster",
        )
        if initdb.returncode != 0:
            raise Unchecked(f"initdb of the scratch cluster failed: {_tail(initdb.stderr)}")
        settings = [f"hba_file={hba}", "ssl=on", "fsync=off", "log_checkpoints=off", "jit=off"]
        judge = host.run(
            [
                str(bindir / "postgres"),
                "--single",
                "-D",
                str(data),
                *(a for s in settings for a in ("-c", s)),
                "postgres",
            ],
            "reading pg_hba_file_rules in the scratch cluster",
            stdin=HBA_QUERY.encode(),
        )
        rows, done = _parse_hba_rows(judge.stdout)
        if not done:
            raise Unchecked(f"pg_hba_file_rules could not be read: {_tail(judge.stderr)}")
        problems = [_hba_problem(r, hba) for r in rows if r.get("error")]
        if not problems and not rows:
            problems = [f'configuration file "{host.confdir / HBA_NAME}" contains no entries']
        problems = [p.replace(f"{hba_dir}/", f"{host.confdir}/") for p in problems]
    if problems:
        raise Rejected(f"pg_hba.conf candidate rejected by PostgreSQL {host.version}:\n" + "\n".join(problems))


def _parse_hba_rows(stdout: bytes) -> tuple[list[dict[str, object]], bool]:
    rows: list[dict[str, object]] = []
    done = False
    for line in stdout.decode(errors="replace").splitlines():
        if HBA_DONE in line:
            done = True
        elif (i := line.find(HBA_ROW)) >= 0:
            rows.append(json.loads(bytes.fromhex(line[i + len(HBA_ROW) :].strip()).decode()))
    return rows, done


def _hba_problem(row: dict[str, object], hba: Path) -> str:
    file_name = row.get("file_name")
    where = f"line {row.get('line_number')}"
    if file_name and file_name != str(hba):
        where = f"{file_name} {where}"
    return f"{where}: {row['error']}"


LOG_PREFIX = re.compile(r"^[0-9-]* [0-9:.]* [A-Z]* \[[0-9]*\] ", re.M)
INCLUDE_CONF_D = re.compile(r"^\s*include_dir\s*=?\s*'conf\.d'", re.M)


def check_conf(host: Host, dropin: str, candidate: bytes) -> None:
    with private_run(host) as run:
        stage = run / "stage"
        (stage / "conf.d").mkdir(parents=True)
        conf = (host.confdir / "postgresql.conf").read_text()
        if not INCLUDE_CONF_D.search(conf):
            conf += "\ninclude_dir = 'conf.d'\n"
        (stage / "postgresql.conf").write_text(conf)
        for f in sorted((host.confdir / "conf.d").glob("*.conf")):
            shutil.copyfile(f, stage / "conf.d" / f.name)
        (stage / "conf.d" / dropin).write_bytes(candidate)
        for p in [stage, stage / "conf.d", *stage.rglob("*.conf")]:
            host.own(p, 0o700 if p.is_dir() else 0o600)
        parse = host.run(
            [str(host.bindir / "postgres"), f"--config-file={stage / 'postgresql.conf'}", "-C", "data_directory"],
            "postgres -C on the staged configuration",
        )
    if parse.returncode != 0:
        out = LOG_PREFIX.sub("", (parse.stdout + parse.stderr).decode(errors="replace")).strip()
        raise Rejected(f"conf.d/{dropin} rejected by PostgreSQL {host.version}:\n{out}")


def _tail(stderr: bytes) -> str:
    lines = [ln for ln in stderr.decode(errors="replace").splitlines() if ln.strip()]
    return " / ".join(lines[-5:]) or "no message"


# ---------------------------------------------------------------------------------------- durability


def fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sync(paths: Sequence[Path]) -> None:
    for p in paths:
        fsync_path(p)
        if not p.is_dir():
            fsync_path(p.parent)


# ---------------------------------------------------------------------------------------- command line


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--confdir", type=Path, help="the cluster's configuration directory (/etc/postgresql/VERSION/CLUSTER)"
    )
    common.add_argument("--bindir", type=Path, help="the server binaries (/usr/lib/postgresql/VERSION/bin)")
    common.add_argument("--tmpdir", type=Path, help="where private directories go ($TMPDIR or /tmp)")
    common.add_argument("--timeout", type=float, default=60.0, help="seconds for the whole check (60)")
    common.add_argument("--user", default="postgres", help="OS user that runs the server binaries when root (postgres)")
    p = argparse.ArgumentParser(prog="pgops-validate", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="mode", required=True)
    hba = sub.add_parser("hba", parents=[common], help="judge a pg_hba.conf candidate")
    hba.add_argument("version")
    hba.add_argument("cluster")
    hba.add_argument("candidate", help='a file, or "-" for stdin')
    conf = sub.add_parser("conf", parents=[common], help="judge a conf.d drop-in candidate")
    conf.add_argument("version")
    conf.add_argument("cluster")
    conf.add_argument("dropin", help="its file name under conf.d")
    conf.add_argument("candidate", help='a file, or "-" for stdin')
    s = sub.add_parser("sync", help="fsync files (and their directories) or directories")
    s.add_argument("paths", nargs="+", type=Path)
    return p


def _host(args: argparse.Namespace, parser: argparse.ArgumentParser) -> Host:
    if not re.fullmatch(r"[0-9]+", args.version):
        parser.error(f"VERSION must be a PostgreSQL major version such as 15, not {args.version!r}")
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", args.cluster) or args.cluster in (".", ".."):
        parser.error(f"CLUSTER must be a cluster name (letters, digits, _ . -), not {args.cluster!r}")
    if args.timeout <= 0:
        parser.error(f"--timeout must be a number of seconds > 0, not {args.timeout}")
    user = None
    if os.geteuid() == 0:
        try:
            user = pwd.getpwnam(args.user)
        except KeyError:
            parser.error(f"--user {args.user!r} does not exist; valid: the OS user that runs PostgreSQL")
    return Host(
        version=args.version,
        confdir=args.confdir or Path("/etc/postgresql", args.version, args.cluster),
        bindir=args.bindir or Path("/usr/lib/postgresql", args.version, "bin"),
        tmpdir=args.tmpdir or Path(tempfile.gettempdir()),
        deadline=time.monotonic() + args.timeout,
        user=user,
    )


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    parser = _parser()
    args = parser.parse_args(argv)
    if args.mode == "conf" and not re.fullmatch(r"[A-Za-z0-9_.-]+\.conf", args.dropin):
        parser.error(f"DROPIN must be a file name under conf.d ending in .conf, not {args.dropin!r}")
    for s in HANDLED_SIGNALS:
        signal.signal(s, _on_signal)
    try:
        if args.mode == "sync":
            sync(args.paths)
            return EXIT_OK
        host = _host(args, parser)
        for what, path in (("--confdir", host.confdir), ("--bindir", host.bindir), ("--tmpdir", host.tmpdir)):
            if not path.is_dir():
                raise Unchecked(f"{what} {path} is not a directory")
        candidate = sys.stdin.buffer.read() if args.candidate == "-" else Path(args.candidate).read_bytes()
        if args.mode == "hba":
            check_hba(host, candidate)
        else:
            check_conf(host, args.dropin, candidate)
        if args.candidate != "-":
            fsync_path(Path(args.candidate))  # approved: on disk before Ansible renames it into place
    except Interrupted as e:
        log.error(
            "pgops-validate: stopped by %s; the live configuration was not touched", signal.Signals(e.signum).name
        )
        return 128 + e.signum
    except Rejected as e:
        log.error("%s", e)
        return EXIT_REJECTED
    except (Unchecked, OSError) as e:
        log.error("pgops-validate: candidate not checked, so refused: %s", e)
        return EXIT_UNCHECKED
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
