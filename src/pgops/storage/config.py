"""Each backend's settings, typed: the one place storage code reads `Settings`.

`storage_config(settings)` parses PGOPS_STORAGE_URL (url.py) and builds the config of the backend it
names; backends (s3.py, gcs.py), their clients (s3_client.py, gcs_client.py) and writers see only that
config, never the whole Settings (database, retention, age keys, the other backend's credentials).

The configs are frozen and hold exactly what their backend uses. Secrets stay `Secret`s, so `repr()` of a
config (in a log line or a traceback) never shows them. Values that only one backend understands are
checked here, with the same ConfigError (exit 2) naming the setting as before, before any client is built.
"""

from __future__ import annotations

import dataclasses
import re
from typing import TYPE_CHECKING, TypeAlias

from pgops.errors import ConfigError
from pgops.settings import Secret
from pgops.storage.url import StorageLocation, parse_storage_url

if TYPE_CHECKING:
    from pgops.settings import Settings

GCS_STORAGE_CLASSES = ("STANDARD", "NEARLINE", "COLDLINE", "ARCHIVE", "MULTI_REGIONAL", "REGIONAL")
_GCS_KMS_KEY_RE = re.compile(r"^projects/[^/]+/locations/[^/]+/keyRings/[^/]+/cryptoKeys/[^/]+$")


@dataclasses.dataclass(frozen=True)
class S3Config:
    """PGOPS_S3_*: what S3Storage, its boto3 client and its multipart writer use."""

    endpoint_url: str  # as given: s3_client.normalise_endpoint adds the scheme or refuses it
    region: str  # "": the SDK default chain, else us-east-1
    access_key_id: str  # "": the SDK default chain
    secret_access_key: Secret
    session_token: Secret
    verify_tls: bool
    ca_bundle: str  # "": the SDK's CA bundle
    addressing_style: str  # auto | path | virtual
    max_attempts: int  # per request or part, the first try included
    request_checksum: str  # boto3 request_checksum_calculation
    part_size: int  # the first multipart part size, in bytes
    conditional_writes: bool  # If-None-Match: * on every write
    storage_class: str  # "": the bucket default
    sse: str  # none | aes256 | aws:kms
    sse_kms_key_id: str  # aws:kms only; "": the AWS-managed key


@dataclasses.dataclass(frozen=True)
class GCSConfig:
    """PGOPS_GCS_*: what GCSStorage, its client and its resumable writer use."""

    endpoint_url: str  # as given: gcs_client.resolve_endpoint adds the scheme or refuses it
    project: str  # "": taken from the credentials
    credentials_file: str  # "": the emulator's anonymous credentials, or Application Default Credentials
    kms_key_name: str  # CMEK for new objects, checked: projects/P/locations/L/keyRings/R/cryptoKeys/K; "": none
    storage_class: str  # upper case, one of GCS_STORAGE_CLASSES; "": the bucket default
    chunk_size: int  # resumable upload chunk, a multiple of 256 KiB
    max_attempts: int  # per request or chunk, the first try included


BackendConfig: TypeAlias = S3Config | GCSConfig | None  # None: a local directory (file://), which needs no settings


def storage_config(settings: Settings) -> tuple[StorageLocation, BackendConfig]:
    """Where backups go (PGOPS_STORAGE_URL) and the config of the backend it names."""
    location = parse_storage_url(settings.require_storage())
    if location.scheme == "s3":
        return location, s3_config(settings)
    if location.scheme == "gs":
        return location, gcs_config(settings)
    return location, None


def s3_config(s: Settings) -> S3Config:
    return S3Config(
        endpoint_url=s.s3_endpoint_url,
        region=s.s3_region,
        access_key_id=s.s3_access_key_id,
        secret_access_key=s.s3_secret_access_key,
        session_token=s.s3_session_token,
        verify_tls=s.s3_verify_tls,
        ca_bundle=s.s3_ca_bundle,
        addressing_style=s.s3_addressing_style,
        max_attempts=s.s3_max_attempts,
        request_checksum=s.s3_request_checksum,
        part_size=s.s3_part_size,
        conditional_writes=s.s3_conditional_writes,
        storage_class=s.s3_storage_class,
        sse=s.s3_sse,
        sse_kms_key_id=s.s3_sse_kms_key_id,
    )


def gcs_config(s: Settings) -> GCSConfig:
    """ConfigError (exit 2) for a storage class or KMS key name GCS would refuse, before any client exists."""
    storage_class = s.gcs_storage_class.strip().upper()
    if storage_class and storage_class not in GCS_STORAGE_CLASSES:
        raise ConfigError(
            f"PGOPS_GCS_STORAGE_CLASS={s.gcs_storage_class!r} is not valid; valid: "
            f"{', '.join(GCS_STORAGE_CLASSES[:4])} (or empty for the bucket default)"
        )
    kms = s.gcs_kms_key_name.strip()
    if kms and not _GCS_KMS_KEY_RE.match(kms):
        raise ConfigError(
            f"PGOPS_GCS_KMS_KEY_NAME={kms!r} is not a Cloud KMS key name; valid form: "
            "projects/P/locations/L/keyRings/R/cryptoKeys/K (without /cryptoKeyVersions/N)"
        )
    return GCSConfig(
        endpoint_url=s.gcs_endpoint_url,
        project=s.gcs_project,
        credentials_file=s.gcs_credentials_file,
        kms_key_name=kms,
        storage_class=storage_class,
        chunk_size=s.gcs_chunk_size,
        max_attempts=s.gcs_max_attempts,
    )
