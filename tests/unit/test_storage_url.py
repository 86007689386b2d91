"""PGOPS_STORAGE_URL is parsed in one place (pgops.storage.url): settings refuse a bad URL with exit 2
and one line, and every backend is built from the same parsed location."""

from __future__ import annotations

from pathlib import Path

import pytest

from pgops.errors import ConfigError, ExitCode
from pgops.settings import build_settings
from pgops.storage import open_storage
from pgops.storage.local import LocalStorage
from pgops.storage.url import StorageLocation, parse_storage_url


@pytest.mark.parametrize(
    ("url", "needle"),
    [
        ("gs://bucket/../etc", "'..' parts"),
        ("s3://bucket/prod/../other", "'..' parts"),
        ("s3://bucket/prod/./x", "'..' parts"),
        ("gs://bucket/a//b", "'..' parts"),
        ("file:///var/backups/../../etc", "'..' parts"),
        ("file:///var/%2e%2e/etc", "'..' parts"),
        ("s3://bucket/pr\x01od", "control characters"),
        ("s3://bucket/prod?versionId=1", "'?' or '#'"),
        ("gs://bucket/prod#frag", "'?' or '#'"),
        ("s3://b/prod", "not a valid bucket name"),
        ("s3://Bucket_Name/prod", "not a valid bucket name"),
        ("s3://bucket:9000/prod", "not a valid bucket name"),
        ("gs:///prod", "names no bucket"),
        ("s3://key:secret@bucket/x", "credentials do not belong"),
        ("file://relative/path", "absolute path and no host"),
        ("ftp://host/x", "is not a storage URL"),
        ("bucket/prefix", "is not a storage URL"),
    ],
)
def test_bad_storage_urls_are_one_config_error(url: str, needle: str) -> None:
    with pytest.raises(ConfigError) as err:
        build_settings({}, {"PGOPS_STORAGE_URL": url})
    msg = str(err.value)
    assert needle in msg and msg.startswith("PGOPS_STORAGE_URL") and "\n" not in msg
    assert "secret" not in msg.replace("credential settings", "")
    assert err.value.exit_code == ExitCode.CONFIG


@pytest.mark.parametrize(
    ("url", "location"),
    [
        ("s3://acme-db-backups/prod/", StorageLocation("s3", "acme-db-backups", "prod/", "")),
        ("s3://acme-db-backups", StorageLocation("s3", "acme-db-backups", "", "")),
        ("gs://acme_backups.example.com/a/b", StorageLocation("gs", "acme_backups.example.com", "a/b/", "")),
        ("file:///var/backups/pgops/", StorageLocation("file", "", "", "/var/backups/pgops")),
        ("file://localhost/var/my%20backups", StorageLocation("file", "", "", "/var/my backups")),
    ],
)
def test_good_storage_urls(url: str, location: StorageLocation) -> None:
    assert parse_storage_url(url) == location
    assert build_settings({}, {"PGOPS_STORAGE_URL": url}).storage_url == url


def test_backends_are_built_from_the_parsed_location(tmp_path: Path) -> None:
    store = tmp_path / "my store"
    st = open_storage(build_settings({}, {"PGOPS_STORAGE_URL": store.as_uri() + "/"}))
    assert isinstance(st, LocalStorage) and st.root == store and st.url == f"file://{store}"
    with pytest.raises(ConfigError, match=r"'\.\.' parts"):
        LocalStorage((tmp_path / "x").as_uri() + "/../etc")
