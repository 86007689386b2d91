"""Turning google-cloud-storage, google-auth and HTTP failures into short StorageErrors; our retry policy.

Messages name the setting to fix and never include credentials, access tokens or resumable session URIs
(a session URI lets anyone holding it upload into the object). Server-supplied text is shown shortened,
and never for token-endpoint responses beyond their error code and description.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
from collections.abc import Mapping
from typing import Any, TypeVar

from pgops.errors import ObjectLocked, ObjectNotFound, StorageError
from pgops.log import shorten
from pgops.storage.retry import RetryPolicy

log = logging.getLogger("pgops.storage.gcs")

T = TypeVar("T")

BUCKET_HINT = "check PGOPS_STORAGE_URL"
KMS_HINT = (
    "check PGOPS_GCS_KMS_KEY_NAME: the key must exist, be enabled, be in the bucket's location, and the Cloud "
    "Storage service agent needs roles/cloudkms.cryptoKeyEncrypterDecrypter on it"
)
RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})


@dataclasses.dataclass(frozen=True)
class GCSContext:
    """What an error message may say about where we were talking to, and with which credentials."""

    url: str  # gs://bucket/prefix
    bucket: str
    prefix: str  # "" or ending in "/"
    endpoint: str  # for messages: the custom endpoint URL, or "storage.googleapis.com"
    endpoint_setting: str  # PGOPS_GCS_ENDPOINT_URL, or STORAGE_EMULATOR_HOST when that supplied the endpoint
    credentials: str  # e.g. "PGOPS_GCS_CREDENTIALS_FILE=/etc/pgops/sa.json", "Application Default Credentials"
    credentials_hint: str  # what to do about credential failures

    def target(self, key: str | None) -> str:
        return f"gs://{self.bucket}/{self.prefix}{key}" if key is not None else self.url

    @property
    def endpoint_hint(self) -> str:
        return f"check {self.endpoint_setting} and the network"


class GCSHTTPError(Exception):
    """A non-success answer to one of our own JSON API requests (uploads, downloads)."""

    def __init__(self, status: int, reason: str = "", message: str = "") -> None:
        super().__init__(f"HTTP {status} {reason}: {message}".strip())
        self.status, self.reason, self.message = status, reason, message

    @classmethod
    def from_response(cls, resp: Any) -> GCSHTTPError:
        """From a requests.Response: the JSON API error document, if there is one. Never the URL."""
        reason, message = "", ""
        try:
            err = resp.json().get("error", {})
            if isinstance(err, Mapping):
                message = str(err.get("message", ""))
                details = err.get("errors") or [{}]
                reason = str(details[0].get("reason", "")) if isinstance(details[0], Mapping) else ""
        except (ValueError, AttributeError):
            message = (resp.text or "")[:200]
        return cls(int(resp.status_code), reason, message)


def server_error(exc: BaseException) -> tuple[int, str, str]:
    """(HTTP status, reason, message) of a service error; (0, "", "") for anything else."""
    from google.api_core.exceptions import GoogleAPICallError

    if isinstance(exc, GCSHTTPError):
        return exc.status, exc.reason, exc.message
    if isinstance(exc, GoogleAPICallError):
        errors = list(exc.errors or [])
        first = errors[0] if errors and isinstance(errors[0], Mapping) else {}
        message = str(first.get("message") or "")
        if not message:  # "GET https://...: text": keep only the server's text
            message = str(exc.message or "").split(": ", 1)[-1]
        return int(exc.code or 0), str(first.get("reason") or ""), message
    return 0, "", ""


def http_status(exc: BaseException) -> int:
    return server_error(exc)[0]


def is_not_found(exc: BaseException) -> bool:
    return http_status(exc) == 404


def is_precondition_failed(exc: BaseException) -> bool:
    return http_status(exc) == 412


def mentions_kms(exc: BaseException) -> bool:
    _, _, message = server_error(exc)
    return "kms" in message.lower() or "crypto key" in message.lower()


def is_lock_refusal(exc: BaseException) -> bool:
    """A delete refused because of a retention policy, object retention, or an event-based/temporary hold.

    GCS answers 403 with reason retentionPolicyNotMet and a message such as "Object '...' is subject to
    bucket's retention policy" or "... is under active Temporary hold and cannot be deleted".
    """
    status, reason, message = server_error(exc)
    text = message.lower()
    return reason == "retentionPolicyNotMet" or (status == 403 and ("retention" in text or " hold" in text))


def is_checksum_refusal(exc: BaseException) -> bool:
    """GCS refused an upload whose X-Goog-Hash / crc32c metadata did not match the bytes it received."""
    status, _, message = server_error(exc)
    text = message.lower()
    return status == 400 and ("crc32c" in text or "checksum" in text or "hash" in text)


def _connect_failure(exc: BaseException) -> bool:
    """The request never reached the server: refused, unresolvable, or connect timeout."""
    import requests.exceptions
    import urllib3.exceptions

    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return True
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, urllib3.exceptions.NewConnectionError | urllib3.exceptions.ConnectTimeoutError):
            return True
        if isinstance(e, ConnectionRefusedError) or (isinstance(e, OSError) and e.errno == errno.ECONNREFUSED):
            return True
        reason = getattr(e, "reason", None)
        nxt = reason if isinstance(reason, BaseException) else None
        if nxt is None and e.args and isinstance(e.args[0], BaseException):
            nxt = e.args[0]
        e = nxt or e.__cause__ or e.__context__
    return False


def is_retryable(exc: BaseException) -> bool:
    """Connection failures, 408/429/5xx and transient token-endpoint failures are worth another attempt."""
    import http.client

    import google.auth.exceptions
    import requests.exceptions
    import urllib3.exceptions

    if isinstance(exc, requests.exceptions.SSLError | urllib3.exceptions.SSLError):
        return False
    if isinstance(exc, google.auth.exceptions.RefreshError):
        return bool(getattr(exc, "retryable", False))
    if isinstance(exc, google.auth.exceptions.TransportError):
        return True
    if isinstance(
        exc,
        requests.exceptions.ConnectionError
        | requests.exceptions.Timeout
        | requests.exceptions.ChunkedEncodingError
        | urllib3.exceptions.ProtocolError
        | urllib3.exceptions.TimeoutError
        | http.client.IncompleteRead
        | ConnectionError,
    ):
        return True
    return http_status(exc) in RETRYABLE_STATUS


def sdk_errors() -> tuple[type[BaseException], ...]:
    """What a call can raise: service errors, google-auth, requests and urllib3 failures, socket errors."""
    import google.auth.exceptions
    import requests.exceptions
    import urllib3.exceptions
    from google.api_core.exceptions import GoogleAPICallError

    return (
        GCSHTTPError,
        GoogleAPICallError,
        google.auth.exceptions.GoogleAuthError,
        requests.exceptions.RequestException,
        urllib3.exceptions.HTTPError,
        OSError,
    )


def translate(  # noqa: PLR0911 - one return per failure class keeps the mapping readable
    exc: BaseException, ctx: GCSContext, op: str, key: str | None = None, *, missing: str = "object"
) -> StorageError:
    """One short StorageError (or subclass) for any failure of a GCS call.

    missing="bucket": a 404 can only mean the bucket is missing (uploads, listing, bucket metadata).
    """
    import google.auth.exceptions
    import requests.exceptions

    if isinstance(exc, StorageError):
        return exc
    target = ctx.target(key)
    if isinstance(exc, google.auth.exceptions.RefreshError):
        return StorageError(
            f"GCS credentials ({ctx.credentials}) were refused when getting an access token during {op}: "
            f"{_refresh_detail(exc)}; {ctx.credentials_hint}"
        )
    if isinstance(exc, google.auth.exceptions.DefaultCredentialsError):
        return StorageError(f"no usable GCS credentials for {op}: {shorten(_first_arg(exc))}; {ctx.credentials_hint}")
    if isinstance(exc, google.auth.exceptions.TransportError):
        return StorageError(
            f"cannot reach the token endpoint for {ctx.credentials} during {op}; check the network "
            f"and {ctx.credentials_hint.removeprefix('check ')}"
        )
    if isinstance(exc, requests.exceptions.SSLError):
        return StorageError(
            f"TLS verification with GCS endpoint {ctx.endpoint} failed during {op}; check {ctx.endpoint_setting} "
            "(and REQUESTS_CA_BUNDLE for a private CA)"
        )
    if http_status(exc):
        return _translate_status(exc, ctx, op, key, target=target, missing=missing)
    if _connect_failure(exc):
        return StorageError(f"cannot connect to GCS endpoint {ctx.endpoint} during {op}; {ctx.endpoint_hint}")
    if is_retryable(exc):
        return StorageError(
            f"connection to GCS endpoint {ctx.endpoint} failed during {op} of {target} "
            f"({type(exc).__name__}); {ctx.endpoint_hint}"
        )
    return StorageError(f"GCS {op} of {target} failed: {type(exc).__name__}")


def _translate_status(  # noqa: PLR0911 - one return per status keeps the mapping readable
    exc: BaseException, ctx: GCSContext, op: str, key: str | None, *, target: str, missing: str
) -> StorageError:
    status, reason, message = server_error(exc)
    detail = f" ({shorten(message)})" if message else ""
    if status == 401:
        return StorageError(
            f"GCS rejected the credentials ({ctx.credentials}) during {op} (HTTP 401{', ' + reason if reason else ''})"
            f"; {ctx.credentials_hint}"
        )
    if mentions_kms(exc):
        return StorageError(f"GCS refused the KMS key during {op} of {target} (HTTP {status}){detail}; {KMS_HINT}")
    if status == 404:
        if missing == "bucket" or key is None or "bucket" in message.lower():
            return StorageError(f"bucket {ctx.bucket!r} does not exist at {ctx.endpoint}; {BUCKET_HINT}")
        return ObjectNotFound(f"object {key!r} does not exist in {ctx.url}")
    if is_lock_refusal(exc):
        return ObjectLocked(f"{target} is protected by a retention policy or hold; {op} refused{detail}")
    if status == 403:
        return StorageError(
            f"access denied for {op} on {target}: the credentials ({ctx.credentials}) lack permission{detail}; "
            f"grant the role on the bucket or {ctx.credentials_hint}"
        )
    if status == 400 and ("storage class" in message.lower() or "storageclass" in message.lower()):
        return StorageError(f"GCS refused the storage class during {op}{detail}; check PGOPS_GCS_STORAGE_CLASS")
    if status == 412:
        return StorageError(f"GCS {op} of {target}: a precondition failed (the object changed meanwhile)")
    return StorageError(f"GCS {op} of {target} failed: HTTP {status}{' ' + reason if reason else ''}{detail}")


def _first_arg(exc: BaseException) -> str:
    return str(exc.args[0]) if exc.args else type(exc).__name__


def _refresh_detail(exc: BaseException) -> str:
    """'invalid_grant: Invalid JWT Signature.' -- the token endpoint's error code and description only."""
    return shorten(_first_arg(exc))


def retry_policy(attempts: int) -> RetryPolicy:
    """GCS_MAX_ATTEMPTS attempts per request or chunk (the first one included), with jittered backoff."""
    return RetryPolicy(attempts, is_retryable, lambda e: f"status={http_status(e) or '-'}", "gcs")
