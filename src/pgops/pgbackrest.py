"""pgBackRest, wrapped (never rewritten): run it, and read what it says about a stanza.

- `run_pgbackrest`: `pgbackrest --config=C --stanza=S ... COMMAND`, without a shell, with pgops' secrets
  removed from its environment; its exit status is always checked.
- `read_stanza_info` / `parse_info`: `pgbackrest info --output=json`, parsed defensively. A missing stanza,
  an error status, unreadable output each become one PgbackrestError line, never a traceback.
- `dropped_wal`: past `archive-push-queue-max` pgBackRest drops WAL and reports success to PostgreSQL. The
  only trace is a WARN line in its archive-push log ("dropped WAL file '<segment>' because archive queue
  exceeded <size>", src/command/archive/push/push.c), which this finds.
"""

from __future__ import annotations

import configparser
import dataclasses
import datetime as dt
import json
import logging
import os
import re
import subprocess
from pathlib import Path
from typing import Any

from pgops.errors import PgbackrestError
from pgops.proc import error_summary, running
from pgops.settings import Settings

log = logging.getLogger(__name__)

PGBACKREST_BIN = "pgbackrest"
DEFAULT_LOG_PATH = "/var/log/pgbackrest"
BACKUP_TYPES = ("full", "diff", "incr")
# pgBackRest's info status codes (doc: command info, "status"): 0 ok, 2 no valid backups; others are errors
STATUS_OK, STATUS_NO_BACKUP = 0, 2
_DROPPED_RE = re.compile(
    r"^(?P<at>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)?) .*dropped WAL file '(?P<wal>[^']+)' because archive queue"
)


def child_env() -> dict[str, str]:
    """Our environment minus PGOPS_* (secrets among them); PGBACKREST_* variables pass through."""
    return {k: v for k, v in os.environ.items() if not k.startswith("PGOPS_")}


def run_pgbackrest(settings: Settings, *args: str, log_file: bool = True) -> str:
    """Run pgbackrest for the configured stanza and return its stdout. Raises PgbackrestError on failure.

    log_file=False keeps a read-only command (info) from writing log files, so that running it as another
    user (root, by hand) never leaves a file in log-path that the postgres user cannot append to."""
    if not settings.pgbackrest_stanza:
        raise PgbackrestError("PGOPS_PGBACKREST_STANZA is not set; valid values: the pgBackRest stanza of this server")
    argv = [
        PGBACKREST_BIN,
        f"--config={settings.pgbackrest_config}",
        f"--stanza={settings.pgbackrest_stanza}",
        *([] if log_file else ["--log-level-file=off"]),
        *args,
    ]
    env = child_env()
    command = args[-1] if args else "?"
    try:
        with running(argv, env=env, stdout=subprocess.PIPE) as child:
            assert child.proc.stdout is not None
            out = child.proc.stdout.read()
            rc = child.wait()
    except FileNotFoundError:
        raise PgbackrestError(
            f"pgbackrest is not installed (PGOPS_PGBACKREST_STANZA={settings.pgbackrest_stanza} is set); "
            "install the Debian package pgbackrest, or empty the setting"
        ) from None
    if rc != 0:
        raise PgbackrestError(
            f"pgbackrest {command} exited {rc} (stanza {settings.pgbackrest_stanza}, "
            f"PGOPS_PGBACKREST_CONFIG={settings.pgbackrest_config}): {error_summary(child.stderr_text)}"
        )
    return out.decode("utf-8", "replace")


@dataclasses.dataclass(frozen=True)
class PhysicalBackup:
    label: str
    type: str  # full | diff | incr
    started_at: dt.datetime
    finished_at: dt.datetime
    size: int  # bytes of the database at backup time
    repo_size: int  # bytes this backup stored in the repository (after compression)
    wal_start: str
    wal_stop: str
    prior: str | None  # the backup a diff/incr depends on
    error: bool  # pgBackRest found page checksum errors while copying

    @property
    def duration(self) -> float:
        return (self.finished_at - self.started_at).total_seconds()

    def to_json(self) -> dict[str, Any]:
        from pgops.manifest import iso

        return {
            "label": self.label,
            "type": self.type,
            "started_at": iso(self.started_at),
            "finished_at": iso(self.finished_at),
            "size_bytes": self.size,
            "repo_size_bytes": self.repo_size,
            "wal_start": self.wal_start,
            "wal_stop": self.wal_stop,
            "prior": self.prior,
            "error": self.error,
        }


@dataclasses.dataclass(frozen=True)
class StanzaInfo:
    stanza: str
    status_code: int
    status_message: str
    backups: tuple[PhysicalBackup, ...]  # oldest first, as pgBackRest lists them
    wal_min: str | None  # the archive's oldest and newest segment (current database)
    wal_max: str | None

    def newest(self, kind: str | None = None) -> PhysicalBackup | None:
        found = [b for b in self.backups if kind is None or b.type == kind]
        return max(found, key=lambda b: b.finished_at, default=None)


def _get(doc: Any, *path: str | int) -> Any:
    for p in path:
        if isinstance(p, int):
            doc = doc[p] if isinstance(doc, list) and len(doc) > p else None
        else:
            doc = doc.get(p) if isinstance(doc, dict) else None
    return doc


def _backup(raw: Any) -> PhysicalBackup:
    def num(*path: str) -> int:
        v = _get(raw, *path)
        if not isinstance(v, int):
            raise TypeError(f"{'.'.join(path)} is {v!r}, not an integer")
        return v

    kind = _get(raw, "type")
    label = _get(raw, "label")
    if kind not in BACKUP_TYPES or not isinstance(label, str):
        raise ValueError(f"backup {label!r} has type {kind!r}")
    return PhysicalBackup(
        label=label,
        type=kind,
        started_at=dt.datetime.fromtimestamp(num("timestamp", "start"), dt.UTC),
        finished_at=dt.datetime.fromtimestamp(num("timestamp", "stop"), dt.UTC),
        size=num("info", "size"),
        repo_size=num("info", "repository", "delta"),
        wal_start=str(_get(raw, "archive", "start") or "-"),
        wal_stop=str(_get(raw, "archive", "stop") or "-"),
        prior=_get(raw, "prior") if isinstance(_get(raw, "prior"), str) else None,
        error=_get(raw, "error") is True,
    )


def parse_info(text: str, stanza: str) -> StanzaInfo:
    """The one stanza of `pgbackrest --stanza=S --output=json info`. Raises PgbackrestError (one line) when it
    is not there, reports an error status, or does not look like pgBackRest's JSON at all."""
    try:
        doc = json.loads(text)
    except ValueError:
        raise PgbackrestError(f"pgbackrest info printed no JSON for stanza {stanza}: {text[:200]!r}") from None
    entry = next((s for s in doc if _get(s, "name") == stanza), None) if isinstance(doc, list) else None
    if entry is None:
        raise PgbackrestError(f"pgbackrest info does not list stanza {stanza} (PGOPS_PGBACKREST_STANZA)")
    code, message = _get(entry, "status", "code"), _get(entry, "status", "message")
    if not isinstance(code, int):
        raise PgbackrestError(f"pgbackrest info of stanza {stanza} has no status code")
    if code not in (STATUS_OK, STATUS_NO_BACKUP):
        repos = [
            f"repo{_get(r, 'key')}: {_get(r, 'status', 'message')}"
            for r in _get(entry, "repo") or []
            if _get(r, "status", "code") not in (STATUS_OK, STATUS_NO_BACKUP, None)
        ]
        detail = "; ".join(repos) if repos else str(message)
        raise PgbackrestError(f"pgbackrest info: stanza {stanza} has status {code} ({message}): {detail}")
    try:
        backups = tuple(_backup(b) for b in _get(entry, "backup") or [])
    except (ValueError, TypeError, OverflowError) as e:
        raise PgbackrestError(f"pgbackrest info of stanza {stanza}: unexpected backup entry: {e}") from None
    archives = [a for a in _get(entry, "archive") or [] if isinstance(a, dict)]
    current = archives[-1] if archives else {}
    return StanzaInfo(
        stanza=stanza,
        status_code=code,
        status_message=str(message),
        backups=backups,
        wal_min=current.get("min") if isinstance(current.get("min"), str) else None,
        wal_max=current.get("max") if isinstance(current.get("max"), str) else None,
    )


# `info` reads four small files. With the repository unreachable, pgBackRest retries each one until io-timeout
# (60 s by default): one `pgops status` took 4 minutes in molecule/pitr's store outage, longer than the refresh job's
# minute. The view gives up after a few seconds instead and reports the repository unreadable (status exits 11).
INFO_IO_TIMEOUT = 5


def read_stanza_info(settings: Settings) -> StanzaInfo:
    # console logging off: stdout is the JSON only, even when pgBackRest warns
    argv = ("--output=json", "--log-level-console=off", f"--io-timeout={INFO_IO_TIMEOUT}", "info")
    out = run_pgbackrest(settings, *argv, log_file=False)
    return parse_info(out, settings.pgbackrest_stanza)


# ---- WAL dropped past archive-push-queue-max ------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class DroppedWal:
    segment: str
    at: dt.datetime


def log_path(config_file: str, stanza: str) -> Path:
    """pgBackRest's log-path for the archive-push command of `stanza`, from its config file (the most specific
    section wins, as in pgBackRest), else its default."""
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    try:
        parser.read(config_file)
    except (configparser.Error, OSError, UnicodeDecodeError) as e:
        log.debug("event=pgbackrest_config_unreadable error=%s", type(e).__name__)
    for section in (f"{stanza}:archive-push", stanza, "global:archive-push", "global"):
        if parser.has_option(section, "log-path"):
            return Path(parser.get(section, "log-path").strip())
    return Path(DEFAULT_LOG_PATH)


def parse_dropped(lines: list[str]) -> list[DroppedWal]:
    """Drop warnings in pgBackRest log lines. pgBackRest writes local time without a zone."""
    found = []
    for line in lines:
        m = _DROPPED_RE.match(line)
        if m:
            at = dt.datetime.fromisoformat(m.group("at")).astimezone(dt.UTC)
            found.append(DroppedWal(m.group("wal"), at))
    return found


def dropped_wal(settings: Settings) -> list[DroppedWal] | None:
    """Every WAL segment pgBackRest logged as dropped, from the sync and async archive-push logs of the stanza.
    None when the logs cannot be read (then nobody can tell)."""
    directory = log_path(settings.pgbackrest_config, settings.pgbackrest_stanza)
    found: list[DroppedWal] = []
    for name in ("archive-push", "archive-push-async"):
        path = directory / f"{settings.pgbackrest_stanza}-{name}.log"
        try:
            with path.open(encoding="utf-8", errors="replace") as f:
                found.extend(parse_dropped([line for line in f if "dropped WAL" in line]))
        except FileNotFoundError:
            continue
        except OSError as e:
            log.warning("event=pgbackrest_log_unreadable path=%s error=%r", path, e.strerror)
            return None
    return sorted(found, key=lambda d: d.at)
