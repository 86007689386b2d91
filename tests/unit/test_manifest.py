from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Iterator

import pytest

from pgops.catalog import Catalog
from pgops.errors import BackupNotFound, IntegrityError
from pgops.manifest import Manifest, StoredObject, database_from_key, database_key, manifest_key
from pgops.storage.base import ObjectInfo


def make(id_: str, started: dt.datetime, database: str | None = "app", status: str = "ok") -> Manifest:
    return Manifest(
        id=id_,
        kind="database" if database else "globals",
        target="h",
        database=database,
        status=status,
        started_at=started,
        finished_at=started + dt.timedelta(seconds=5),
        objects=(StoredObject(f"h/app/{id_}/dump.pgc.zst", "dump", 10, "a" * 64, 20, "b" * 64),),
        server_version="15.1",
        server_version_num=150001,
        tool_version="pg_dump 15",
        dump_format="custom",
        compression={"algorithm": "zstd", "level": 3, "threads": 0},
        encryption={"algorithm": "none"},
        host="h",
        engine_version="0.1.0",
    )


@pytest.mark.parametrize("name", ["app", 'we"ird', "with space", "../etc", "a/b", "☃", "@globals", ".", "Mixed"])
def test_database_key_is_safe_and_reversible(name: str) -> None:
    key = database_key(name)
    assert database_from_key(key) == name
    assert "/" not in key and key not in (".", "..") and not key.startswith("@")


def test_manifest_round_trip_and_unreadable() -> None:
    m = make("20260101T000000Z-aaaaaa", dt.datetime(2026, 1, 1, tzinfo=dt.UTC))
    back = Manifest.loads(m.dumps(), "h/app/x/manifest.json")
    assert dataclasses.replace(back, key="") == m
    for bad in (b"{not json", b"{}", b'{"format_version": 99}', b"[]"):
        with pytest.raises(IntegrityError):
            Manifest.loads(bad, "k")


class FakeStore:
    """Only to feed Catalog ordering logic; storage itself is tested against real backends."""

    def __init__(self, manifests: dict[str, bytes]) -> None:
        self.data = manifests

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        for k, v in self.data.items():
            yield ObjectInfo(k, len(v), dt.datetime.now(dt.UTC))

    def get_bytes(self, key: str) -> bytes:
        return self.data[key]


def test_latest_is_by_recorded_start_time_not_key_order() -> None:
    t = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    # ids that sort the wrong way (clock skew on the host that named them)
    newer = make("20250101T000000Z-eeeeee", t + dt.timedelta(days=1))
    older = make("20270101T000000Z-aaaaaa", t)
    failed = make("20260105T000000Z-ffffff", t + dt.timedelta(days=5), status="failed")
    store = FakeStore({manifest_key("h", "app", m.id): m.dumps() for m in (newer, older, failed)})
    store.data.update({m.objects[0].key: b"x" * 10 for m in (newer, older, failed)})
    store.data["h/app/20260106T000000Z-bbbbbb/manifest.json"] = b"garbage"
    cat = Catalog.load(store, "h")  # type: ignore[arg-type]
    assert cat.pick(database="app").id == newer.id
    assert cat.pick(database="app", before=t + dt.timedelta(hours=1)).id == older.id
    assert cat.unreadable == ("h/app/20260106T000000Z-bbbbbb/manifest.json",)
    with pytest.raises(BackupNotFound):
        cat.pick(database="other")
