"""Turning botocore failures into short StorageErrors, and our retry policy (botocore itself does not retry).

Messages name the setting to fix and never include credentials: server-supplied text is only shown for
codes we do not recognise, truncated, and never for authentication failures.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import TypeVar

from pgops.errors import ObjectLocked, ObjectNotFound, StorageError
from pgops.log import shorten
from pgops.storage.retry import RetryPolicy

log = logging.getLogger("pgops.storage.s3")

T = TypeVar("T")

CREDENTIALS_HINT = "check PGOPS_S3_ACCESS_KEY_ID and PGOPS_S3_SECRET_ACCESS_KEY"
ENDPOINT_HINT = "check PGOPS_S3_ENDPOINT_URL and the network"
BUCKET_HINT = "check PGOPS_STORAGE_URL"

# Codes that will not get better by trying again.
PERMANENT_CODES = frozenset(
    {
        "AccessDenied",
        "AllAccessDisabled",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "ExpiredToken",
        "InvalidToken",
        "NoSuchBucket",
        "NoSuchKey",
        "NoSuchUpload",
        "InvalidPart",
        "InvalidPartOrder",
        "EntityTooSmall",
        "EntityTooLarge",
        "PreconditionFailed",
        "InvalidRequest",
        "InvalidArgument",
        "InvalidStorageClass",
        "KMS.NotFoundException",
        "KMS.DisabledException",
        "ObjectLocked",
        "PermanentRedirect",
        "AuthorizationHeaderMalformed",
    }
)
TRANSIENT_CODES = frozenset(
    {
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "RequestTimeout",
        "RequestTimeTooSkewed",
        "InternalError",
        "ServiceUnavailable",
        "OperationAborted",
        "RequestLimitExceeded",
        "TooManyRequests",
    }
)


@dataclasses.dataclass(frozen=True)
class S3Context:
    """What an error message may say about where we were talking to. Holds no credentials."""

    url: str  # s3://bucket/prefix, without credentials
    bucket: str
    prefix: str  # "" or ending in "/"
    endpoint: str  # for messages: the custom endpoint URL, or "the AWS endpoint for <region>"

    def target(self, key: str | None) -> str:
        return f"s3://{self.bucket}/{self.prefix}{key}" if key is not None else self.url


def error_code(exc: BaseException) -> str:
    from botocore.exceptions import ClientError

    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Code", ""))
    return ""


def error_message(exc: BaseException) -> str:
    from botocore.exceptions import ClientError

    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Message", ""))
    return ""


def http_status(exc: BaseException) -> int:
    from botocore.exceptions import ClientError

    if isinstance(exc, ClientError):
        return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    return 0


def is_precondition_failed(exc: BaseException) -> bool:
    return error_code(exc) == "PreconditionFailed" or http_status(exc) == 412


def is_not_found(exc: BaseException) -> bool:
    return error_code(exc) in ("NoSuchKey", "404", "NotFound") or (
        http_status(exc) == 404 and error_code(exc) != "NoSuchBucket"
    )


def is_lock_refusal(exc: BaseException) -> bool:
    """Does this delete failure come from S3 Object Lock (retention or legal hold)?

    AWS answers a delete of a locked object *version* with 403 AccessDenied and the message "Access
    Denied because object protected by object lock"; MinIO and others use the code ObjectLocked; some
    stores send 400 InvalidRequest mentioning retention or object lock.
    """
    code, msg = error_code(exc), error_message(exc).lower()
    if code == "ObjectLocked":
        return True
    mentions_lock = "object lock" in msg or "objectlock" in msg or "retention" in msg or "legal hold" in msg
    return code in ("AccessDenied", "InvalidRequest") and mentions_lock


def is_retryable(exc: BaseException) -> bool:
    """Connection failures, 5xx and throttling are worth another attempt; everything else is permanent."""
    import urllib3.exceptions
    from botocore.exceptions import ClientError, HTTPClientError, IncompleteReadError, SSLError
    from botocore.exceptions import ConnectionError as BotoConnectionError

    if isinstance(exc, SSLError):
        return False
    if isinstance(exc, BotoConnectionError | HTTPClientError | IncompleteReadError | ConnectionError):
        return True
    if isinstance(exc, urllib3.exceptions.ProtocolError | urllib3.exceptions.ReadTimeoutError):
        return True
    if isinstance(exc, ClientError):
        code, status = error_code(exc), http_status(exc)
        if code in PERMANENT_CODES:
            return False
        return code in TRANSIENT_CODES or status >= 500 or status == 429
    return False


def sdk_errors() -> tuple[type[Exception], ...]:
    """What an SDK call can raise: service errors, botocore and urllib3 failures, socket errors."""
    import urllib3.exceptions
    from botocore.exceptions import BotoCoreError, ClientError

    return (ClientError, BotoCoreError, urllib3.exceptions.HTTPError, OSError)


def translate(  # noqa: PLR0911 - one return per failure class keeps the mapping readable
    exc: BaseException, ctx: S3Context, op: str, key: str | None = None
) -> StorageError:
    """One short StorageError (or subclass) for any failure of an S3 call."""
    from botocore.exceptions import (
        BotoCoreError,
        ClientError,
        ConnectTimeoutError,
        CredentialRetrievalError,
        EndpointConnectionError,
        NoCredentialsError,
        ParamValidationError,
        PartialCredentialsError,
        ProxyConnectionError,
        SSLError,
    )

    if isinstance(exc, StorageError):
        return exc
    target = ctx.target(key)
    if isinstance(exc, NoCredentialsError | PartialCredentialsError | CredentialRetrievalError):
        return StorageError(
            f"no usable S3 credentials for {op}; set PGOPS_S3_ACCESS_KEY_ID and PGOPS_S3_SECRET_ACCESS_KEY, "
            "or configure the SDK default chain (instance profile, AWS_* variables, ~/.aws)"
        )
    if isinstance(exc, SSLError):
        return StorageError(
            f"TLS verification with S3 endpoint {ctx.endpoint} failed during {op}; "
            "check PGOPS_S3_CA_BUNDLE, PGOPS_S3_VERIFY_TLS and PGOPS_S3_ENDPOINT_URL"
        )
    if isinstance(exc, EndpointConnectionError | ConnectTimeoutError | ProxyConnectionError):
        return StorageError(f"cannot connect to S3 endpoint {ctx.endpoint} during {op}; {ENDPOINT_HINT}")
    if isinstance(exc, ClientError):
        return _translate_client_error(exc, ctx, op, key, target)
    if isinstance(exc, ParamValidationError):
        return StorageError(f"invalid S3 request for {op} of {target}: {shorten(str(exc))}")
    if is_retryable(exc):
        return StorageError(
            f"connection to S3 endpoint {ctx.endpoint} failed during {op} of {target} "
            f"({type(exc).__name__}); {ENDPOINT_HINT}"
        )
    if isinstance(exc, BotoCoreError):
        return StorageError(f"S3 {op} of {target} failed: {type(exc).__name__}: {shorten(str(exc))}")
    return StorageError(f"S3 {op} of {target} failed: {type(exc).__name__}")


def _translate_client_error(  # noqa: PLR0911 - one return per error code keeps the mapping readable
    exc: BaseException, ctx: S3Context, op: str, key: str | None, target: str
) -> StorageError:
    code, status = error_code(exc), http_status(exc)
    if code == "InvalidAccessKeyId":
        return StorageError(f"S3 does not know the access key id (InvalidAccessKeyId) during {op}; {CREDENTIALS_HINT}")
    if code == "SignatureDoesNotMatch":
        return StorageError(
            f"S3 rejected the request signature (SignatureDoesNotMatch) during {op}: the secret key does not "
            f"match the access key; {CREDENTIALS_HINT}"
        )
    if code in ("ExpiredToken", "InvalidToken", "TokenRefreshRequired"):
        return StorageError(f"S3 rejected the session token ({code}) during {op}; check PGOPS_S3_SESSION_TOKEN")
    if code == "NoSuchBucket" or (status == 404 and key is None):
        return StorageError(f"bucket {ctx.bucket!r} does not exist at {ctx.endpoint}; {BUCKET_HINT}")
    if is_not_found(exc):
        return ObjectNotFound(f"object {key!r} does not exist in {ctx.url}")
    if code in (
        "PermanentRedirect",
        "AuthorizationHeaderMalformed",
        "IllegalLocationConstraintException",
    ) or (status == 301):
        return StorageError(f"bucket {ctx.bucket!r} is in another region ({code or status}); check PGOPS_S3_REGION")
    if is_lock_refusal(exc):
        return ObjectLocked(f"{target} is protected by Object Lock (retention or legal hold); {op} refused")
    if code in ("AccessDenied", "AllAccessDisabled") or status == 403:
        return StorageError(
            f"access denied for {op} on {target}: the credentials (PGOPS_S3_ACCESS_KEY_ID) lack permission "
            "or a bucket policy forbids it"
        )
    if code == "NoSuchUpload":
        return StorageError(
            f"the multipart upload of {target} no longer exists (aborted by another process or a lifecycle rule)"
        )
    if code == "InvalidStorageClass":
        return StorageError(f"S3 refused the storage class during {op}; check PGOPS_S3_STORAGE_CLASS")
    if code.startswith("KMS") or "kms" in error_message(exc).lower():
        return StorageError(
            f"S3 refused the KMS key during {op} ({code}); check PGOPS_S3_SSE and PGOPS_S3_SSE_KMS_KEY_ID"
        )
    detail = shorten(error_message(exc))
    return StorageError(
        f"S3 {op} of {target} failed: {code or 'error'} (HTTP {status}){': ' + detail if detail else ''}"
    )


def retry_policy(attempts: int) -> RetryPolicy:
    """The only retries of S3 requests: the client is built with botocore's retries off (s3_client.py)."""
    return RetryPolicy(attempts, is_retryable, lambda e: f"code={error_code(e) or '-'}", "s3")
