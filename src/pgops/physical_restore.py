"""`pgops physical-restore`: point-in-time recovery with pgBackRest, with pgops' safety refusals.

Two steps, because the server is started between them by whoever owns it (systemd, pg_ctlcluster, the
PITR playbook):

1. `physical-restore --to ...` checks everything first (the target, the backup set label, the data
   directory: no server running on it, empty unless --replace), then runs `pgbackrest restore` with
   `--target-action=promote` (and `--archive-mode=off` for a drill) and records when it started in a small
   state file (atomically). Nothing is deleted or written before those checks pass.
2. `physical-restore --finish` waits until the started server accepts connections and is promoted,
   checks every database answers, logs the RTO (restore start to usable server), writes the metrics and
   removes the state file.
"""

from __future__ import annotations

import configparser
import contextlib
import dataclasses
import datetime as dt
import json
import logging
import os
import re
import time
from pathlib import Path
from typing import Any

from pgops import metrics
from pgops.errors import ConfigError, PgOpsError, PostgresError, RestoreRefused
from pgops.lock import target_lock
from pgops.log import q
from pgops.manifest import iso, utcnow
from pgops.pg import PgConn, in_recovery
from pgops.physical_run import lock_name, require_not_root, require_stanza, run_pgbackrest
from pgops.settings import Settings

log = logging.getLogger(__name__)

DEFAULT_STATE_DIR = "/var/lib/pgops/state"  # owned by the postgres user, like the metrics directory
STATE_FILE = "physical-restore.json"
TO_CHOICES = ("latest", "immediate")
NOTHING_CHANGED = "nothing was changed"
_LSN_RE = re.compile(r"^[0-9A-Fa-f]{1,8}/[0-9A-Fa-f]{1,8}$")
_SET_RE = re.compile(r"^\d{8}-\d{6}F(_\d{8}-\d{6}[DI])?$")
_SET_IN_OUTPUT = re.compile(r"restore backup set (\d{8}-\d{6}F(?:_\d{8}-\d{6}[DI])?)")
_NAME_MAX = 63  # a restore point name is at most MAXFNAMELEN - 1 bytes


@dataclasses.dataclass(frozen=True)
class RestoreTarget:
    """Where recovery stops: latest (end of the archived WAL), immediate (end of the backup), time, lsn, name."""

    type: str
    value: str | None = None

    def pgbackrest_options(self) -> list[str]:
        if self.type == "latest":
            return []  # recovery runs to the end of the archive and then promotes by itself
        options = [f"--type={self.type}", "--target-action=promote"]
        return options if self.value is None else [*options, f"--target={self.value}"]

    def to_json(self) -> dict[str, Any]:
        return {"type": self.type, "value": self.value}

    def describe(self) -> str:
        return self.type if self.value is None else f"{self.type}:{self.value}"


def parse_target(to: str | None, to_time: str | None, to_lsn: str | None, to_name: str | None) -> RestoreTarget:
    """Exactly one of --to latest|immediate (default latest), --to-time, --to-lsn, --to-name."""
    given = [
        n
        for n, v in (("--to", to), ("--to-time", to_time), ("--to-lsn", to_lsn), ("--to-name", to_name))
        if v is not None
    ]
    if len(given) > 1:
        raise ConfigError(f"{' and '.join(given)} were both given; valid: exactly one recovery target")
    if to_time is not None:
        return RestoreTarget("time", _parse_time(to_time))
    if to_lsn is not None:
        if not _LSN_RE.match(to_lsn.strip()):
            raise ConfigError(f"--to-lsn={to_lsn!r} is not an LSN; valid: two hex numbers like 0/3000060")
        return RestoreTarget("lsn", to_lsn.strip().upper())
    if to_name is not None:
        name = to_name.strip()
        if not name or len(name.encode()) > _NAME_MAX or name != to_name:
            raise ConfigError(
                f"--to-name={to_name!r} is not a restore point name; valid: the 1-{_NAME_MAX} byte name given to "
                "pg_create_restore_point, without leading or trailing blanks"
            )
        return RestoreTarget("name", name)
    if to is not None and to not in TO_CHOICES:
        raise ConfigError(
            f"--to={to!r} is not valid; valid: latest, immediate (or --to-time, --to-lsn, --to-name for the others)"
        )
    return RestoreTarget(to or "latest")


def _parse_time(text: str) -> str:
    """ISO 8601 with a zone, as PostgreSQL's recovery_target_time in UTC (microseconds kept)."""
    try:
        t = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        t = None
    if t is None or t.tzinfo is None or t.utcoffset() is None:
        raise ConfigError(
            f"--to-time={text!r} is not a time with a zone; valid: ISO 8601 with Z or an offset, like "
            "2026-12-03T14:05:00Z or 2026-12-03T15:05:00.250+01:00"
        )
    return t.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S.%f+00")


def check_set_label(label: str | None) -> str | None:
    if label is not None and not _SET_RE.match(label):
        raise ConfigError(
            f"--set={label!r} is not a pgBackRest backup label; valid: a label from `pgops list` or "
            "`pgbackrest info`, like 20261203-020000F or 20261203-020000F_20261204-020000D"
        )
    return label


def configured_pgdata(config: str, stanza: str) -> str:
    """pg1-path of the stanza from pgBackRest's config file (and conf.d/*.conf beside it)."""
    parser = configparser.ConfigParser(interpolation=None, strict=False, default_section="\0none")
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    path = Path(config)
    files = [path, *sorted((path.parent / "conf.d").glob("*.conf"))]
    try:
        parser.read([str(f) for f in files], encoding="utf-8")
    except (configparser.Error, OSError, UnicodeDecodeError) as e:
        raise ConfigError(
            f"PGOPS_PGBACKREST_CONFIG={config!r} cannot be read: {type(e).__name__}; pass --pgdata"
        ) from None
    for section in (f"{stanza}:restore", stanza, "global:restore", "global"):
        if parser.has_option(section, "pg1-path"):
            return parser.get(section, "pg1-path").strip()
    raise ConfigError(f"PGOPS_PGBACKREST_CONFIG={config!r} has no pg1-path for stanza {stanza!r}; pass --pgdata DIR")


def _running_on(pgdata: Path) -> str | None:
    """Why a server is (or may be) running on pgdata, or None."""
    pid_file = pgdata / "postmaster.pid"
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        first = pid_file.read_text(errors="replace").split("\n", 1)[0].strip()
        try:
            pid = int(first)
        except ValueError:
            return f"{pid_file} exists but names no pid ({first!r})"
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            pass
        except PermissionError:
            return f"postmaster.pid names pid {pid}, which is alive (another user's)"
        else:
            return f"postmaster.pid names pid {pid}, which is alive"
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            with contextlib.suppress(OSError):
                if (proc / "cwd").readlink() == pgdata:
                    return f"process {proc.name} works in it"
    return None


def check_pgdata(pgdata: Path, *, replace: bool) -> bool:
    """Refuse a running server, and a non-empty directory without --replace. Returns whether it exists."""
    if not pgdata.is_absolute():
        raise ConfigError(f"--pgdata={str(pgdata)!r} is not an absolute path; valid: like /var/lib/postgresql/15/main")
    if pgdata.exists() and not pgdata.is_dir():
        raise ConfigError(f"--pgdata={str(pgdata)!r} is not a directory; {NOTHING_CHANGED}")
    if not pgdata.exists():
        return False
    running = _running_on(pgdata.resolve())
    if running:
        raise RestoreRefused(
            f"a PostgreSQL server is running on {pgdata} ({running}); stop it first (systemctl stop, pg_ctl stop) "
            f"or restore into another directory with --pgdata; {NOTHING_CHANGED}"
        )
    try:
        entries = next(os.scandir(pgdata), None) is not None
    except OSError as e:
        raise ConfigError(f"--pgdata={str(pgdata)!r} cannot be read: {e.strerror}; {NOTHING_CHANGED}") from None
    if entries and not replace:
        raise RestoreRefused(
            f"{pgdata} is not empty; pass --replace to restore over it (pgBackRest --delta: files that are not in "
            f"the backup are removed) or restore into an empty directory with --pgdata; {NOTHING_CHANGED}"
        )
    return True


@dataclasses.dataclass(frozen=True)
class PhysicalRestoreRequest:
    target: RestoreTarget
    pgdata: str | None = None
    backup_set: str | None = None
    replace: bool = False
    drill: bool = False
    state_dir: str = DEFAULT_STATE_DIR


def state_path(state_dir: str) -> Path:
    return Path(state_dir) / STATE_FILE


def _check_state_dir(state_dir: str) -> None:
    directory = Path(state_dir)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"--state-dir={state_dir!r} cannot be created: {e.strerror}; {NOTHING_CHANGED}") from None
    if not os.access(directory, os.W_OK | os.X_OK):
        raise ConfigError(f"--state-dir={state_dir!r} is not writable by this user; {NOTHING_CHANGED}")


def _write_state(path: Path, state: dict[str, Any]) -> None:
    """temp file, fsync, rename, fsync the directory: a reader sees the old file or the whole new one."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, json.dumps(state, indent=1, sort_keys=True).encode() + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    tmp.replace(path)
    dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def run_physical_restore(settings: Settings, req: PhysicalRestoreRequest) -> dict[str, Any]:
    """Check, restore with pgBackRest, record the state for --finish. Returns the recorded state."""
    stanza = require_stanza(settings)
    require_not_root("physical-restore")
    check_set_label(req.backup_set)
    pgdata = Path(req.pgdata or configured_pgdata(settings.pgbackrest_config, stanza))
    _check_state_dir(req.state_dir)
    with target_lock(settings.lock_dir, lock_name(stanza)):
        exists = check_pgdata(pgdata, replace=req.replace)
        # Every check passed: from here on, pgops changes the data directory.
        if not exists:
            pgdata.mkdir(mode=0o700, parents=True)
        stale_pid = pgdata / "postmaster.pid"
        if req.replace and stale_pid.exists():
            # check_pgdata proved no process is alive for it; pgBackRest refuses while the file exists
            log.warning("event=physical_restore_stale_pid_removed path=%s", q(stale_pid))
            stale_pid.unlink()
        options = [f"--pg1-path={pgdata}", *req.target.pgbackrest_options()]
        if req.backup_set:
            options.append(f"--set={req.backup_set}")
        if req.replace:
            options.append("--delta")
        if req.drill:
            options.append("--archive-mode=off")
        started = utcnow()
        log.info(
            "event=physical_restore_start stanza=%s pgdata=%s target=%s set=%s drill=%s",
            q(stanza),
            q(pgdata),
            q(req.target.describe()),
            q(req.backup_set or "auto"),
            str(req.drill).lower(),
        )
        out = run_pgbackrest(settings, "restore", options)
        chosen = next((m.group(1) for line in out.lines if (m := _SET_IN_OUTPUT.search(line))), req.backup_set)
        state = {
            "started_at": iso(started),
            "restored_at": iso(utcnow()),
            "stanza": stanza,
            "pgdata": str(pgdata),
            "target": req.target.to_json(),
            "set": chosen,
            "drill": req.drill,
        }
        if state_path(req.state_dir).exists():
            log.warning("event=physical_restore_state_replaced path=%s", q(state_path(req.state_dir)))
        _write_state(state_path(req.state_dir), state)
    log.info(
        "event=physical_restore_restored set=%s seconds=%.1f next=%s",
        q(chosen or "unknown"),
        (utcnow() - started).total_seconds(),
        q("start PostgreSQL on the data directory, then run pgops physical-restore --finish"),
    )
    return state


@dataclasses.dataclass(frozen=True)
class FinishReport:
    state: dict[str, Any]
    rto_seconds: float
    databases: list[str]

    def to_json(self) -> dict[str, Any]:
        return dict(self.state, rto_seconds=round(self.rto_seconds, 3), databases=self.databases)


def _read_state(path: Path) -> dict[str, Any]:
    try:
        state = json.loads(path.read_text())
        started = dt.datetime.fromisoformat(state["started_at"])
    except FileNotFoundError:
        raise ConfigError(
            f"no physical restore to finish: {path} does not exist; run pgops physical-restore first "
            "(with the same --state-dir)"
        ) from None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"{path} is not a physical-restore state file ({type(e).__name__})") from None
    if not isinstance(state, dict) or started.tzinfo is None:
        raise ConfigError(f"{path} is not a physical-restore state file")
    return state


def _wait_promoted(conn: PgConn, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    last = "not tried"
    while True:
        try:
            with conn.connect("postgres") as c:
                recovering = in_recovery(c)
            if not recovering:
                return
            last = "the server is still in recovery"
        except PgOpsError as e:
            last = str(e)
        if time.monotonic() >= deadline:
            raise PostgresError(
                f"the restored server was not up and promoted within --timeout={timeout:g}s (last: {last}); "
                "check its log; the state file is kept, so --finish can be run again"
            )
        time.sleep(0.5)


def _sanity(conn: PgConn) -> list[str]:
    """Every database that allows connections answers a query."""
    with conn.connect("postgres") as c:
        rows = c.execute("SELECT datname FROM pg_database WHERE datallowconn AND NOT datistemplate ORDER BY 1")
        databases = [r[0] for r in rows.fetchall()]
    for name in databases:
        with conn.connect(name) as c:
            c.execute("SELECT 1").fetchone()
    return databases


def finish_physical_restore(settings: Settings, state_dir: str, timeout: float) -> FinishReport:
    path = state_path(state_dir)
    state = _read_state(path)
    conn = PgConn.from_settings(settings)
    _wait_promoted(conn, timeout)
    databases = _sanity(conn)
    now = utcnow()
    rto = (now - dt.datetime.fromisoformat(state["started_at"])).total_seconds()
    drill = bool(state.get("drill"))
    label = "@pgbackrest/drill" if drill else "@pgbackrest/restore"
    metrics.update(
        settings,
        lambda per_db: metrics.set_fields(
            per_db, label, physical_restore_rto=rto, physical_restore_last_success=now.timestamp()
        ),
    )
    path.unlink()
    log.info(
        "event=physical_restore_done rto_seconds=%.1f target=%s set=%s drill=%s databases=%d",
        rto,
        q(RestoreTarget(**state["target"]).describe() if isinstance(state.get("target"), dict) else "unknown"),
        q(state.get("set") or "unknown"),
        str(drill).lower(),
        len(databases),
    )
    return FinishReport(state, rto, databases)
