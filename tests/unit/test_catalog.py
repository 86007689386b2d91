"""The catalog's classification rules that the integration tests cannot reach cheaply: the exact layout
pgops owns, cluster lineage with racing and wrong claims, safety copies and unreadable manifests."""

from __future__ import annotations

import dataclasses
import datetime as dt

from pgops.catalog import FOREIGN, GOOD, OTHER_CLUSTER, UNREADABLE, Catalog, is_backup_object_name, is_group
from pgops.cluster import Claim, ClusterIdentity, lineage
from pgops.manifest import REASON_SAFETY, manifest_key
from pgops.retention import Policy, plan
from pgops.retention.planner import REASON_SAFETY_KEPT, REASON_SAFETY_OLD, REASON_UNREADABLE_ONLY
from tests.unit.test_retention_plan import DAY, HOUR, NOW, TARGET, Store, bid, decisions, make_manifest

A = ClusterIdentity("7000000000000000001", 15, "/var/lib/postgresql/15/main", 5432, "db1")
B = ClusterIdentity("7000000000000000002", 15, "/var/lib/postgresql/15/other", 5433, "db1")


def claim_of(ident: ClusterIdentity, at: dt.datetime, replaces: str | None, suffix: str = "aaaaaa") -> Claim:
    return Claim(f"{TARGET}/@cluster/{bid(at, suffix)}.json", ident, at, replaces, "test")


def test_only_pgops_layout_is_classified_everything_else_is_ignored() -> None:
    assert is_group("@globals") and is_group("app") and is_group("my%20db")
    assert not is_group("my db") and not is_group("%zz") and not is_group("%41")  # 'A' is never encoded
    assert is_backup_object_name("dump.pgc.zst.age") and is_backup_object_name("verified-20261101T000000Z-quick.json")
    assert not is_backup_object_name("old.sql") and not is_backup_object_name("manifest.json.bak")
    s = Store()
    s.add("app", bid(NOW - DAY), NOW - DAY)
    foreign_keys = [
        f"{TARGET}/archive/2023/old.sql",  # an operator's folder: id does not match
        f"{TARGET}/inner/app/{bid(NOW - DAY)}/manifest.json",  # a nested pgops: five parts
        f"{TARGET}/app/{bid(NOW - DAY, 'bbbbbb')}/notes.txt",  # right place, unknown name
        f"{TARGET}/app/20261119T120000Z-ABCDEF/dump.pgc.zst",  # upper-case id is not ours
    ]
    for k in foreign_keys:
        s.put(k, b"x", NOW - 400 * DAY)
    cands, ignored = s.candidates()
    assert [c.state for c in cands] == [GOOD]
    assert ignored == sorted(foreign_keys)
    p = plan(cands, Policy(max_age=dt.timedelta(hours=1)), NOW + 900 * DAY, ignored_keys=ignored)
    assert not set(foreign_keys) & set(p.delete_keys)


def test_lineage_first_claim_wins_and_takeovers_must_name_the_owner() -> None:
    t = NOW - 10 * DAY
    first = claim_of(A, t, None)
    racing = claim_of(B, t + dt.timedelta(seconds=1), None, "bbbbbb")  # two first backups raced: B lost
    duplicate = claim_of(A, t + HOUR, None, "cccccc")
    wrong = claim_of(B, t + 2 * HOUR, "123", "dddddd")  # names an owner that is not the owner
    adopt = claim_of(B, t + 3 * HOUR, A.system_identifier, "eeeeee")
    assert lineage([racing, first, duplicate, wrong]) == (first,)
    assert lineage([adopt, wrong, racing, duplicate, first]) == (first, adopt)
    assert lineage([claim_of(B, t, A.system_identifier)]) == ()  # a takeover of nobody is invalid


def test_backups_of_a_cluster_outside_the_lineage_are_other_cluster_and_never_deleted() -> None:
    s = Store()
    for ident, when, suffix in ((A, NOW - 2 * DAY, "aaaaaa"), (B, NOW - DAY, "bbbbbb")):
        m = dataclasses.replace(make_manifest("app", bid(when, suffix), when), cluster=ident.to_json())
        s.put(m.objects[0].key, b"x" * 10, when)
        s.put(manifest_key(TARGET, "app", m.id), m.dumps(), when)
    c = claim_of(A, NOW - 3 * DAY, None)
    s.put(c.key, c.dumps(), NOW - 3 * DAY)
    catalog = Catalog.from_listing(s.objects.values(), s.read)
    assert {b.backup_id[-6:]: b.state for b in catalog.backups} == {"aaaaaa": GOOD, "bbbbbb": OTHER_CLUSTER}
    assert catalog.pick(database="app").id.endswith("aaaaaa")  # B's is newer, but never 'latest'
    p = plan(catalog.backups, Policy(max_age=dt.timedelta(hours=1)), NOW + 100 * DAY)
    assert decisions(p)[bid(NOW - DAY, "bbbbbb")][0]
    adopt = claim_of(B, NOW - 12 * HOUR, A.system_identifier, "cccccc")
    s.put(adopt.key, adopt.dumps(), NOW - 12 * HOUR)
    both = Catalog.from_listing(s.objects.values(), s.read)
    assert [b.state for b in both.backups] == [GOOD, GOOD]
    assert both.owner(TARGET) is not None and both.owner(TARGET).identity == B  # type: ignore[union-attr]


def test_safety_copies_have_their_own_rule_and_are_never_latest() -> None:
    s = Store()
    scheduled = bid(NOW - 2 * DAY)
    s.add("app", scheduled, NOW - 2 * DAY)
    safety = dataclasses.replace(make_manifest("app", bid(NOW - DAY, "5afe00"), NOW - DAY), reason=REASON_SAFETY)
    s.put(safety.objects[0].key, b"x" * 10, NOW - DAY)
    s.put(manifest_key(TARGET, "app", safety.id), safety.dumps(), NOW - DAY)
    policy = Policy(keep_last=1, keep_safety=dt.timedelta(days=14))
    d = decisions(s.plan(policy))
    assert d[scheduled][0] and d[safety.id] == (True, (REASON_SAFETY_KEPT,))
    assert Catalog.from_listing(s.objects.values(), s.read).pick(database="app").id == scheduled
    later = decisions(s.plan(policy, NOW + 14 * DAY))
    assert later[safety.id] == (False, (REASON_SAFETY_OLD,)) and later[scheduled][0]


def test_an_unreadable_manifest_is_kept_until_a_newer_good_backup_exists() -> None:
    s = Store()
    s.add("app", bid(NOW - 10 * DAY), NOW - 10 * DAY)
    rotten = s.add("app", bid(NOW - 5 * DAY, "b0b0b0"), NOW - 5 * DAY, UNREADABLE)
    d = {x.candidate.prefix: x for x in s.plan(Policy(grace_period=36 * HOUR)).decisions}
    assert d[rotten].keep and d[rotten].reasons[0] == REASON_UNREADABLE_ONLY
    s.add("app", bid(NOW - DAY, "c0c0c0"), NOW - DAY)
    d = {x.candidate.prefix: x for x in s.plan(Policy(grace_period=36 * HOUR)).decisions}
    assert not d[rotten].keep and d[rotten].delete_keys[-1].endswith("/manifest.json")


def test_the_copy_stands_in_for_a_rotten_manifest_and_a_newer_format_is_left_alone() -> None:
    s = Store()
    prefix = s.add("app", bid(NOW - DAY), NOW - DAY)
    good_bytes = s.data[prefix + "/manifest.json"]
    s.put(prefix + "/manifest.json.copy", good_bytes, NOW - DAY)
    s.put(prefix + "/manifest.json", b"\x00rotten", NOW - DAY)
    (c,), _ = s.candidates()
    assert c.state == GOOD and c.deletion_order[-2:] == (prefix + "/manifest.json.copy", prefix + "/manifest.json")
    s.put(prefix + "/manifest.json", b'{"format_version": 9, "objects": []}', NOW - DAY)
    (c,), _ = s.candidates()
    assert c.state == FOREIGN  # a newer pgops wrote it: not ours to judge, even with a readable copy


def test_a_backup_run_reads_only_the_newest_manifests() -> None:
    """A run needs the owner and the newest good backup: with 200 backups stored it reads two manifests
    (the newest, failed, and the one before it), not all of them."""
    s = Store()
    for i in range(200):
        s.add("app", bid(NOW - (200 - i) * HOUR, f"{i:06x}"), NOW - (200 - i) * HOUR)
    failed = s.add("app", bid(NOW, "ffffff"), NOW, "failed")
    reads: list[str] = []

    def read(key: str) -> bytes:
        reads.append(key)
        return s.read(key)

    c = Catalog.from_listing(s.objects.values(), read, TARGET, newest_only=True)
    assert len(reads) == 2 and reads[0].startswith(failed)
    newest = c.newest_good()
    assert newest is not None and newest.backup_id == bid(NOW - HOUR, f"{199:06x}")
