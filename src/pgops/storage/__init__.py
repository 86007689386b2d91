"""Storage backends behind one interface (see base.py). Cloud SDKs are imported only when used."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pgops.storage.base import ObjectInfo, ObjectReader, ObjectWriter, Storage, WriteOptions
from pgops.storage.url import StorageLocation, parse_storage_url

if TYPE_CHECKING:
    from pgops.settings import Settings

__all__ = [
    "ObjectInfo",
    "ObjectReader",
    "ObjectWriter",
    "Storage",
    "StorageLocation",
    "WriteOptions",
    "open_storage",
    "parse_storage_url",
]


def open_storage(settings: Settings) -> Storage:
    """Build the backend named by PGOPS_STORAGE_URL."""
    location = parse_storage_url(settings.require_storage())
    if location.scheme == "file":
        from pgops.storage.local import LocalStorage

        return LocalStorage(location)
    if location.scheme == "s3":
        from pgops.storage.s3 import S3Storage

        return S3Storage.from_settings(location, settings)
    from pgops.storage.gcs import GCSStorage

    return GCSStorage.from_settings(location, settings)
