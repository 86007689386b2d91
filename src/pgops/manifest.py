"""What a finished backup is. `manifest.json` is written last: without it, a backup does not exist.

Key layout under the storage prefix (every part of a key is safe on every backend):

    <target>/<database-key>/<backup-id>/dump.pgc.zst    the pg_dump -Fc archive, compressed
    <target>/<database-key>/<backup-id>/manifest.json   written last, the commit marker
    <target>/@globals/<backup-id>/globals.sql.zst       pg_dumpall --globals-only of the same run
    <target>/@globals/<backup-id>/manifest.json

A database key is the database name with every byte outside [A-Za-z0-9_-] percent-encoded, so names
with quotes, spaces, slashes, dots or unicode are safe and '@globals' can never collide with one.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import secrets
from collections.abc import Iterable
from typing import Any
from urllib.parse import unquote

from pgops.errors import BackupNotFound, IntegrityError, ObjectNotFound
from pgops.storage.base import Storage

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
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
                key=key,
            )
        except IntegrityError:
            raise
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise IntegrityError(f"{key}: unreadable manifest ({type(e).__name__}: {e})") from None


def manifest_key(target: str, database: str | None, backup_id: str) -> str:
    group = GLOBALS_KEY if database is None else database_key(database)
    return f"{target}/{group}/{backup_id}/{MANIFEST_NAME}"


VERIFY_PREFIX = "verified-"


@dataclasses.dataclass(frozen=True)
class Verification:
    """A successful `pgops verify`, recorded as <backup dir>/verified-<UTC time>-<mode>.json."""

    at: dt.datetime
    mode: str  # "quick" or "restore"
    key: str


def verification_key(m: Manifest, at: dt.datetime, mode: str) -> str:
    return f"{m.prefix}/{VERIFY_PREFIX}{at.astimezone(dt.UTC).strftime('%Y%m%dT%H%M%SZ')}-{mode}.json"


def _parse_verification(key: str) -> Verification | None:
    name = key.rsplit("/", 1)[-1]
    if not name.startswith(VERIFY_PREFIX) or not name.endswith(".json"):
        return None
    stamp, _, mode = name[len(VERIFY_PREFIX) : -len(".json")].partition("-")
    try:
        at = dt.datetime.strptime(stamp, "%Y%m%dT%H%M%SZ").replace(tzinfo=dt.UTC)
    except ValueError:
        return None
    return Verification(at, mode, key)


@dataclasses.dataclass(frozen=True)
class Catalog:
    """Every manifest under a storage prefix, read once. Unreadable ones are kept apart, never 'latest'."""

    manifests: tuple[Manifest, ...]
    unreadable: tuple[str, ...]
    verifications: dict[str, tuple[Verification, ...]] = dataclasses.field(default_factory=dict)  # by prefix

    def verified(self, m: Manifest) -> tuple[Verification, ...]:
        """Successful verifications of this backup, newest first."""
        return self.verifications.get(m.prefix, ())

    def verified_ids(self) -> frozenset[str]:
        return frozenset(m.id for m in self.manifests if self.verified(m))

    @classmethod
    def load(cls, storage: Storage, target: str | None = None) -> Catalog:
        prefix = f"{target}/" if target else ""
        good: list[Manifest] = []
        bad: list[str] = []
        marks: dict[str, list[Verification]] = {}
        for info in storage.list(prefix):
            mark = _parse_verification(info.key)
            if mark is not None:
                marks.setdefault(info.key.rsplit("/", 1)[0], []).append(mark)
            if not info.key.endswith("/" + MANIFEST_NAME):
                continue
            try:
                good.append(Manifest.loads(storage.get_bytes(info.key), info.key))
            except (IntegrityError, ObjectNotFound) as e:
                log.warning("event=manifest_unreadable key=%s error=%r", info.key, str(e))
                bad.append(info.key)
        good.sort(key=lambda m: (m.started_at, m.id), reverse=True)
        verifications = {k: tuple(sorted(v, key=lambda x: x.at, reverse=True)) for k, v in marks.items()}
        return cls(tuple(good), tuple(sorted(bad)), verifications)

    def select(
        self,
        *,
        database: str | None = None,
        kind: str = KIND_DATABASE,
        backup_id: str | None = None,
        before: dt.datetime | None = None,
        only_ok: bool = True,
    ) -> list[Manifest]:
        """Newest first, by the manifest's recorded start time (never by key order)."""
        out: Iterable[Manifest] = self.manifests
        out = [m for m in out if m.kind == kind and (not only_ok or m.ok)]
        if database is not None:
            out = [m for m in out if m.database == database]
        if backup_id is not None:
            out = [m for m in out if m.id == backup_id]
        if before is not None:
            out = [m for m in out if m.started_at <= before]
        return list(out)

    def pick(
        self,
        *,
        database: str,
        backup_id: str | None = None,
        before: dt.datetime | None = None,
    ) -> Manifest:
        found = self.select(database=database, backup_id=backup_id, before=before)
        if not found:
            what = f"database {database!r}"
            if backup_id:
                what += f", id {backup_id}"
            if before:
                what += f", started at or before {iso(before)}"
            raise BackupNotFound(f"no complete backup matches {what}")
        if backup_id is None:
            # The safety copy that restore --replace takes holds the state it just replaced: "latest"
            # must not bring that back. It is restored only by its id (or when it is all there is).
            regular = [m for m in found if m.reason != REASON_SAFETY]
            if regular:
                return regular[0]
        return found[0]

    def globals_for(self, m: Manifest) -> Manifest:
        """The globals of the same run, else the newest globals taken before it."""
        same = self.select(kind=KIND_GLOBALS, backup_id=m.id)
        if same:
            return same[0]
        older = self.select(kind=KIND_GLOBALS, before=m.started_at)
        if not older:
            raise BackupNotFound(f"no globals backup for {m.id} (target {m.target}); restore without --with-globals")
        return older[0]
