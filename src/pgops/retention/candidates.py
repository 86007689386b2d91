"""Retention input: the backup directories under a target, each with its objects and its state.

What is planned
    A *candidate* is one backup directory `<target>/<group>/<backup-id>/` (group: a database key or
    `@globals`) with every object listed under it. Its state comes from its objects and its manifest:

    good        readable manifest, status ok, and every object the manifest names is listed with the
                recorded size. Only good backups count toward any keep rule.
    failed      readable manifest whose status is not ok.
    incomplete  status ok, but an object it names is missing or has another size (e.g. half-deleted).
    unreadable  manifest.json is listed but cannot be read or parsed (treated as incomplete).
    orphan      objects without manifest.json: a killed run's leftovers, or a run still in progress.
    foreign     a manifest this pgops does not understand (a newer format_version) or whose recorded
                target, kind, database or id disagrees with where it is stored. Never counted, never
                deleted: it is not ours to judge.

Keys directly under the target that do not fit `<target>/<group>/<backup-id>/<name>` are returned
apart and are never deleted.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from collections import defaultdict
from collections.abc import Callable, Iterable

from pgops.errors import IntegrityError, ObjectNotFound
from pgops.manifest import (
    FORMAT_VERSION,
    GLOBALS_KEY,
    KIND_DATABASE,
    KIND_GLOBALS,
    MANIFEST_NAME,
    STATUS_OK,
    Manifest,
    database_from_key,
    database_key,
)
from pgops.storage.base import ObjectInfo

GOOD = "good"
FAILED = "failed"
INCOMPLETE = "incomplete"
UNREADABLE = "unreadable"
ORPHAN = "orphan"
FOREIGN = "foreign"
STATES = (GOOD, FAILED, INCOMPLETE, UNREADABLE, ORPHAN, FOREIGN)


@dataclasses.dataclass(frozen=True)
class Candidate:
    """One backup directory and everything listed under it."""

    target: str
    group: str  # database key, or "@globals"
    backup_id: str
    objects: tuple[ObjectInfo, ...]  # sorted by key
    state: str
    manifest: Manifest | None = None  # set for good, failed and incomplete
    detail: str = ""  # why it is not good
    named_keys: frozenset[str] = frozenset()  # keys its manifest names (for a foreign one: any key-like string)

    @property
    def prefix(self) -> str:
        return f"{self.target}/{self.group}/{self.backup_id}"

    @property
    def manifest_key(self) -> str:
        return f"{self.prefix}/{MANIFEST_NAME}"

    @property
    def has_manifest(self) -> bool:
        return any(o.key == self.manifest_key for o in self.objects)

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


def _classify(
    target: str,
    group: str,
    backup_id: str,
    objects: tuple[ObjectInfo, ...],
    *,
    read: Callable[[str], bytes],
    sizes: dict[str, int],
) -> Candidate:
    base = Candidate(target, group, backup_id, objects, ORPHAN, detail="no manifest.json")
    if not base.has_manifest:
        return base
    parsed = _parse_manifest(base, read)
    if isinstance(parsed, Candidate):
        return parsed
    named = frozenset(o.key for o in parsed.objects)
    return _check_objects(dataclasses.replace(base, manifest=parsed, named_keys=named), sizes)


def _parse_manifest(base: Candidate, read: Callable[[str], bytes]) -> Manifest | Candidate:
    """The manifest, or the candidate as unreadable or foreign."""
    try:
        data = read(base.manifest_key)
    except ObjectNotFound:
        return dataclasses.replace(base, state=UNREADABLE, detail="manifest.json vanished while it was read")
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
        return dataclasses.replace(base, state=UNREADABLE, detail=str(e))
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
    return m


def _check_objects(c: Candidate, sizes: dict[str, int]) -> Candidate:
    """failed, incomplete (an object it names is not listed, or has another size), or good."""
    m = c.manifest
    assert m is not None
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


def candidates_from_listing(
    listing: Iterable[ObjectInfo], read: Callable[[str], bytes]
) -> tuple[list[Candidate], list[str]]:
    """Group a listing into backup directories and classify each; `read` fetches a manifest's bytes.

    Returns (candidates sorted by directory, keys that fit no backup directory: never deleted).
    Storage errors other than ObjectNotFound propagate: nothing is planned on a partial view.
    """
    dirs: dict[tuple[str, str, str], list[ObjectInfo]] = defaultdict(list)
    stray: list[str] = []
    sizes: dict[str, int] = {}
    for info in listing:
        sizes[info.key] = info.size
        parts = info.key.split("/", 3)
        if len(parts) < 4:
            stray.append(info.key)
            continue
        dirs[(parts[0], parts[1], parts[2])].append(info)
    out = [
        _classify(t, g, i, tuple(sorted(objs, key=lambda o: o.key)), read=read, sizes=sizes)
        for (t, g, i), objs in sorted(dirs.items())
    ]
    return out, sorted(stray)
