"""The Storage contract, run against every backend (local directory, moto S3) through `storage`."""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from pgops.errors import ObjectExists, ObjectNotFound, StorageError
from pgops.storage import Storage
from pgops.storage.local import LocalStorage
from pgops.storage.s3 import S3Storage
from tests.fixtures.objstore import store_leftovers as leftovers

MiB = 1024**2
PART = 5 * MiB  # the part size the fixtures configure (the S3 minimum)


def in_store(storage: Storage, key: str) -> str:
    """How `leftovers` names a committed key."""
    return key if isinstance(storage, LocalStorage) else storage.prefix + key  # type: ignore[attr-defined]


def chunks(data: bytes, seed: int = 1) -> Iterator[bytes]:
    """Uneven chunks, so part boundaries fall inside writes."""
    rnd = random.Random(seed)
    pos = 0
    while pos < len(data):
        n = rnd.randint(1, 2 * MiB)
        yield data[pos : pos + n]
        pos += n


def test_multipart_stream_round_trip(storage: Storage) -> None:
    data = os.urandom(int(3.5 * PART))
    writer = storage.open_writer("db/2026-01-01T00:00:00Z/app.dump.zst")
    for c in chunks(data):
        writer.write(c)
    assert not storage.exists(writer.key), "an object must not be visible before commit"
    info = writer.commit()
    assert info.key == "db/2026-01-01T00:00:00Z/app.dump.zst"
    assert info.size == len(data)
    assert info.modified.tzinfo is not None and info.modified.utcoffset() == dt.timedelta(0)

    reader = storage.open_reader(info.key)
    h = hashlib.sha256()
    while block := reader.read(256 * 1024):
        h.update(block)
    reader.close()
    assert h.hexdigest() == hashlib.sha256(data).hexdigest()
    assert hashlib.sha256(storage.get_bytes(info.key)).digest() == hashlib.sha256(data).digest()
    assert leftovers(storage) == [in_store(storage, info.key)]
    if isinstance(storage, S3Storage):  # 3.5 parts -> 3 full parts and a last half part
        etag = storage.client.head_object(Bucket=storage.bucket, Key=storage.prefix + info.key)["ETag"]
        assert etag.strip('"').endswith("-4")


def test_small_stream_round_trip(storage: Storage) -> None:
    data = os.urandom(PART - 1)
    writer = storage.open_writer("small")
    writer.write(data[:100])
    writer.write(data[100:])
    info = writer.commit()
    assert info.size == len(data)
    assert storage.get_bytes("small") == data
    if isinstance(storage, S3Storage):  # below one part: a single PutObject, not a multipart upload
        etag = storage.client.head_object(Bucket=storage.bucket, Key=storage.prefix + "small")["ETag"]
        assert etag.strip('"') == hashlib.md5(data, usedforsecurity=False).hexdigest()


def test_empty_object(storage: Storage) -> None:
    info = storage.open_writer("empty").commit()
    assert info.size == 0
    assert storage.get_bytes("empty") == b""


def test_existing_key_is_refused_and_unchanged(storage: Storage) -> None:
    storage.put_bytes("m/manifest.json", b"original")
    with pytest.raises(ObjectExists):
        storage.open_writer("m/manifest.json")
    with pytest.raises(ObjectExists):
        storage.put_bytes("m/manifest.json", b"replacement")
    assert storage.get_bytes("m/manifest.json") == b"original"
    assert leftovers(storage) == [in_store(storage, "m/manifest.json")]


@pytest.mark.parametrize("size", [100, int(2.5 * PART)], ids=["single", "multipart"])
def test_key_appearing_during_the_write_is_refused_at_commit(storage: Storage, size: int) -> None:
    first, second = os.urandom(size), os.urandom(size)
    w1 = storage.open_writer("race")
    w2 = storage.open_writer("race")  # both pass the check at open: the key does not exist yet
    w1.write(first)
    w1.commit()
    w2.write(second)
    with pytest.raises(ObjectExists):
        w2.commit()
    w2.abort()
    assert storage.get_bytes("race") == first
    assert leftovers(storage) == [in_store(storage, "race")]


def test_abort_leaves_nothing_behind(storage: Storage) -> None:
    writer = storage.open_writer("db/x/app.dump.zst")
    writer.write(os.urandom(int(2.5 * PART)))  # S3: two parts uploaded, the upload in progress
    writer.abort()
    writer.abort()  # idempotent
    assert list(storage.list()) == []
    assert leftovers(storage) == []
    assert not storage.exists("db/x/app.dump.zst")
    with pytest.raises(StorageError):
        writer.write(b"more")
    with pytest.raises(StorageError):
        writer.commit()


def test_exception_mid_stream_leaves_nothing(storage: Storage) -> None:
    def dump() -> Iterator[bytes]:
        yield from chunks(os.urandom(int(1.5 * PART)))
        raise RuntimeError("pg_dump died")

    writer = storage.open_writer("db/y/app.dump.zst")
    with pytest.raises(RuntimeError, match="pg_dump died"):
        try:
            for c in dump():
                writer.write(c)
            writer.commit()
        except BaseException:
            writer.abort()
            raise
    assert list(storage.list()) == []
    assert leftovers(storage) == []


def test_list_returns_relative_keys_and_skips_unfinished_writes(storage: Storage) -> None:
    for key, body in [("t/a/1", b"1"), ("t/a/22", b"22"), ("t/b/333", b"333"), ("top", b"")]:
        storage.put_bytes(key, body)
    pending = storage.open_writer("t/a/pending")
    pending.write(os.urandom(PART + 1))  # local: a temp file in t/a/; S3: a multipart upload
    try:
        if isinstance(storage, LocalStorage):
            assert any(".pgops-tmp" in name or "pgops-tmp" in name for name in leftovers(storage))
        infos = {i.key: i for i in storage.list()}
        assert set(infos) == {"t/a/1", "t/a/22", "t/b/333", "top"}
        assert [infos[k].size for k in ("t/a/1", "t/a/22", "t/b/333", "top")] == [1, 2, 3, 0]
        assert all(i.modified.utcoffset() == dt.timedelta(0) for i in infos.values())
        assert {i.key for i in storage.list("t/a/")} == {"t/a/1", "t/a/22"}
        assert {i.key for i in storage.list("t/a/2")} == {"t/a/22"}
        assert {i.key for i in storage.list("t/")} == {"t/a/1", "t/a/22", "t/b/333"}
        assert list(storage.list("nothing/")) == []
    finally:
        pending.abort()


def test_delete(storage: Storage) -> None:
    storage.put_bytes("d/e/f", b"x")
    storage.put_bytes("d/keep", b"y")
    storage.delete("d/e/f")
    assert not storage.exists("d/e/f")
    assert [i.key for i in storage.list()] == ["d/keep"]
    with pytest.raises(ObjectNotFound):
        storage.get_bytes("d/e/f")
    with pytest.raises(ObjectNotFound):
        storage.delete("d/e/f")
    storage.delete("d/keep")
    assert leftovers(storage) == []
    if isinstance(storage, LocalStorage):  # empty parents pruned, the root kept
        assert storage.root.is_dir() and list(storage.root.iterdir()) == []


def test_missing_key(storage: Storage) -> None:
    with pytest.raises(ObjectNotFound):
        storage.get_bytes("no/such/key")
    with pytest.raises(ObjectNotFound):
        storage.open_reader("no/such/key")
    assert not storage.exists("no/such/key")


@pytest.mark.parametrize("key", ["", "/abs", "../escape", "a/../../b", "a//b", "a/./b", "a/.x.pgops-tmp-1"])
def test_invalid_keys_are_refused(storage: Storage, key: str) -> None:
    with pytest.raises(StorageError, match="invalid object key"):
        storage.put_bytes(key, b"x")
    with pytest.raises(StorageError, match="invalid object key"):
        storage.open_writer(key)
    with pytest.raises(StorageError, match="invalid object key"):
        storage.get_bytes(key)
    assert leftovers(storage) == []


def test_check_passes_and_leaves_nothing(storage: Storage) -> None:
    storage.check()
    assert leftovers(storage) == []


def test_commit_twice_is_refused(storage: Storage) -> None:
    writer = storage.open_writer("once")
    writer.write(b"x")
    writer.commit()
    with pytest.raises(StorageError):
        writer.commit()
    writer.abort()  # after commit: a no-op that must not remove the object
    assert storage.get_bytes("once") == b"x"


# ---- local only --------------------------------------------------------------------------------------


def test_local_check_creates_a_missing_root(tmp_path: Path) -> None:
    storage = LocalStorage((tmp_path / "a" / "b").as_uri())
    storage.check()
    assert storage.root.is_dir() and list(storage.root.iterdir()) == []


def test_local_check_names_the_setting_when_the_root_is_unusable(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    storage = LocalStorage((blocker / "store").as_uri())
    with pytest.raises(StorageError, match=r"PGOPS_STORAGE_URL=.*not-a-dir") as err:
        storage.check()
    assert "\n" not in str(err.value)


def test_local_objects_are_private(tmp_path: Path) -> None:
    storage = LocalStorage((tmp_path / "store").as_uri())
    storage.put_bytes("t/dump", b"secret rows")
    assert (storage.root / "t" / "dump").stat().st_mode & 0o077 == 0
    assert (storage.root / "t").stat().st_mode & 0o077 == 0
