"""Credentials, endpoint and the google-cloud-storage client, from a GCSConfig. Imported lazily, like the SDK.

Credentials, in this order:
1. PGOPS_GCS_CREDENTIALS_FILE: a service-account JSON key (google.oauth2.service_account), or a workload
   identity federation / impersonation configuration file (type external_account, ...).
2. An emulator endpoint (PGOPS_GCS_ENDPOINT_URL, or STORAGE_EMULATOR_HOST): anonymous credentials.
3. Application Default Credentials (google.auth.default()): GOOGLE_APPLICATION_CREDENTIALS, gcloud's
   application-default login, or the metadata server (GCE, Cloud Run, GKE workload identity).
Every credential error names the method that was tried.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pgops.errors import ConfigError, StorageError
from pgops.log import shorten

if TYPE_CHECKING:
    from pgops.storage.config import GCSConfig

SCOPES = ("https://www.googleapis.com/auth/devstorage.read_write",)
DEFAULT_ENDPOINT = "https://storage.googleapis.com"
CONNECT_TIMEOUT = 10
READ_TIMEOUT = 60
TIMEOUT = (CONNECT_TIMEOUT, READ_TIMEOUT)
OTHER_FILE_TYPES = (
    "external_account",
    "external_account_authorized_user",
    "impersonated_service_account",
    "authorized_user",
)


@dataclasses.dataclass(frozen=True)
class ClientSpec:
    """Everything about the client except the credentials themselves, so it can be shown and tested safely."""

    endpoint_url: str  # DEFAULT_ENDPOINT, or the custom / emulator endpoint
    endpoint_setting: str  # which setting supplied it (for messages)
    emulator: bool
    credentials: str  # which credentials are used, e.g. "PGOPS_GCS_CREDENTIALS_FILE=/etc/pgops/sa.json"
    credentials_hint: str
    project: str | None
    max_attempts: int


def normalise_endpoint(raw: str, setting: str, default_scheme: str) -> str:
    """'' -> ''; 'host:4443' -> '<default_scheme>://host:4443'; only http and https are valid."""
    v = raw.strip().rstrip("/")
    if not v:
        return ""
    if "://" not in v:
        return f"{default_scheme}://{v}"
    scheme = v.split("://", 1)[0].lower()
    if scheme not in ("http", "https"):
        raise ConfigError(f"{setting}={raw!r}: scheme {scheme!r} is not valid; valid: https://, http://")
    return v


def resolve_endpoint(config: GCSConfig) -> tuple[str, str, bool]:
    """(endpoint URL, setting that supplied it, is it an emulator)."""
    custom = normalise_endpoint(config.endpoint_url, "PGOPS_GCS_ENDPOINT_URL", "https")
    if custom:
        return custom, "PGOPS_GCS_ENDPOINT_URL", True
    # The convention for STORAGE_EMULATOR_HOST is plain HTTP when no scheme is given.
    emulator = normalise_endpoint(os.environ.get("STORAGE_EMULATOR_HOST", ""), "STORAGE_EMULATOR_HOST", "http")
    if emulator:
        return emulator, "STORAGE_EMULATOR_HOST", True
    return DEFAULT_ENDPOINT, "PGOPS_GCS_ENDPOINT_URL", False


def load_credentials(config: GCSConfig, emulator: bool, endpoint: str) -> tuple[Any, str, str]:
    """(credentials, description, what to check on failure). Does not contact any server."""
    path = config.credentials_file.strip()
    if path:
        where = f"PGOPS_GCS_CREDENTIALS_FILE={path}"
        return credentials_from_file(path, where), where, "check PGOPS_GCS_CREDENTIALS_FILE"
    if emulator:
        from google.auth import credentials as auth_credentials

        return (
            untyped(auth_credentials).AnonymousCredentials(),
            f"anonymous credentials (emulator endpoint {endpoint})",
            "set PGOPS_GCS_CREDENTIALS_FILE if this endpoint requires credentials",
        )
    import google.auth
    from google.auth.exceptions import DefaultCredentialsError

    gac = os.environ.get("GOOGLE_APPLICATION_CREDENTIALS", "")
    try:
        creds, _ = google.auth.default(scopes=list(SCOPES))
    except DefaultCredentialsError as e:
        if gac:
            raise StorageError(
                f"Application Default Credentials from GOOGLE_APPLICATION_CREDENTIALS={gac}: "
                f"{shorten(str(e.args[0]) if e.args else type(e).__name__)}; fix that file or set "
                "PGOPS_GCS_CREDENTIALS_FILE"
            ) from None
        raise StorageError(
            "Application Default Credentials not found; set PGOPS_GCS_CREDENTIALS_FILE or "
            "GOOGLE_APPLICATION_CREDENTIALS (or run on GCE/GKE with a service account / workload identity)"
        ) from None
    what = f"GOOGLE_APPLICATION_CREDENTIALS={gac}" if gac else "the environment (gcloud login or metadata server)"
    return (
        creds,
        f"Application Default Credentials from {what}",
        "check PGOPS_GCS_CREDENTIALS_FILE or GOOGLE_APPLICATION_CREDENTIALS (Application Default Credentials)",
    )


def credentials_from_file(path: str, where: str) -> Any:
    """A service-account key, or another credentials file type google-auth understands."""
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        raise StorageError(f"GCS credentials from {where}: file not found") from None
    except PermissionError:
        raise StorageError(
            f"GCS credentials from {where}: permission denied; the file must be readable by the user running pgops"
        ) from None
    except OSError as e:
        raise StorageError(f"GCS credentials from {where}: cannot be read: {e.strerror or type(e).__name__}") from None
    try:
        info = json.loads(raw)
    except ValueError:
        info = None
    if not isinstance(info, dict):
        raise StorageError(f"GCS credentials from {where}: not a JSON credentials file (a service account key)")
    kind = info.get("type")
    if kind == "service_account":
        from google.oauth2 import service_account

        missing = [f for f in ("client_email", "private_key", "token_uri") if not info.get(f)]
        if missing:
            raise StorageError(f"GCS credentials from {where}: the service account key lacks {', '.join(missing)}")
        try:
            return untyped(service_account).Credentials.from_service_account_info(info, scopes=list(SCOPES))
        except (ValueError, TypeError, KeyError):  # the message could quote key material: do not show it
            raise StorageError(
                f"GCS credentials from {where}: the private key of the service account key cannot be parsed"
            ) from None
    if kind in OTHER_FILE_TYPES:
        import google.auth
        from google.auth.exceptions import DefaultCredentialsError

        try:
            creds, _ = untyped(google.auth).load_credentials_from_file(path, scopes=list(SCOPES))
        except (DefaultCredentialsError, ValueError) as e:
            raise StorageError(
                f"GCS credentials from {where}: invalid {kind} file ({shorten(str(e.args[0]) if e.args else '')})"
            ) from None
        return creds
    raise StorageError(
        f"GCS credentials from {where}: unsupported type {kind!r}; valid: a service account key (service_account) "
        "or a workload identity federation configuration (external_account)"
    )


def build_client(config: GCSConfig) -> tuple[Any, Any, ClientSpec]:
    """(google.cloud.storage.Client, the authorized requests session it uses, spec). Does not connect."""
    from google.auth.transport import requests as auth_requests
    from google.cloud import storage

    endpoint, endpoint_setting, emulator = resolve_endpoint(config)
    creds, described, hint = load_credentials(config, emulator, endpoint)
    spec = ClientSpec(
        endpoint_url=endpoint,
        endpoint_setting=endpoint_setting,
        emulator=emulator,
        credentials=described,
        credentials_hint=hint,
        project=config.project.strip() or None,
        max_attempts=config.max_attempts,
    )
    session: Any = untyped(auth_requests).AuthorizedSession(creds)
    try:
        client = storage.Client(
            project=spec.project,  # None: no project lookup (none is needed for objects in a known bucket)
            credentials=creds,
            _http=session,
            client_options={"api_endpoint": endpoint},
        )
    except ValueError as e:  # e.g. a universe-domain mismatch between credentials and endpoint
        session.close()
        raise StorageError(f"cannot set up the GCS client: {shorten(str(e))}; check {endpoint_setting}") from None
    return client, session, spec


def untyped(module: object) -> Any:
    """google-auth's and google-crc32c's functions lack annotations; call them through Any."""
    return module
