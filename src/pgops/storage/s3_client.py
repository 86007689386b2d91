"""Building the boto3 S3 client from its S3Config. boto3 is imported here, lazily, and nowhere at import time."""

from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING, Any, cast

from pgops.errors import ConfigError, StorageError
from pgops.log import q

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

    from pgops.storage.config import S3Config

log = logging.getLogger("pgops.storage.s3")

CONNECT_TIMEOUT = 10
READ_TIMEOUT = 60


@dataclasses.dataclass(frozen=True)
class ClientSpec:
    """Everything about the client except credentials, so it can be shown and tested safely."""

    endpoint_url: str | None  # None: the AWS endpoint for the region
    region: str
    verify: bool | str | None  # False: no checks; str: CA bundle; None: the SDK default (checks on)
    addressing_style: str
    max_attempts: int
    request_checksum: str


def normalise_endpoint(raw: str) -> str | None:
    """'' -> None; 'host:9000' -> 'https://host:9000' (a custom endpoint without a scheme is HTTPS)."""
    v = raw.strip().rstrip("/")
    if not v:
        return None
    if "://" not in v:
        return "https://" + v
    scheme = v.split("://", 1)[0].lower()
    if scheme not in ("http", "https"):
        raise ConfigError(f"PGOPS_S3_ENDPOINT_URL={raw!r}: scheme {scheme!r} is not valid; valid: https://, http://")
    return v


def client_spec(config: S3Config, default_region: str | None) -> ClientSpec:
    verify: bool | str | None
    if not config.verify_tls:
        verify = False
    elif config.ca_bundle:
        verify = config.ca_bundle
    else:
        verify = None
    return ClientSpec(
        endpoint_url=normalise_endpoint(config.endpoint_url),
        region=config.region or default_region or "us-east-1",
        verify=verify,
        addressing_style=config.addressing_style,
        max_attempts=config.max_attempts,
        request_checksum=config.request_checksum,
    )


def build_client(config: S3Config) -> tuple[S3Client, ClientSpec]:
    """A client configured from the PGOPS_S3_* settings. Does not connect."""
    import boto3.session
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError

    try:
        if config.access_key_id:
            session = boto3.session.Session(
                aws_access_key_id=config.access_key_id,
                aws_secret_access_key=config.secret_access_key.reveal() or None,
                aws_session_token=config.session_token.reveal() or None,
            )
        else:
            session = boto3.session.Session()
        spec = client_spec(config, session.region_name)
        boto_config = Config(
            region_name=spec.region,
            # One retry layer: ours (retry.py), which counts PGOPS_S3_MAX_ATTEMPTS per request or part,
            # logs each retry and stops waiting on a signal. botocore sends each request once.
            retries={"total_max_attempts": 1, "mode": "standard"},
            s3=cast("Any", {"addressing_style": spec.addressing_style}),
            request_checksum_calculation=cast("Any", spec.request_checksum),
            response_checksum_validation="when_required",
            connect_timeout=CONNECT_TIMEOUT,
            read_timeout=READ_TIMEOUT,
        )
        kwargs: dict[str, Any] = {"config": boto_config, "region_name": spec.region}
        if spec.endpoint_url:
            kwargs["endpoint_url"] = spec.endpoint_url
        if spec.verify is not None:
            kwargs["verify"] = spec.verify
        if spec.verify is False:
            _quiet_insecure_warnings(spec)
        client: S3Client = session.client("s3", **kwargs)
    except BotoCoreError as e:  # e.g. AWS_PROFILE names a profile that does not exist
        raise StorageError(f"cannot set up the S3 client: {type(e).__name__}: {e}") from None
    except ValueError as e:  # e.g. an endpoint URL botocore cannot parse
        raise StorageError(f"cannot set up the S3 client: {e}; check PGOPS_S3_ENDPOINT_URL") from None
    return client, spec


def _quiet_insecure_warnings(spec: ClientSpec) -> None:
    """PGOPS_S3_VERIFY_TLS=false: one log line, instead of urllib3's multi-line warning on every request."""
    import warnings

    from urllib3.exceptions import InsecureRequestWarning

    warnings.filterwarnings("ignore", category=InsecureRequestWarning)
    log.warning(
        "event=tls_verification_off setting=PGOPS_S3_VERIFY_TLS endpoint=%s detail=%s",
        q(spec.endpoint_url or f"AWS {spec.region}"),
        q("the endpoint's certificate is not checked; anyone on the path can read and change backups"),
    )
