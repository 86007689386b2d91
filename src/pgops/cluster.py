"""Which PostgreSQL cluster owns a target: identities and the lineage of claims.

A target belongs to one cluster, identified by its system identifier (pg_control_system(); pgBackRest's
stanza records the same). The first backup into a target writes a claim naming its cluster:

    <target>/@cluster/<YYYYMMDDTHHMMSSZ-xxxxxx>.json    {cluster: {system_identifier, major, data_directory,
                                                          port, host}, claimed_at, replaces, reason}

A later claim is valid only if it names the current owner in `replaces` (`pgops adopt --replaces SYSID`:
a DR rebuild, a major upgrade). The valid claims, oldest first, are the lineage; their backups form one
history. A conflicting claim (two first backups racing, an adopt that named the wrong owner) is ignored:
the earliest valid claim wins, by recorded time and then key, the same on every host.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import re
from collections.abc import Callable, Iterable
from typing import Any

from pgops.errors import IntegrityError, ObjectNotFound
from pgops.manifest import FORMAT_VERSION, Manifest, iso, new_backup_id, parse_time
from pgops.storage.base import Storage, WriteOptions

log = logging.getLogger(__name__)

CLUSTER_GROUP = "@cluster"
CLAIM_RE = re.compile(r"^[0-9]{8}T[0-9]{6}Z-[0-9a-f]{6}\.json$")
Reader = Callable[[str], bytes]


@dataclasses.dataclass(frozen=True)
class ClusterIdentity:
    """Who made a backup: the system identifier decides; the rest are hints for people."""

    system_identifier: str
    major: int
    data_directory: str | None = None
    port: int | None = None
    host: str | None = None

    def describe(self) -> str:
        hints = [f"PostgreSQL {self.major}"]
        if self.data_directory:
            hints.append(self.data_directory)
        if self.port:
            hints.append(f"port {self.port}")
        if self.host:
            hints.append(f"host {self.host}")
        return f"{self.system_identifier} ({', '.join(hints)})"

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ClusterIdentity:
        port = d.get("port")
        return cls(
            system_identifier=str(d["system_identifier"]),
            major=int(d["major"]),
            data_directory=d.get("data_directory") or None,
            port=int(port) if port else None,
            host=d.get("host") or None,
        )


def identity_of(m: Manifest) -> ClusterIdentity | None:
    """The identity a manifest records; None for manifests written before identities were recorded."""
    if not m.cluster:
        return None
    try:
        return ClusterIdentity.from_json(m.cluster)
    except (KeyError, TypeError, ValueError):
        return None


@dataclasses.dataclass(frozen=True)
class Claim:
    """`<target>/@cluster/<stamp>-<hex>.json`: this cluster owns the target from `at` on."""

    key: str
    identity: ClusterIdentity
    at: dt.datetime
    replaces: str | None  # the system identifier of the owner this claim took over from
    reason: str

    def dumps(self) -> bytes:
        d = {
            "format_version": FORMAT_VERSION,
            "cluster": self.identity.to_json(),
            "claimed_at": iso(self.at),
            "replaces": self.replaces,
            "reason": self.reason,
        }
        return (json.dumps(d, indent=2, sort_keys=True) + "\n").encode()

    @classmethod
    def loads(cls, data: bytes, key: str) -> Claim:
        try:
            d = json.loads(data)
            return cls(
                key=key,
                identity=ClusterIdentity.from_json(d["cluster"]),
                at=parse_time(d["claimed_at"]),
                replaces=None if d.get("replaces") is None else str(d["replaces"]),
                reason=str(d.get("reason") or ""),
            )
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise IntegrityError(f"{key}: unreadable cluster claim ({type(e).__name__}: {e})") from None


def lineage(claims: Iterable[Claim]) -> tuple[Claim, ...]:
    """The valid claims, oldest first: the first one that replaces nothing, then each that replaces the
    owner of its time. Conflicting claims are left out (and logged)."""
    valid: list[Claim] = []
    for c in sorted(claims, key=lambda c: (c.at, c.key)):
        owner = valid[-1].identity.system_identifier if valid else None
        if c.identity.system_identifier == owner:
            continue  # the owner claimed twice (two of its runs raced): harmless
        if c.replaces == owner:
            valid.append(c)
            continue
        log.warning(
            "event=cluster_claim_ignored key=%s cluster=%s replaces=%s owner=%s",
            c.key,
            c.identity.system_identifier,
            c.replaces or "-",
            owner or "-",
        )
    return tuple(valid)


def read_claims(keys: list[str], read: Reader) -> list[Claim]:
    out = []
    for key in keys:
        try:
            out.append(Claim.loads(read(key), key))
        except ObjectNotFound:
            continue
        except IntegrityError as e:
            log.warning("event=cluster_claim_unreadable key=%s error=%r", key, str(e))
    return out


def claim(
    storage: Storage, target: str, identity: ClusterIdentity, *, at: dt.datetime, replaces: str | None, reason: str
) -> Claim:
    """Write a claim (create-only), then read the lineage back: the caller checks who won."""
    key = f"{target}/{CLUSTER_GROUP}/{new_backup_id(at)}.json"
    c = Claim(key, identity, at, replaces, reason)
    storage.put_bytes(key, c.dumps(), WriteOptions(content_type="application/json"))
    log.info(
        "event=cluster_claimed target=%s cluster=%s replaces=%s key=%s",
        target,
        identity.system_identifier,
        replaces or "-",
        key,
    )
    return c


def load_lineage(storage: Storage, target: str) -> tuple[Claim, ...]:
    """Only the claims of a target (one small listing), for commands that need nothing else."""
    prefix = f"{target}/{CLUSTER_GROUP}/"
    keys = [i.key for i in storage.list(prefix) if CLAIM_RE.match(i.key[len(prefix) :])]
    return lineage(read_claims(keys, storage.get_bytes))
