"""S3 failures caused for real against moto: dropped connections (FaultProxy), bad credentials (moto
with authentication on), a missing bucket, a closed port, plain HTTP where TLS is expected, races."""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import os
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from pgops.errors import ObjectExists, ObjectLocked, ObjectNotFound, StorageError
from pgops.settings import build_settings
from pgops.storage import open_storage
from pgops.storage.s3 import S3Storage
from tests.fixtures.objstore import Fault, FaultProxy, create_iam_user, moto_auth, s3_env

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

MiB = 1024**2
PART = 5 * MiB


def open_s3(endpoint: str, bucket: str, **overrides: str) -> S3Storage:
    st = open_storage(build_settings(environ=s3_env(endpoint, bucket, **overrides)))
    assert isinstance(st, S3Storage)
    return st


def part(n: int) -> Callable[[str, str], bool]:
    """Matches the UploadPart request of part n."""
    return lambda method, path: method == "PUT" and re.search(rf"[?&]partNumber={n}(&|$)", path) is not None


def uploads(client: S3Client, bucket: str) -> list[str]:
    return [u["Key"] for u in client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])]


def stream(storage: S3Storage, key: str, data: bytes) -> None:
    """Write `data` in 1 MiB chunks the way the engine does: abort on any failure."""
    writer = storage.open_writer(key)
    try:
        for i in range(0, len(data), MiB):
            writer.write(data[i : i + MiB])
        writer.commit()
    except BaseException:
        writer.abort()
        raise


@pytest.fixture
def s3_log(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """caplog for pgops.storage.s3, even if an earlier test configured pgops logging not to propagate."""
    logger = logging.getLogger("pgops.storage.s3")
    old_level, old_propagate = logger.level, logger.propagate
    logger.setLevel(logging.DEBUG)
    logger.propagate = False  # records reach caplog once, through this handler
    logger.addHandler(caplog.handler)
    try:
        yield caplog
    finally:
        logger.removeHandler(caplog.handler)
        logger.setLevel(old_level)
        logger.propagate = old_propagate


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---- dropped connections --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("resets", "after_body_bytes"),
    [(1, None), (1, MiB), (2, MiB)],
    ids=["reset-at-head", "reset-mid-body", "two-resets"],
)
def test_connection_reset_during_part_2_is_retried(
    fault_proxy: FaultProxy,
    s3_bucket: str,
    s3_log: pytest.LogCaptureFixture,
    resets: int,
    after_body_bytes: int | None,
) -> None:
    # S3_MAX_ATTEMPTS=3: three requests at most, so two resets in a row still succeed on the third.
    storage = open_s3(fault_proxy.endpoint, s3_bucket, S3_MAX_ATTEMPTS="3")
    fault = fault_proxy.add_fault(Fault(part(2), times=resets, after_body_bytes=after_body_bytes))
    data = os.urandom(int(3.5 * PART))
    stream(storage, "db/app.dump", data)

    attempts = fault_proxy.matching("PUT", "partNumber=2")
    assert [e.reset for e in attempts] == [True] * resets + [False]
    assert fault.fired == resets
    assert hashlib.sha256(storage.get_bytes("db/app.dump")).digest() == hashlib.sha256(data).digest()
    assert uploads(storage.client, s3_bucket) == []
    ours = [r for r in s3_log.records if "s3 retry" in r.getMessage() and "UploadPart 2" in r.getMessage()]
    assert len(ours) == resets, "every retry is ours (botocore does not retry), and each is logged"


def test_persistent_failure_of_a_part_aborts_the_upload(
    fault_proxy: FaultProxy, s3_bucket: str, s3_client: S3Client
) -> None:
    storage = open_s3(fault_proxy.endpoint, s3_bucket, S3_MAX_ATTEMPTS="2")
    fault_proxy.add_fault(Fault(part(3), times=None, after_body_bytes=64 * 1024))
    with pytest.raises(StorageError, match="PGOPS_S3_ENDPOINT_URL") as err:
        stream(storage, "db/app.dump", os.urandom(int(3.5 * PART)))
    assert "UploadPart 3" in str(err.value)
    assert len(fault_proxy.matching("PUT", "partNumber=3")) == 2  # S3_MAX_ATTEMPTS requests, one retry layer
    assert fault_proxy.matching("DELETE", "uploadId="), "the multipart upload was aborted"
    assert uploads(s3_client, s3_bucket) == []
    assert not storage.exists("db/app.dump")
    assert "Contents" not in s3_client.list_objects_v2(Bucket=s3_bucket)


def test_abort_joins_the_upload_thread(fault_proxy: FaultProxy, s3_bucket: str, s3_client: S3Client) -> None:
    storage = open_s3(fault_proxy.endpoint, s3_bucket)
    writer = storage.open_writer("db/app.dump")
    writer.write(os.urandom(2 * PART))
    writer.abort()
    assert not [t for t in threading.enumerate() if t.name.startswith("pgops-s3-part")]
    assert uploads(s3_client, s3_bucket) == []


def test_reader_resumes_after_a_dropped_connection(
    fault_proxy: FaultProxy, s3_bucket: str, s3_client: S3Client
) -> None:
    data = os.urandom(3 * MiB)
    s3_client.put_object(Bucket=s3_bucket, Key="backups/blob", Body=data)
    storage = open_s3(fault_proxy.endpoint, s3_bucket)
    fault_proxy.add_fault(Fault(lambda m, p: m == "GET" and "blob" in p, after_response_bytes=MiB))
    reader = storage.open_reader("blob")
    got = b"".join(iter(lambda: reader.read(64 * 1024), b""))
    reader.close()
    assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest()
    gets = fault_proxy.matching("GET", "blob")
    assert [e.reset for e in gets] == [True, False]
    assert re.fullmatch(r"bytes=\d+-", gets[1].headers["range"]) and int(gets[1].headers["range"][6:-1]) > 0
    assert gets[1].headers["if-match"].strip('"') == hashlib.md5(data, usedforsecurity=False).hexdigest()


# ---- configuration errors: one line naming the setting --------------------------------------------


def test_wrong_credentials_name_the_credential_settings(s3_server: str, s3_bucket: str) -> None:
    key_id, secret = create_iam_user(s3_server, f"pgops-{s3_bucket[-8:]}")
    with moto_auth(s3_server):
        open_s3(s3_server, s3_bucket, S3_ACCESS_KEY_ID=key_id, S3_SECRET_ACCESS_KEY=secret).check()  # control
        for kid, sec, code in [("AKIAUNKNOWNUNKNOWN00", secret, "InvalidAccessKeyId"), (key_id, "wrong", "Signature")]:
            storage = open_s3(s3_server, s3_bucket, S3_ACCESS_KEY_ID=kid, S3_SECRET_ACCESS_KEY=sec)
            with pytest.raises(StorageError) as err:
                storage.check()
            msg = str(err.value)
            assert "PGOPS_S3_ACCESS_KEY_ID" in msg and "PGOPS_S3_SECRET_ACCESS_KEY" in msg and code in msg
            assert "\n" not in msg
            with pytest.raises(StorageError, match="PGOPS_S3_ACCESS_KEY_ID"):
                storage.put_bytes("x", b"x")


def test_missing_bucket_names_the_storage_url(s3_server: str, s3_bucket: str) -> None:
    storage = open_s3(s3_server, s3_bucket + "-missing")
    with pytest.raises(StorageError, match=r"does not exist.*PGOPS_STORAGE_URL") as err:
        storage.check()
    assert "\n" not in str(err.value)
    with pytest.raises(StorageError, match="PGOPS_STORAGE_URL"):
        storage.put_bytes("x", b"x")


def test_unreachable_endpoint_fails_fast_naming_the_endpoint(aws_isolated: None) -> None:
    endpoint = f"http://127.0.0.1:{closed_port()}"
    storage = open_s3(endpoint, "some-bucket", S3_MAX_ATTEMPTS="1")
    start = time.monotonic()
    with pytest.raises(StorageError, match=rf"cannot connect to S3 endpoint {endpoint}.*PGOPS_S3_ENDPOINT_URL"):
        storage.check()
    with pytest.raises(StorageError, match="PGOPS_S3_ENDPOINT_URL"):
        storage.open_writer("x")
    assert time.monotonic() - start < 5


def test_endpoint_without_scheme_means_https_with_certificate_checks(aws_isolated: None, tmp_path: Path) -> None:
    storage = open_s3("minio.internal:9000", "bkt")  # built without connecting
    assert storage.client.meta.endpoint_url == "https://minio.internal:9000"
    assert getattr(storage.client, "_endpoint").http_session._verify is True  # noqa: B009
    bundle = tmp_path / "ca.pem"
    bundle.write_text("not used\n")
    custom = open_s3("minio.internal:9000", "bkt", S3_CA_BUNDLE=str(bundle))
    assert getattr(custom.client, "_endpoint").http_session._verify == str(bundle)  # noqa: B009
    off = open_s3("minio.internal:9000", "bkt", S3_VERIFY_TLS="false")
    assert getattr(off.client, "_endpoint").http_session._verify is False  # noqa: B009


def test_https_to_a_plain_http_endpoint_fails_with_a_tls_error(s3_server: str, aws_isolated: None) -> None:
    hostport = s3_server.split("://", 1)[1]  # moto speaks plain HTTP: the TLS handshake must fail
    storage = open_s3(hostport, "bkt", S3_MAX_ATTEMPTS="1")
    assert storage.client.meta.endpoint_url == f"https://{hostport}"
    with pytest.raises(StorageError, match=r"TLS.*PGOPS_S3_CA_BUNDLE.*PGOPS_S3_VERIFY_TLS"):
        storage.check()


# ---- secrets ----------------------------------------------------------------------------------------


def error_texts(exc: BaseException) -> Iterator[str]:
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        yield str(e)
        yield repr(e)
        e = e.__cause__ or e.__context__


def test_no_secret_in_repr_or_any_error(s3_server: str, s3_bucket: str, s3_log: pytest.LogCaptureFixture) -> None:
    secret, token = "SuperSecretValue-9f8e7d6c5b4a", "SessionTokenValue-1a2b3c4d"
    texts: list[str] = []

    def collect(fn: Callable[[], object]) -> None:
        with pytest.raises(StorageError) as err:
            fn()
        texts.extend(error_texts(err.value))

    key_id, _ = create_iam_user(s3_server, f"pgops-{s3_bucket[-8:]}")
    with moto_auth(s3_server):
        wrong = open_s3(s3_server, s3_bucket, S3_ACCESS_KEY_ID=key_id, S3_SECRET_ACCESS_KEY=secret)
        collect(wrong.check)
        collect(lambda: wrong.put_bytes("k", b"x"))
    tokened = {"S3_SECRET_ACCESS_KEY": secret, "S3_SESSION_TOKEN": token}
    storage = open_s3(s3_server, s3_bucket, **tokened)
    storage.put_bytes("k", b"x")
    collect(lambda: storage.put_bytes("k", b"y"))  # ObjectExists
    collect(lambda: storage.get_bytes("absent"))  # ObjectNotFound
    collect(open_s3(s3_server, s3_bucket + "-missing", **tokened).check)
    collect(open_s3(f"127.0.0.1:{closed_port()}", s3_bucket, S3_MAX_ATTEMPTS="1", **tokened).check)
    texts += [repr(storage), str(storage), repr(build_settings(environ=s3_env(s3_server, s3_bucket, **tokened)))]
    texts.append(s3_log.text)
    assert len(texts) > 12
    for text in texts:
        assert secret not in text and token not in text, text


# ---- create-only ----------------------------------------------------------------------------------


@pytest.mark.parametrize("conditional", ["true", "false"])
@pytest.mark.parametrize("size", [1000, int(2.5 * PART)], ids=["put", "multipart"])
def test_key_written_by_someone_else_during_the_upload_is_not_overwritten(
    fault_proxy: FaultProxy, s3_bucket: str, s3_client: S3Client, conditional: str, size: int
) -> None:
    storage = open_s3(fault_proxy.endpoint, s3_bucket, S3_CONDITIONAL_WRITES=conditional)
    writer = storage.open_writer("db/app.dump")
    writer.write(os.urandom(size))
    s3_client.put_object(Bucket=s3_bucket, Key="backups/db/app.dump", Body=b"racer")
    with pytest.raises(ObjectExists):
        writer.commit()
    writer.abort()
    assert s3_client.get_object(Bucket=s3_bucket, Key="backups/db/app.dump")["Body"].read() == b"racer"
    assert uploads(s3_client, s3_bucket) == []
    # The request that would have made our object visible: PutObject, or CompleteMultipartUpload.
    final = [
        e
        for e in fault_proxy.events
        if (e.method == "PUT" and "uploadId=" not in e.path) or (e.method == "POST" and "uploadId=" in e.path)
    ]
    if conditional == "true":  # sent, and refused by the store itself: moto honours If-None-Match on both
        assert len(final) == 1 and final[0].headers.get("if-none-match") == "*"
    else:  # the HEAD just before commit caught it, so it was never sent
        assert final == []
        assert len(fault_proxy.matching("HEAD", "app.dump")) == 2


def test_conditional_write_refusal_is_objectexists_without_head(
    s3_server: str, s3_bucket: str, s3_client: S3Client
) -> None:
    """412 from PutObject itself maps to ObjectExists (no HEAD involved: the writer's start check passed)."""
    storage = open_s3(s3_server, s3_bucket)
    writer = storage.open_writer("m.json")
    s3_client.put_object(Bucket=s3_bucket, Key="backups/m.json", Body=b"first")
    writer.write(b"second")
    with pytest.raises(ObjectExists, match="appeared"):
        writer.commit()
    assert storage.get_bytes("m.json") == b"first"


# ---- what every write carries ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sse", "expect"),
    [
        ({"S3_SSE": "aes256"}, ("AES256", None)),
        ({"S3_SSE": "aws:kms", "S3_SSE_KMS_KEY_ID": "alias/pgops"}, ("aws:kms", "alias/pgops")),
    ],
    ids=["aes256", "kms"],
)
def test_sse_and_storage_class_are_applied_to_every_write(
    s3_server: str, s3_bucket: str, s3_client: S3Client, sse: dict[str, str], expect: tuple[str, str | None]
) -> None:
    storage = open_s3(s3_server, s3_bucket, S3_STORAGE_CLASS="STANDARD_IA", **sse)
    storage.put_bytes("small", b"x" * 100)
    stream(storage, "big", os.urandom(PART + 1))
    for key in ("backups/small", "backups/big"):
        head = s3_client.head_object(Bucket=s3_bucket, Key=key)
        assert head.get("StorageClass") == "STANDARD_IA", key
        assert head.get("ServerSideEncryption") == expect[0], key
        assert head.get("SSEKMSKeyId") == expect[1], key


def test_default_writes_carry_no_sse_or_storage_class(s3_server: str, s3_bucket: str, s3_client: S3Client) -> None:
    storage = open_s3(s3_server, s3_bucket)
    storage.put_bytes("small", b"x")
    head = s3_client.head_object(Bucket=s3_bucket, Key="backups/small")
    assert head.get("ServerSideEncryption") is None and head.get("StorageClass", "STANDARD") == "STANDARD"


# ---- Object Lock -----------------------------------------------------------------------------------


@pytest.fixture
def lock_bucket(s3_server: str, s3_client: S3Client, s3_bucket: str) -> Iterator[str]:
    name = s3_bucket + "-lock"
    s3_client.create_bucket(Bucket=name, ObjectLockEnabledForBucket=True)
    yield name
    for v in s3_client.list_object_versions(Bucket=name).get("Versions", []):
        s3_client.put_object_legal_hold(
            Bucket=name, Key=v["Key"], VersionId=v["VersionId"], LegalHold={"Status": "OFF"}
        )


def test_locked_objects_are_reported_and_kept(s3_server: str, s3_client: S3Client, lock_bucket: str) -> None:
    storage = open_s3(s3_server, lock_bucket)
    for key in ("retained", "held", "free"):
        storage.put_bytes(key, key.encode())  # Content-MD5 is sent: Object Lock buckets require it
    until = dt.datetime.now(dt.UTC) + dt.timedelta(days=1)
    s3_client.put_object_retention(
        Bucket=lock_bucket, Key="backups/retained", Retention={"Mode": "GOVERNANCE", "RetainUntilDate": until}
    )
    s3_client.put_object_legal_hold(Bucket=lock_bucket, Key="backups/held", LegalHold={"Status": "ON"})
    with pytest.raises(ObjectLocked, match="retained by Object Lock"):
        storage.delete("retained")
    with pytest.raises(ObjectLocked, match="legal hold"):
        storage.delete("held")
    storage.delete("free")
    assert sorted(i.key for i in storage.list()) == ["held", "retained"]
    with pytest.raises(ObjectNotFound):
        storage.delete("free")
