#!/usr/bin/python3
"""Judge a candidate PgBouncer file before it replaces the live one (PgBouncer 1.18 has no check-only mode).

roles/pgbouncer installs this file as /usr/local/libexec/pgops/pgops-pgbouncer-check, and Ansible's `validate:` calls
it with the candidate's temporary path. It uses the host's python3 and its standard library only.

  pgops-pgbouncer-check ini CANDIDATE
      Start a throwaway PgBouncer (the installed binary, as the user the service runs as) on a copy of CANDIDATE that
      listens only on a Unix socket in a private directory and writes no log or PID file. It loads the settings, the
      [databases] entries, the auth file and the TLS files as the live one will. The candidate is approved when that
      PgBouncer reports "process up" with no error before it; refused when it logs an error or exits first. It opens
      no connection to any server, and the live PgBouncer is never touched.
  pgops-pgbouncer-check userlist CANDIDATE
      Every line is empty, a ; comment, or "name" "secret" (a quote inside doubled), with at least one entry.

Exit status: 0 approved; 2 bad arguments; 5 refused (the reasons on stderr); 6 could not be checked.
"""

from __future__ import annotations

import os
import pwd
import re
import resource
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

EXIT_OK, EXIT_USAGE, EXIT_REJECTED, EXIT_UNCHECKED = 0, 2, 5, 6
PGBOUNCER = "/usr/sbin/pgbouncer"
RUN_AS = "postgres"  # Debian's pgbouncer.service: User=postgres
DEADLINE = 20.0  # seconds for the throwaway PgBouncer to come up
# Settings the throwaway must not share with the live PgBouncer: it listens and logs only in its own directory.
PRIVATE = ("listen_addr", "listen_port", "unix_socket_dir", "logfile", "pidfile", "syslog", "user")
SECTION_RE = re.compile(r"^\s*\[([^\]]+)\]\s*$")
KEY_RE = re.compile(r"^\s*([A-Za-z0-9_.*-]+)\s*=")
USER_LINE_RE = re.compile(r'^"((?:[^"]|"")+)"\s+"((?:[^"]|"")*)"\s*$')
UP = re.compile(r"\bprocess up\b")
BAD = re.compile(r"\b(ERROR|FATAL)\b")


def private_copy(candidate: str, directory: Path) -> str:
    """The candidate without the settings in PRIVATE, and with the throwaway's own right after [pgbouncer]."""
    out: list[str] = []
    section = ""
    seen = False
    for line in candidate.splitlines():
        m = SECTION_RE.match(line)
        if m:
            section = m.group(1).strip().lower()
            out.append(line)
            if section == "pgbouncer":
                seen = True
                out += ["listen_addr =", "listen_port = 6432", f"unix_socket_dir = {directory}"]
                out += ["logfile =", "syslog = 0"]
            continue
        key = KEY_RE.match(line)
        if section == "pgbouncer" and key and key.group(1).lower() in PRIVATE:
            continue
        out.append(line)
    if not seen:
        raise ValueError("no [pgbouncer] section")
    return "\n".join(out) + "\n"


def check_ini(path: Path) -> int:
    try:
        user = pwd.getpwnam(RUN_AS)
        text = path.read_text()
    except (KeyError, OSError) as e:
        print(f"pgops-pgbouncer-check: cannot read {path} or find user {RUN_AS}: {e}", file=sys.stderr)
        return EXIT_UNCHECKED
    directory = Path(tempfile.mkdtemp(prefix="pgops-pgbouncer-check."))
    try:
        try:
            copy = private_copy(text, directory)
        except ValueError as e:
            print(f"pgops-pgbouncer-check: {path}: {e}", file=sys.stderr)
            return EXIT_REJECTED
        (directory / "pgbouncer.ini").write_text(copy)
        os.chown(directory, user.pw_uid, user.pw_gid)
        os.chown(directory / "pgbouncer.ini", user.pw_uid, user.pw_gid)
        # The live service gets a descriptor limit that fits max_client_conn (the role's drop-in); so does this one.
        _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        return run_throwaway(directory, user)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def run_throwaway(directory: Path, user: pwd.struct_passwd) -> int:
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "LISTEN_FDS", "LISTEN_PID")}
    proc = subprocess.Popen(
        [PGBOUNCER, str(directory / "pgbouncer.ini")],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        cwd=directory,
        env=env,
        user=user.pw_uid,
        group=user.pw_gid,
        extra_groups=[],
    )
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    lines: list[str] = []
    pending = b""
    verdict = EXIT_UNCHECKED
    sel = selectors.DefaultSelector()
    sel.register(fd, selectors.EVENT_READ)
    deadline = time.monotonic() + DEADLINE
    try:
        while verdict == EXIT_UNCHECKED and time.monotonic() < deadline:
            if not sel.select(timeout=max(0.0, deadline - time.monotonic())):
                continue
            chunk = os.read(fd, 65536)  # unbuffered: select() sees only what no buffer has taken yet
            if not chunk:  # it exited
                verdict = EXIT_REJECTED
                break
            *complete, pending = (pending + chunk).split(b"\n")
            for raw in complete:
                line = raw.decode(errors="replace")
                lines.append(line)
                if BAD.search(line):
                    verdict = EXIT_REJECTED
                    break
                if UP.search(line):
                    verdict = EXIT_OK
                    break
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        sel.close()
        proc.stdout.close()
    if verdict != EXIT_OK:
        what = "refused" if verdict == EXIT_REJECTED else f"did not come up within {DEADLINE:.0f} s"
        print(f"pgops-pgbouncer-check: PgBouncer {what}:", file=sys.stderr)
        for line in lines:
            print(f"  {line}", file=sys.stderr)
    return verdict


def check_userlist(path: Path) -> int:
    try:
        text = path.read_text()
    except OSError as e:
        print(f"pgops-pgbouncer-check: cannot read {path}: {e}", file=sys.stderr)
        return EXIT_UNCHECKED
    entries, bad = 0, []
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith(";"):
            continue
        if USER_LINE_RE.match(stripped):
            entries += 1
        else:
            bad.append(number)
    if bad or entries == 0:
        where = f"lines {', '.join(map(str, bad))} are not" if bad else "no line is"
        print(f'pgops-pgbouncer-check: {path}: {where} "name" "secret"', file=sys.stderr)
        return EXIT_REJECTED
    return EXIT_OK


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in ("ini", "userlist"):
        print("usage: pgops-pgbouncer-check ini|userlist CANDIDATE", file=sys.stderr)
        return EXIT_USAGE
    path = Path(argv[1])
    return check_ini(path) if argv[0] == "ini" else check_userlist(path)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
