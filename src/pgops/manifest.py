"""What a finished backup is. `manifest.json` is written last: without it, a backup does not exist.

Key layout under the storage prefix (every part of a key is safe on every backend):

    <target>/<database-key>/<backup-id>/dump.pgc.zst    the pg_dump -Fc archive, compressed
    <target>/<database-key>/<backup-id>/manifest.json   written last, the commit marker
    <target>/@globals/<backup-id>/globals.sql.zst       pg_dumpall --globals-only of the same run
    <target>/@globals/<backup-id>/manifest.json
    <target>/<group>/<backup-id>/manifest.json.copy     the same bytes, written right after manifest.json
    <target>/@cluster/<stamp>-<hex>.json                which cluster owns the target (see catalog.py)

A database key is the database name with every byte outside [A-Za-z0-9_-] percent-encoded, so names
with quotes, spaces, slashes, dots or unicode are safe and '@globals' can never collide with one.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import secrets
from typing import Any
from urllib.parse import unquote

from pgops.errors import IntegrityError

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
MANIFEST_COPY_NAME = "manifest.json.copy"  # written right after manifest.json: one bad object is survivable
GLOBALS_KEY = "@globals"
STATUS_OK = "ok"
KIND_DATABASE = "database"
KIND_GLOBALS = "globals"

_SAFE = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-"


REASON_SAFETY = "safety"


def database_key(name: str) -> str:
    """Percent-encode every UTF-8 byte outside [A-Za-z0-9_-] ('.' included, so '..' cannot escape)."""
    return "".join(c if c in _SAFE else "".join(f"%{b:02X}" for b in c.encode()) for c in name)


def database_from_key(key: str) -> str:
    return unquote(key)


def new_backup_id(now: dt.datetime) -> str:
    """Sortable, unique per run: UTC start time plus random suffix (two hosts never collide)."""
    return now.astimezone(dt.UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(3)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def iso(t: dt.datetime) -> str:
    return t.astimezone(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_time(text: str) -> dt.datetime:
    t = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    return t if t.tzinfo else t.replace(tzinfo=dt.UTC)


@dataclasses.dataclass(frozen=True)
class StoredObject:
    key: str
    role: str  # "dump" | "globals"
    size: int
    sha256: str
    raw_size: int
    raw_sha256: str

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class Manifest:
    id: str
    kind: str
    target: str
    database: str | None
    status: str
    started_at: dt.datetime
    finished_at: dt.datetime
    objects: tuple[StoredObject, ...]
    server_version: str
    server_version_num: int
    tool_version: str
    dump_format: str
    compression: dict[str, Any]
    encryption: dict[str, Any]
    host: str
    engine_version: str
    database_properties: dict[str, Any] = dataclasses.field(default_factory=dict)
    reason: str = "scheduled"  # or REASON_SAFETY for the backup taken before restore --replace
    server_side_encryption: dict[str, Any] = dataclasses.field(default_factory=dict)
    tables: tuple[dict[str, Any], ...] = ()  # per-table row estimates, for restore drills
    cluster: dict[str, Any] = dataclasses.field(default_factory=dict)  # catalog.ClusterIdentity of the source
    key: str = ""  # where this manifest was read from (not stored)

    @property
    def prefix(self) -> str:
        return self.key.rsplit("/", 1)[0]

    @property
    def ok(self) -> bool:
        return self.status == STATUS_OK

    @property
    def size(self) -> int:
        return sum(o.size for o in self.objects)

    @property
    def duration(self) -> float:
        return (self.finished_at - self.started_at).total_seconds()

    def object(self, role: str) -> StoredObject:
        for o in self.objects:
            if o.role == role:
                return o
        raise IntegrityError(f"backup {self.id} has no {role} object in its manifest")

    def to_json(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "key"}
        d["format_version"] = FORMAT_VERSION
        d["started_at"] = iso(self.started_at)
        d["finished_at"] = iso(self.finished_at)
        d["duration_seconds"] = round(self.duration, 3)
        d["objects"] = [o.to_json() for o in self.objects]
        d["tables"] = list(self.tables)
        return d

    def dumps(self) -> bytes:
        return (json.dumps(self.to_json(), indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()

    @classmethod
    def loads(cls, data: bytes, key: str) -> Manifest:
        try:
            d = json.loads(data)
            if d.get("format_version") != FORMAT_VERSION:
                raise IntegrityError(f"{key}: unsupported manifest format_version {d.get('format_version')!r}")
            return cls(
                id=d["id"],
                kind=d["kind"],
                target=d["target"],
                database=d["database"],
                status=d["status"],
                started_at=parse_time(d["started_at"]),
                finished_at=parse_time(d["finished_at"]),
                objects=tuple(StoredObject(**o) for o in d["objects"]),
                server_version=d["server_version"],
                server_version_num=int(d["server_version_num"]),
                tool_version=d["tool_version"],
                dump_format=d["dump_format"],
                compression=dict(d["compression"]),
                encryption=dict(d["encryption"]),
                host=d["host"],
                engine_version=d["engine_version"],
                database_properties=dict(d.get("database_properties") or {}),
                reason=d.get("reason", "scheduled"),
                server_side_encryption=dict(d.get("server_side_encryption") or {}),
                tables=tuple(d.get("tables") or ()),
                cluster=dict(d.get("cluster") or {}),
                key=key,
            )
        except IntegrityError:
            raise
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise IntegrityError(f"{key}: unreadable manifest ({type(e).__name__}: {e})") from None


def backup_prefix(target: str, database: str | None, backup_id: str) -> str:
    group = GLOBALS_KEY if database is None else database_key(database)
    return f"{target}/{group}/{backup_id}"


def manifest_key(target: str, database: str | None, backup_id: str) -> str:
    return f"{backup_prefix(target, database, backup_id)}/{MANIFEST_NAME}"


def manifest_copy_key(target: str, database: str | None, backup_id: str) -> str:
    return f"{backup_prefix(target, database, backup_id)}/{MANIFEST_COPY_NAME}"


def data_key(target: str, database: str | None, backup_id: str, suffix: str) -> str:
    """The dump object: dump.pgc (a database) or globals.sql (@globals), plus compression/encryption suffix."""
    name = "globals.sql" if database is None else "dump.pgc"
    return f"{backup_prefix(target, database, backup_id)}/{name}{suffix}"
