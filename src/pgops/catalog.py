"""The catalog: everything under a target, listed once and classified once, for every command.

`list`, `restore`, `verify`, `status`, `retention` and `backup` all see the store through this module, so
they all agree on what a backup is. Nothing here writes, except `claim()` (cluster ownership records).

What pgops owns
    Only keys that match its exact layout are ever looked at, let alone deleted:

        <target>/<group>/<backup-id>/<name>
            group   '@globals', or a database key (manifest.database_key: [A-Za-z0-9_-] and %XX)
            id      manifest.new_backup_id's pattern: YYYYMMDDTHHMMSSZ-xxxxxx (6 lower-case hex digits)
            name    manifest.json, manifest.json.copy, dump.pgc[.zst|.gz][.age], globals.sql[.zst|.gz][.age],
                    verified-YYYYMMDDTHHMMSSZ-<mode>.json
        <target>/@cluster/<YYYYMMDDTHHMMSSZ>-xxxxxx.json       ownership records (see Lineage)

    Every other key under the target (an operator's own files, a second pgops nested inside this one's
    target, a folder that only looks like a backup) is *ignored*: counted, reported by a dry run, never
    deleted, never restored.

States of a backup directory
    good          readable manifest (or its copy), status ok, every object it names listed with the
                  recorded size, and made by this target's cluster lineage. Only good backups are listed,
                  restored, verified or counted by keep rules. A good backup may also be
                  - a safety copy (reason 'safety', taken by restore --replace): never 'latest', never
                    counted by keep rules, kept for PGOPS_KEEP_SAFETY;
                  - verified (a `pgops verify` record in its directory).
    failed        readable manifest whose status is not ok.
    incomplete    status ok, but an object it names is missing or has another size (half-deleted).
    unreadable    neither manifest.json nor its copy can be read. Its data is kept while its group has no
                  newer good backup (it may be the only copy).
    orphan        objects without any manifest: a killed run's leftovers, or a run in progress.
    foreign       a manifest of a newer format, or one that describes another place: not ours to judge.
    other-cluster a complete backup made by a cluster that does not own this target (its system
                  identifier is not in the target's lineage). Never restored as 'latest', never deleted.

Lineage (one cluster per target): see cluster.py. The catalog reads the claims with the rest of the
    listing; a good backup whose cluster is outside the lineage becomes other-cluster.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import re
from collections import defaultdict
from collections.abc import Iterable

from pgops.cluster import CLAIM_RE, CLUSTER_GROUP, Claim, Reader, identity_of, lineage, read_claims
from pgops.errors import BackupNotFound, IntegrityError, ObjectNotFound
from pgops.manifest import (
    FORMAT_VERSION,
    GLOBALS_KEY,
    KIND_DATABASE,
    KIND_GLOBALS,
    MANIFEST_COPY_NAME,
    MANIFEST_NAME,
    REASON_SAFETY,
    STATUS_OK,
    Manifest,
    database_from_key,
    database_key,
    iso,
)
from pgops.storage.base import ObjectInfo, Storage

log = logging.getLogger(__name__)

GOOD = "good"
FAILED = "failed"
INCOMPLETE = "incomplete"
UNREADABLE = "unreadable"
ORPHAN = "orphan"
FOREIGN = "foreign"
OTHER_CLUSTER = "other-cluster"
STATES = (GOOD, FAILED, INCOMPLETE, UNREADABLE, ORPHAN, FOREIGN, OTHER_CLUSTER)

ID_RE = re.compile(r"^[0-9]{8}T[0-9]{6}Z-[0-9a-f]{6}$")
_GROUP_RE = re.compile(r"^(?:[A-Za-z0-9_-]|%[0-9A-F]{2})+$")
_DATA_RE = re.compile(r"^(?:dump\.pgc|globals\.sql)(?:\.zst|\.gz)?(?:\.age)?$")
VERIFY_PREFIX = "verified-"
_VERIFY_RE = re.compile(r"^verified-([0-9]{8}T[0-9]{6}Z)-([a-z]+)\.json$")


def is_group(part: str) -> bool:
    """'@globals', or a database key that database_key() would produce for some name."""
    if part == GLOBALS_KEY:
        return True
    return bool(_GROUP_RE.match(part)) and database_key(database_from_key(part)) == part


def is_backup_object_name(name: str) -> bool:
    return name in (MANIFEST_NAME, MANIFEST_COPY_NAME) or bool(_DATA_RE.match(name) or _VERIFY_RE.match(name))


# ---- verification records -------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Verification:
    """A successful `pgops verify`, recorded as <backup dir>/verified-<UTC time>-<mode>.json."""

    at: dt.datetime
    mode: str  # "quick" or "restore"
    key: str


def verification_key(m: Manifest, at: dt.datetime, mode: str) -> str:
    return f"{m.prefix}/{VERIFY_PREFIX}{at.astimezone(dt.UTC).strftime('%Y%m%dT%H%M%SZ')}-{mode}.json"


def _parse_verification(key: str) -> Verification | None:
    match = _VERIFY_RE.match(key.rsplit("/", 1)[-1])
    if match is None:
        return None
    at = dt.datetime.strptime(match.group(1), "%Y%m%dT%H%M%SZ").replace(tzinfo=dt.UTC)
    return Verification(at, match.group(2), key)


# ---- backup directories ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Backup:
    """One backup directory `<target>/<group>/<backup-id>/` and everything of ours listed under it."""

    target: str
    group: str  # database key, or "@globals"
    backup_id: str
    objects: tuple[ObjectInfo, ...]  # sorted by key
    state: str
    manifest: Manifest | None = None  # set when a manifest (or its copy) could be read
    detail: str = ""  # why it is not good
    named_keys: frozenset[str] = frozenset()  # keys its manifest names (for a foreign one: any key-like string)
    verifications: tuple[Verification, ...] = ()  # newest first

    @property
    def prefix(self) -> str:
        return f"{self.target}/{self.group}/{self.backup_id}"

    @property
    def manifest_key(self) -> str:
        return f"{self.prefix}/{MANIFEST_NAME}"

    @property
    def copy_key(self) -> str:
        return f"{self.prefix}/{MANIFEST_COPY_NAME}"

    def _listed(self, key: str) -> bool:
        return any(o.key == key for o in self.objects)

    @property
    def has_manifest(self) -> bool:
        return self._listed(self.manifest_key) or self._listed(self.copy_key)

    @property
    def database(self) -> str:
        """The database name for people; '@globals' for the globals group."""
        return GLOBALS_KEY if self.group == GLOBALS_KEY else database_from_key(self.group)

    @property
    def started_at(self) -> dt.datetime | None:
        return self.manifest.started_at if self.manifest is not None else None

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(o.key for o in self.objects)

    @property
    def deletion_order(self) -> tuple[str, ...]:
        """Data and records first, then the manifest copy, then manifest.json: the commit marker goes last."""
        marks = (self.copy_key, self.manifest_key)
        return (*(k for k in self.keys if k not in marks), *(k for k in marks if self._listed(k)))

    @property
    def referenced_keys(self) -> frozenset[str]:
        """Every key this backup needs: its own objects and the ones its manifest names."""
        return frozenset(self.keys) | self.named_keys

    @property
    def age_anchor(self) -> dt.datetime:
        """For the grace period: the latest of its recorded start and its objects' modified times."""
        times = [o.modified for o in self.objects]
        if self.started_at is not None:
            times.append(self.started_at)
        return max(times)

    @property
    def id_time(self) -> dt.datetime:
        """The start time its id records (the writing host's clock)."""
        return dt.datetime.strptime(self.backup_id[:16], "%Y%m%dT%H%M%SZ").replace(tzinfo=dt.UTC)

    @property
    def is_safety(self) -> bool:
        return self.manifest is not None and self.manifest.reason == REASON_SAFETY

    @property
    def verified(self) -> bool:
        return bool(self.verifications)


def _read_manifest(base: Backup, read: Reader) -> Manifest | Backup:
    """The manifest (from manifest.json, else its copy), or the backup as unreadable or foreign."""
    errors: list[str] = []
    for key in (base.manifest_key, base.copy_key):
        if not base._listed(key):
            continue
        try:
            data = read(key)
        except ObjectNotFound:
            errors.append(f"{key.rsplit('/', 1)[-1]} vanished while it was read")
            continue
        newer = _newer_format(data)
        if newer is not None:
            return dataclasses.replace(
                base,
                state=FOREIGN,
                detail=f"manifest format_version {newer} is newer than ours",
                named_keys=_key_like_strings(data, base.target),
            )
        try:
            m = Manifest.loads(data, base.manifest_key)
        except IntegrityError as e:
            errors.append(str(e))
            continue
        if key == base.copy_key:
            log.warning("event=manifest_copy_used key=%s detail=%s", base.manifest_key, "; ".join(errors) or "missing")
        return m
    return dataclasses.replace(base, state=UNREADABLE, detail="; ".join(errors))


def _classify(base: Backup, read: Reader, sizes: dict[str, int]) -> Backup:
    if not base.has_manifest:
        return dataclasses.replace(base, state=ORPHAN, detail="no manifest.json")
    parsed = _read_manifest(base, read)
    if isinstance(parsed, Backup):
        return parsed
    return _check_manifest(base, parsed, sizes)


def _check_manifest(base: Backup, m: Manifest, sizes: dict[str, int]) -> Backup:
    """foreign (describes another place), failed, incomplete (an object missing or resized), or good."""
    expected_kind = KIND_GLOBALS if base.group == GLOBALS_KEY else KIND_DATABASE
    if (
        m.target != base.target
        or m.id != base.backup_id
        or m.kind != expected_kind
        or (m.kind == KIND_DATABASE and (m.database is None or database_key(m.database) != base.group))
    ):
        where = f"{m.target}/{m.kind}:{m.database}/{m.id}"
        return dataclasses.replace(
            base,
            state=FOREIGN,
            detail=f"manifest describes {where}, not where it is stored",
            named_keys=frozenset(o.key for o in m.objects),
        )
    c = dataclasses.replace(base, manifest=m, named_keys=frozenset(o.key for o in m.objects))
    if m.status != STATUS_OK:
        return dataclasses.replace(c, state=FAILED, detail=f"status {m.status!r}")
    if not m.objects:
        return dataclasses.replace(c, state=INCOMPLETE, detail="the manifest names no objects")
    for o in m.objects:
        if sizes.get(o.key) != o.size:
            found = "is missing" if o.key not in sizes else f"has {sizes[o.key]} bytes, manifest says {o.size}"
            return dataclasses.replace(c, state=INCOMPLETE, detail=f"object {o.key} {found}")
    return dataclasses.replace(c, state=GOOD, detail="")


def _newer_format(data: bytes) -> int | None:
    try:
        version = json.loads(data).get("format_version")
    except (ValueError, AttributeError):
        return None
    return version if isinstance(version, int) and version > FORMAT_VERSION else None


def _key_like_strings(data: bytes, target: str) -> frozenset[str]:
    """Every string under `target/` anywhere in a JSON document we cannot otherwise interpret."""
    found: set[str] = set()
    stack: list[object] = [json.loads(data)]
    while stack:
        v = stack.pop()
        if isinstance(v, str) and v.startswith(target + "/"):
            found.add(v)
        elif isinstance(v, dict):
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)
    return frozenset(found)


def _newest_first(b: Backup) -> tuple[bool, dt.datetime, str]:
    return (b.started_at is not None, b.started_at or dt.datetime.min.replace(tzinfo=dt.UTC), b.backup_id)


# ---- the catalog ----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Catalog:
    """Every backup directory of one target (or of every target), classified; keys not ours apart."""

    backups: tuple[Backup, ...]  # by prefix
    ignored_keys: tuple[str, ...] = ()
    claims: dict[str, tuple[Claim, ...]] = dataclasses.field(default_factory=dict)  # target -> lineage

    # -- building --

    @classmethod
    def from_listing(
        cls, listing: Iterable[ObjectInfo], read: Reader, target: str | None = None, *, newest_only: bool = False
    ) -> Catalog:
        """Group a listing into backup directories and classify each; `read` fetches an object's bytes.

        newest_only: classify directories newest id first and stop at the first good one (what a backup
        run needs: the owner and the newest good backup), so a run reads one or two manifests, not all.
        Storage errors other than ObjectNotFound propagate: nothing is decided on a partial view."""
        dirs: dict[tuple[str, str, str], list[ObjectInfo]] = defaultdict(list)
        claim_keys: dict[str, list[str]] = defaultdict(list)
        ignored: list[str] = []
        sizes: dict[str, int] = {}
        for info in listing:
            sizes[info.key] = info.size
            parts = info.key.split("/")
            if target is not None and parts[0] != target:
                ignored.append(info.key)
            elif len(parts) == 3 and parts[1] == CLUSTER_GROUP and CLAIM_RE.match(parts[2]):
                claim_keys[parts[0]].append(info.key)
            elif len(parts) == 4 and is_group(parts[1]) and ID_RE.match(parts[2]) and is_backup_object_name(parts[3]):
                dirs[(parts[0], parts[1], parts[2])].append(info)
            else:
                ignored.append(info.key)
        claims = {t: lineage(read_claims(keys, read)) for t, keys in claim_keys.items()}
        backups = []
        order = (
            sorted(dirs.items(), key=lambda kv: (kv[0][2], kv[0]), reverse=True)
            if newest_only
            else sorted(dirs.items())
        )
        for (t, g, i), objs in order:
            objects = tuple(sorted(objs, key=lambda o: o.key))
            marks = sorted(filter(None, map(_parse_verification, (o.key for o in objects))), key=lambda v: v.at)
            base = Backup(t, g, i, objects, ORPHAN, verifications=tuple(reversed(marks)))
            backups.append(_own(_classify(base, read, sizes), claims.get(t, ())))
            if newest_only and backups[-1].state == GOOD:
                break
        return cls(tuple(sorted(backups, key=lambda b: b.prefix)), tuple(sorted(ignored)), claims)

    @classmethod
    def load(cls, storage: Storage, target: str | None = None, *, newest_only: bool = False) -> Catalog:
        prefix = f"{target}/" if target else ""
        catalog = cls.from_listing(storage.list(prefix), storage.get_bytes, target, newest_only=newest_only)
        for b in catalog.backups:
            if b.state == UNREADABLE:
                log.warning("event=manifest_unreadable key=%s error=%r", b.manifest_key, b.detail)
        return catalog

    # -- views --

    def in_state(self, *states: str) -> list[Backup]:
        """Backups in any of `states`, newest first by recorded start (those without one last)."""
        chosen = [b for b in self.backups if b.state in states]
        return sorted(chosen, key=_newest_first, reverse=True)

    @property
    def good(self) -> tuple[Backup, ...]:
        return tuple(self.in_state(GOOD))

    @property
    def manifests(self) -> tuple[Manifest, ...]:
        """Manifests of good backups, newest first by the recorded start time (never by key order)."""
        return tuple(b.manifest for b in self.good if b.manifest is not None)

    @property
    def unreadable(self) -> tuple[str, ...]:
        return tuple(sorted(b.manifest_key for b in self.backups if b.state == UNREADABLE))

    def backup(self, m: Manifest) -> Backup | None:
        return next((b for b in self.backups if b.prefix == m.prefix), None)

    def verified(self, m: Manifest) -> tuple[Verification, ...]:
        """Successful verifications of this backup, newest first."""
        b = self.backup(m)
        return b.verifications if b is not None else ()

    def owner(self, target: str) -> Claim | None:
        """The cluster that owns `target` now (the last valid claim), or None if none has claimed it."""
        chain = self.claims.get(target, ())
        return chain[-1] if chain else None

    def select(
        self,
        *,
        database: str | None = None,
        kind: str = KIND_DATABASE,
        backup_id: str | None = None,
        before: dt.datetime | None = None,
    ) -> list[Manifest]:
        """Good backups, newest first, by the manifest's recorded start time."""
        out = [m for m in self.manifests if m.kind == kind]
        if database is not None:
            out = [m for m in out if m.database == database]
        if backup_id is not None:
            out = [m for m in out if m.id == backup_id]
        if before is not None:
            out = [m for m in out if m.started_at <= before]
        return out

    def pick(self, *, database: str, backup_id: str | None = None, before: dt.datetime | None = None) -> Manifest:
        """The backup a restore takes. Without an id: the newest good one that is not a safety copy (the
        state a --replace just left must not come back as 'latest'; it is restored only by its id)."""
        found = self.select(database=database, backup_id=backup_id, before=before)
        if backup_id is None:
            found = [m for m in found if m.reason != REASON_SAFETY]
        if not found:
            what = f"database {database!r}"
            if backup_id:
                what += f", id {backup_id}"
            if before:
                what += f", started at or before {iso(before)}"
            raise BackupNotFound(f"no complete backup matches {what}{self._not_good_hint(database, backup_id)}")
        return found[0]

    def _not_good_hint(self, database: str, backup_id: str | None) -> str:
        others = [
            b
            for b in self.backups
            if b.state != GOOD and b.database == database and (backup_id is None or b.backup_id == backup_id)
        ]
        if not others:
            return ""
        states = sorted({b.state for b in others})
        return (
            f" ({len(others)} backup(s) of it are not restorable: {', '.join(states)}; see `pgops list --all-states`)"
        )

    def globals_for(self, m: Manifest) -> Manifest:
        """The globals of the same run, else the newest scheduled (not safety) globals taken before it."""
        same = self.select(kind=KIND_GLOBALS, backup_id=m.id)
        if same:
            return same[0]
        older = [g for g in self.select(kind=KIND_GLOBALS, before=m.started_at) if g.reason != REASON_SAFETY]
        if not older:
            raise BackupNotFound(f"no globals backup for {m.id} (target {m.target}); restore without --with-globals")
        return older[0]

    def newest_good(self, *, include_safety: bool = True) -> Backup | None:
        return next((b for b in self.good if include_safety or not b.is_safety), None)


def _own(b: Backup, chain: tuple[Claim, ...]) -> Backup:
    """A good backup made by a cluster outside the target's lineage is another cluster's."""
    if b.state != GOOD or b.manifest is None or not chain:
        return b
    ident = identity_of(b.manifest)
    if ident is None or any(c.identity.system_identifier == ident.system_identifier for c in chain):
        return b
    owner = chain[-1].identity
    return dataclasses.replace(
        b,
        state=OTHER_CLUSTER,
        detail=f"made by cluster {ident.describe()}; the target belongs to {owner.describe()}",
    )
