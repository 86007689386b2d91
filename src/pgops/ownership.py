"""One cluster per target, and a clock that does not go backwards.

A target holds the backups of one PostgreSQL cluster, identified by its system identifier (what
pgBackRest's stanza records too). The first backup claims the target for its cluster; every later
backup (and the safety copy of restore --replace) must come from the owner, or it is refused with
ClusterMismatch (exit 2) before anything is written. When a cluster really replaced the owner (a DR
rebuild onto a new host, pg_upgrade to a new major version), `pgops adopt --replaces SYSID` records
that once; both clusters' backups then form one history (catalog.py, Lineage).

A backup that would start before the newest good backup of its target is refused with ClockBehind:
a clock running behind would otherwise make the newest backup sort as the oldest.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import logging

from pgops.catalog import Catalog
from pgops.cluster import Claim, ClusterIdentity, claim, identity_of, load_lineage
from pgops.errors import ClockBehind, ClusterMismatch, ConfigError, PgOpsError
from pgops.manifest import iso, utcnow
from pgops.storage.base import Storage

log = logging.getLogger(__name__)


def _mismatch(target: str, owner: ClusterIdentity, ours: ClusterIdentity) -> ClusterMismatch:
    return ClusterMismatch(
        f"PGOPS_TARGET={target!r} belongs to cluster {owner.describe()}, but this server is cluster "
        f"{ours.describe()}; nothing was written. Give this cluster its own PGOPS_TARGET, or, if it replaced "
        f"that one (a rebuild, a major upgrade), run `pgops adopt --replaces {owner.system_identifier}` once"
    )


def ensure_owner(storage: Storage, target: str, identity: ClusterIdentity, catalog: Catalog) -> None:
    """A target holds one cluster's backups. Claim an unclaimed target (unless its newest backup was made
    by another cluster), then make sure the owner is this cluster. ClusterMismatch otherwise."""
    owner = catalog.owner(target)
    if owner is None:
        newest = catalog.newest_good()
        made_by = identity_of(newest.manifest) if newest is not None and newest.manifest is not None else None
        if made_by is not None and made_by.system_identifier != identity.system_identifier:
            raise _mismatch(target, made_by, identity)
        ours = claim(storage, target, identity, at=utcnow(), replaces=None, reason="first backup of this cluster")
        chain = load_lineage(storage, target)  # two first backups may race: the earliest claim wins
        owner = chain[-1] if chain else None
        if owner is not None and owner.identity.system_identifier != identity.system_identifier:
            _withdraw(storage, ours)
    if owner is None or owner.identity.system_identifier != identity.system_identifier:
        raise _mismatch(target, owner.identity if owner else identity, identity)


def _withdraw(storage: Storage, lost: Claim) -> None:
    """Remove the claim this run wrote and lost (only that key): it would be ignored, and noisy, forever."""
    with contextlib.suppress(PgOpsError):
        storage.delete(lost.key)
        log.info("event=cluster_claim_withdrawn key=%s", lost.key)


def check_clock(catalog: Catalog, target: str, now: dt.datetime) -> None:
    """Refuse a backup that would start before the newest good backup of the target (a clock running
    behind would make the newest backup sort as the oldest)."""
    newest = catalog.newest_good()
    if newest is not None and newest.started_at is not None and newest.started_at > now:
        raise ClockBehind(
            f"this host's clock says {iso(now)}, before the newest good backup of PGOPS_TARGET={target!r} "
            f"({newest.prefix}, started {iso(newest.started_at)}); fix the clock (NTP), or pass "
            "--allow-clock-behind to back up anyway"
        )


@dataclasses.dataclass(frozen=True)
class AdoptResult:
    claim: Claim | None  # None: this cluster already owned the target
    previous: ClusterIdentity
    identity: ClusterIdentity


def adopt(storage: Storage, target: str, identity: ClusterIdentity, replaces: str, reason: str) -> AdoptResult:
    """Record that `identity` replaced the cluster `replaces` as the owner of `target`.

    Compare-and-set: `replaces` must name the current owner, so an adopt never takes a target from a
    cluster the operator did not mean."""
    chain = load_lineage(storage, target)
    if not chain:
        raise ConfigError(
            f"PGOPS_TARGET={target!r} has no owner yet; the first `pgops backup` claims it, no adopt is needed"
        )
    owner = chain[-1].identity
    if owner.system_identifier == identity.system_identifier:
        log.info("event=adopt_noop target=%s cluster=%s", target, identity.system_identifier)
        return AdoptResult(None, owner, identity)
    if replaces != owner.system_identifier:
        raise ConfigError(
            f"--replaces={replaces!r} does not name the owner of PGOPS_TARGET={target!r}, which is cluster "
            f"{owner.describe()}; valid: --replaces {owner.system_identifier}"
        )
    c = claim(storage, target, identity, at=utcnow(), replaces=replaces, reason=reason)
    now_owner = load_lineage(storage, target)[-1].identity
    if now_owner.system_identifier != identity.system_identifier:  # another adopt won the race
        _withdraw(storage, c)
        raise _mismatch(target, now_owner, identity)
    log.info(
        "event=adopted target=%s cluster=%s replaces=%s reason=%s",
        target,
        identity.system_identifier,
        replaces,
        reason,
    )
    return AdoptResult(c, owner, identity)
