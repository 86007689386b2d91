"""Storage backends behind one interface (see base.py). Cloud SDKs are imported only when used."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pgops.errors import ConfigError
from pgops.storage.base import ObjectInfo, ObjectReader, ObjectWriter, Storage, WriteOptions

if TYPE_CHECKING:
    from pgops.settings import Settings

__all__ = ["ObjectInfo", "ObjectReader", "ObjectWriter", "Storage", "WriteOptions", "open_storage"]


def open_storage(settings: Settings) -> Storage:
    """Build the backend named by PGOPS_STORAGE_URL."""
    url = settings.require_storage()
    scheme = url.split("://", 1)[0].lower()
    if scheme == "file":
        from pgops.storage.local import LocalStorage

        return LocalStorage(url)
    if scheme == "s3":
        from pgops.storage.s3 import S3Storage

        return S3Storage.from_settings(url, settings)
    if scheme == "gs":
        from pgops.storage.gcs import GCSStorage

        return GCSStorage.from_settings(url, settings)
    raise ConfigError(f"PGOPS_STORAGE_URL={url!r}: scheme {scheme!r} is not supported; valid: s3, gs, file")
