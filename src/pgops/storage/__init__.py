"""Storage backends behind one interface (see base.py). Cloud SDKs are imported only when used."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pgops.storage.base import ObjectInfo, ObjectReader, ObjectWriter, Storage, WriteOptions
from pgops.storage.config import BackendConfig, GCSConfig, S3Config, storage_config
from pgops.storage.url import StorageLocation, parse_storage_url

if TYPE_CHECKING:
    from pgops.settings import Settings

__all__ = [
    "BackendConfig",
    "GCSConfig",
    "ObjectInfo",
    "ObjectReader",
    "ObjectWriter",
    "S3Config",
    "Storage",
    "StorageLocation",
    "WriteOptions",
    "open_backend",
    "open_storage",
    "parse_storage_url",
    "storage_config",
]


def open_storage(settings: Settings) -> Storage:
    """Build the backend named by PGOPS_STORAGE_URL, from its own settings only (config.py)."""
    return open_backend(*storage_config(settings))


def open_backend(location: StorageLocation, config: BackendConfig) -> Storage:
    """The backend for `location`, configured by `config`: an S3Config for s3://, a GCSConfig for gs://, None
    for file://. A config of another backend is a TypeError (a bug), never a silently different store."""
    if location.scheme == "s3" and isinstance(config, S3Config):
        from pgops.storage.s3 import S3Storage

        return S3Storage(location, config)
    if location.scheme == "gs" and isinstance(config, GCSConfig):
        from pgops.storage.gcs import GCSStorage

        return GCSStorage(location, config)
    if location.scheme == "file" and config is None:
        from pgops.storage.local import LocalStorage

        return LocalStorage(location)
    raise TypeError(f"{location.url} cannot be opened with {type(config).__name__}")
