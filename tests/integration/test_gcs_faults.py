"""GCS failures caused for real against fake-gcs-server: dropped connections and a corrupted byte in flight
(FaultProxy), racing writers, a missing bucket, a closed port, credentials refused by a token endpoint.

What fake-gcs-server (1.54) cannot do, and how it is covered instead:
- it ignores ifGenerationMatch on resumable uploads: the writer's own check just before the final request
  is what refuses a racing object there (real GCS refuses the finalize with 412). It does enforce the
  precondition on single-request uploads, which `test_create_only_is_enforced_by_the_server` uses;
- it ignores kmsKeyName and, on resumable uploads, storageClass: the requests are checked instead, and
  what the server refuses (a disabled KMS key, a retention policy, holds) is answered by `CannedGCS`,
  a loopback stub that sends GCS's documented error documents over real HTTP;
- it has no API that lists in-progress resumable sessions (and keeps cancelled ones): sessions are
  tracked from the traffic the recording proxy sees (`gcs_open_sessions`).
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import http.server
import json
import logging
import os
import socket
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from pgops.errors import ConfigError, ExitCode, IntegrityError, ObjectExists, ObjectLocked, StorageError
from pgops.settings import build_settings
from pgops.storage import open_storage
from pgops.storage.gcs import GCSStorage
from tests.fixtures.engine import run_pgops
from tests.fixtures.objstore import (
    GCS_CHUNK,
    Fault,
    FaultProxy,
    gcs_env,
    gcs_get_object,
    gcs_object_meta,
    gcs_object_names,
    gcs_open_sessions,
    gcs_put_object,
)

MiB = 1024**2
KMS_KEY = "projects/acme/locations/europe-west3/keyRings/backups/cryptoKeys/pgops"


def open_gcs(endpoint: str, bucket: str, **overrides: str) -> GCSStorage:
    st = open_storage(build_settings(environ=gcs_env(endpoint, bucket, **overrides)))
    assert isinstance(st, GCSStorage)
    return st


def stream(storage: GCSStorage, key: str, data: bytes) -> None:
    """Write `data` in 256 KiB pieces the way the engine does: abort on any failure."""
    writer = storage.open_writer(key)
    try:
        for i in range(0, len(data), 256 * 1024):
            writer.write(data[i : i + 256 * 1024])
        writer.commit()
    except BaseException:
        writer.abort()
        raise


def chunk_put(method: str, path: str) -> bool:
    return method == "PUT" and "upload_id=" in path


def chunk_attempts(proxy: FaultProxy, n: int) -> list[bool]:
    """The reset flag of every attempt to send chunk n (1-based) of a GCS_CHUNK-sized stream."""
    start = (n - 1) * GCS_CHUNK
    return [
        e.reset
        for e in proxy.snapshot()
        if chunk_put(e.method, e.path) and e.headers.get("content-range", "").startswith(f"bytes {start}-")
    ]


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def gcs_log(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """caplog for pgops.storage.gcs, even if an earlier test configured pgops logging not to propagate."""
    logger = logging.getLogger("pgops.storage.gcs")
    old_level, old_propagate = logger.level, logger.propagate
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    logger.addHandler(caplog.handler)
    try:
        yield caplog
    finally:
        logger.removeHandler(caplog.handler)
        logger.setLevel(old_level)
        logger.propagate = old_propagate


# ---- a loopback HTTP stub for what the emulator cannot produce ------------------------------------------


Route = tuple[str, str, int, dict[str, Any]]  # method, path prefix, status, JSON body
Answer = tuple[int, dict[str, str], Any]  # status, extra headers, JSON body
Responder = Callable[[str, str, dict[str, str], bytes], Answer | None]


class CannedGCS:
    """Answers chosen requests with fixed JSON documents (GCS errors, token endpoint answers), or through
    `responder` (method, path, headers, body) -> (status, headers, JSON) for a stateful protocol."""

    def __init__(self, routes: list[Route], responder: Responder | None = None) -> None:
        self.routes = routes
        self.requests: list[tuple[str, str, dict[str, str], bytes]] = []
        stub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _answer(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                headers = {k.lower(): v for k, v in self.headers.items()}
                stub.requests.append((self.command, self.path, headers, body))
                answer = responder(self.command, self.path, headers, body) if responder else None
                if answer is None:
                    answer = 404, {}, {"error": {"code": 404, "message": "Not Found", "errors": []}}
                    for method, prefix, route_status, route_doc in stub.routes:
                        if method == self.command and self.path.startswith(prefix):
                            answer = route_status, {}, route_doc
                            break
                status, extra, doc = answer
                raw = json.dumps(doc).encode()
                self.send_response(status)
                for name, value in extra.items():
                    self.send_header(name, value)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            do_GET = do_POST = do_PUT = do_DELETE = _answer

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def gcs_error(status: int, reason: str, message: str) -> dict[str, Any]:
    return {"error": {"code": status, "message": message, "errors": [{"reason": reason, "message": message}]}}


@pytest.fixture
def canned() -> Iterator[Callable[..., CannedGCS]]:
    stubs: list[CannedGCS] = []

    def make(routes: list[Route], responder: Responder | None = None) -> CannedGCS:
        stubs.append(CannedGCS(routes, responder))
        return stubs[-1]

    yield make
    for stub in stubs:
        stub.close()


def service_account_file(tmp_path: Path, token_uri: str) -> tuple[Path, str]:
    """A well-formed service account key with a fresh RSA key; (path, the PEM private key)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    info = {
        "type": "service_account",
        "project_id": "acme",
        "private_key_id": "0123456789abcdef",
        "private_key": pem,
        "client_email": "pgops-backup@acme.iam.gserviceaccount.com",
        "client_id": "1234567890",
        "token_uri": token_uri,
    }
    path = tmp_path / "sa.json"
    path.write_text(json.dumps(info))
    return path, pem


# ---- dropped connections and retries ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("resets", "after_body_bytes"),
    [(1, None), (1, 64 * 1024), (2, 64 * 1024)],
    ids=["reset-at-head", "reset-mid-body", "twice"],
)
def test_connection_reset_during_a_chunk_is_retried(
    gcs_proxy: FaultProxy, gcs_bucket: str, gcs_log: pytest.LogCaptureFixture, resets: int, after_body_bytes: int | None
) -> None:
    storage = open_gcs(gcs_proxy.endpoint, gcs_bucket)
    fault = gcs_proxy.add_fault(Fault(chunk_put, nth=2, times=resets, after_body_bytes=after_body_bytes))
    data = os.urandom(int(3.5 * GCS_CHUNK))
    stream(storage, "db/app.dump", data)

    assert fault.fired == resets
    assert chunk_attempts(gcs_proxy, 2) == [True] * resets + [False]
    assert hashlib.sha256(storage.get_bytes("db/app.dump")).digest() == hashlib.sha256(data).digest()
    assert gcs_open_sessions(gcs_proxy) == []
    retries = [r for r in gcs_log.records if "gcs retry" in r.getMessage() and "bytes 1048576-" in r.getMessage()]
    assert len(retries) == resets
    assert all("upload_id" not in r.getMessage() for r in gcs_log.records)


def test_persistent_chunk_failure_cancels_the_session(gcs_proxy: FaultProxy, gcs_bucket: str) -> None:
    storage = open_gcs(gcs_proxy.endpoint, gcs_bucket, GCS_MAX_ATTEMPTS="2")
    gcs_proxy.add_fault(Fault(chunk_put, nth=3, times=None, after_body_bytes=64 * 1024))
    with pytest.raises(StorageError, match="PGOPS_GCS_ENDPOINT_URL") as err:
        stream(storage, "db/app.dump", os.urandom(int(3.5 * GCS_CHUNK)))
    assert "upload_id" not in str(err.value)
    assert chunk_attempts(gcs_proxy, 3) == [True, True]
    cancels = [e for e in gcs_proxy.snapshot() if e.method == "DELETE" and "upload_id=" in e.path]
    assert [e.status for e in cancels] == [499]
    assert gcs_open_sessions(gcs_proxy) == []
    assert gcs_object_names(gcs_proxy.upstream_url, gcs_bucket) == []


class PartialPersistence:
    """A resumable-upload server that, like GCS may, persists only part of each chunk (whole 256 KiB
    units, at least one) and says so in the 308 Range; it ignores resent bytes it already has."""

    def __init__(self) -> None:
        self.stored = bytearray()
        self.final: dict[str, Any] | None = None

    def __call__(self, method: str, path: str, headers: dict[str, str], body: bytes) -> Answer | None:
        import google_crc32c

        if method == "GET" and "/o/" in path:
            if self.final is None:
                return 404, {}, gcs_error(404, "notFound", "No such object")
            return 200, {}, self.final
        if method == "POST" and "uploadType=resumable" in path:
            return 200, {"Location": f"http://{headers['host']}/upload/storage/v1/b/bkt/o?upload_id=p1"}, {}
        if method != "PUT" or "upload_id=p1" not in path:
            return None
        spec, total = headers["content-range"].removeprefix("bytes ").split("/")
        start = 0 if spec == "*" else int(spec.split("-")[0])
        new = body[len(self.stored) - start :]  # bytes already persisted are ignored
        if total == "*":
            unit = 256 * 1024
            new = new[: max(unit, (len(new) // 2) // unit * unit)]
        self.stored += new
        if total == "*":
            return 308, {"Range": f"bytes=0-{len(self.stored) - 1}"}, {}
        crc = base64.b64encode(google_crc32c.Checksum(bytes(self.stored)).digest()).decode()  # type: ignore[no-untyped-call]
        self.final = {"name": "backups/x", "size": str(len(self.stored)), "crc32c": crc, "generation": "3"}
        return 200, {}, self.final


def test_partly_persisted_chunks_are_resent_from_the_servers_offset(
    canned: Callable[..., CannedGCS], gcs_isolated: None
) -> None:
    server = PartialPersistence()
    stub = canned([("GET", "/storage/v1/b/bkt?", 200, {"name": "bkt"})], server)
    storage = open_gcs(stub.endpoint, "bkt")
    data = os.urandom(int(3.5 * GCS_CHUNK))
    stream(storage, "x", data)
    assert bytes(server.stored) == data
    ranges = [r[2]["content-range"] for r in stub.requests if r[0] == "PUT"]
    assert ranges[:2] == [f"bytes 0-{GCS_CHUNK - 1}/*", f"bytes {GCS_CHUNK // 2}-{GCS_CHUNK + GCS_CHUNK // 2 - 1}/*"]
    assert ranges[-1].endswith(f"/{len(data)}")


def test_lost_chunk_response_never_yields_a_wrong_object(gcs_proxy: FaultProxy, gcs_bucket: str) -> None:
    """The server stores chunk 2, its answer is lost, we send chunk 2 again. Real GCS ignores bytes it has
    already persisted; fake-gcs-server appends them a second time. Either way no wrong object survives:
    here the CRC32C/size check refuses the commit and deletes the object."""
    storage = open_gcs(gcs_proxy.endpoint, gcs_bucket)
    gcs_proxy.add_fault(Fault(chunk_put, nth=2, after_response_bytes=0))
    with pytest.raises(IntegrityError, match=r"CRC32C .* and 4718592 bytes, but we sent CRC32C .* and 3670016"):
        stream(storage, "db/app.dump", os.urandom(int(3.5 * GCS_CHUNK)))
    assert gcs_object_names(gcs_proxy.upstream_url, gcs_bucket) == []
    assert gcs_open_sessions(gcs_proxy) == []


def test_streaming_holds_about_one_chunk_in_memory(gcs_proxy: FaultProxy, gcs_bucket: str) -> None:
    import tracemalloc

    storage = open_gcs(gcs_proxy.endpoint, gcs_bucket)
    piece = os.urandom(256 * 1024)
    tracemalloc.start()
    try:
        writer = storage.open_writer("db/app.dump")
        for _ in range(32):  # 8 MiB, 8 chunks
            writer.write(piece)
        writer.commit()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < GCS_CHUNK + 4 * len(piece), f"peak {peak} bytes for a {GCS_CHUNK}-byte chunk"


# ---- integrity -----------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["resumable", "single"])
def test_byte_flipped_in_flight_is_caught_by_crc32c_and_removed(
    gcs_proxy: FaultProxy, gcs_bucket: str, path: str
) -> None:
    """The proxy changes one byte of the request body: the server stores other bytes than we hashed."""
    storage = open_gcs(gcs_proxy.endpoint, gcs_bucket)
    if path == "resumable":
        gcs_proxy.add_fault(Fault(chunk_put, nth=2, flip_body_byte=12345))
        with pytest.raises(IntegrityError, match="CRC32C") as err:
            stream(storage, "db/app.dump", os.urandom(int(2.5 * GCS_CHUNK)))
    else:  # the data part of a multipart upload starts a few hundred bytes into the body
        gcs_proxy.add_fault(Fault(lambda m, p: m == "POST" and "uploadType=multipart" in p, flip_body_byte=2000))
        with pytest.raises(IntegrityError, match="CRC32C") as err:
            storage.put_bytes("m.json", os.urandom(10_000))
    assert "it was deleted" in str(err.value)
    assert gcs_object_names(gcs_proxy.upstream_url, gcs_bucket) == []
    assert gcs_open_sessions(gcs_proxy) == []


def test_final_request_carries_the_crc32c_for_the_server_to_check(gcs_proxy: FaultProxy, gcs_bucket: str) -> None:
    import google_crc32c

    storage = open_gcs(gcs_proxy.endpoint, gcs_bucket)
    data = os.urandom(int(1.5 * GCS_CHUNK))
    stream(storage, "big", data)
    storage.put_bytes("small", b"x" * 100)
    expected = base64.b64encode(google_crc32c.Checksum(data).digest()).decode()  # type: ignore[no-untyped-call]
    puts = [e for e in gcs_proxy.snapshot() if chunk_put(e.method, e.path)]
    assert [e.headers.get("x-goog-hash") for e in puts] == [None, f"crc32c={expected}"]
    assert puts[-1].headers["content-range"] == f"bytes {GCS_CHUNK}-{len(data) - 1}/{len(data)}"
    single = next(e for e in gcs_proxy.snapshot() if "uploadType=multipart" in e.path)
    small_crc = base64.b64encode(google_crc32c.Checksum(b"x" * 100).digest()).decode()  # type: ignore[no-untyped-call]
    assert f'"crc32c": "{small_crc}"'.encode() in single.body_start
    assert gcs_object_meta(gcs_proxy.upstream_url, gcs_bucket, "backups/big")["crc32c"] == expected  # type: ignore[index]


def test_reader_resumes_after_a_dropped_connection_pinned_to_the_generation(
    gcs_proxy: FaultProxy, gcs_bucket: str
) -> None:
    data = os.urandom(3 * MiB)
    meta = gcs_put_object(gcs_proxy.upstream_url, gcs_bucket, "backups/blob", data)
    storage = open_gcs(gcs_proxy.endpoint, gcs_bucket)
    gcs_proxy.add_fault(Fault(lambda m, p: m == "GET" and "alt=media" in p, after_response_bytes=MiB))
    reader = storage.open_reader("blob")
    got = b"".join(iter(lambda: reader.read(64 * 1024), b""))
    reader.close()
    assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest()
    gets = [e for e in gcs_proxy.snapshot() if e.method == "GET" and "alt=media" in e.path]
    assert [e.reset for e in gets] == [True, False]
    assert all(f"generation={meta['generation']}" in e.path for e in gets)
    assert gets[1].headers["range"].startswith("bytes=") and int(gets[1].headers["range"][6:-1]) > 0


# ---- create-only ---------------------------------------------------------------------------------


def test_object_appearing_during_a_streamed_upload_is_not_overwritten(gcs_proxy: FaultProxy, gcs_bucket: str) -> None:
    storage = open_gcs(gcs_proxy.endpoint, gcs_bucket)
    writer = storage.open_writer("db/app.dump")
    writer.write(os.urandom(int(2.5 * GCS_CHUNK)))  # two chunks sent, the session in progress
    gcs_put_object(gcs_proxy.upstream_url, gcs_bucket, "backups/db/app.dump", b"racer")
    with pytest.raises(ObjectExists, match="appeared"):
        writer.commit()
    writer.abort()
    assert gcs_get_object(gcs_proxy.upstream_url, gcs_bucket, "backups/db/app.dump") == b"racer"
    assert gcs_open_sessions(gcs_proxy) == []
    ranges = [e.headers["content-range"] for e in gcs_proxy.snapshot() if chunk_put(e.method, e.path)]
    assert len(ranges) == 2 and all(r.endswith("/*") for r in ranges), "no final request was sent"
    start = next(e for e in gcs_proxy.snapshot() if e.method == "POST" and "uploadType=resumable" in e.path)
    assert "ifGenerationMatch=0" in start.path  # what real GCS enforces at the finalize (412)


def test_create_only_is_enforced_by_the_server(gcs_proxy: FaultProxy, gcs_bucket: str) -> None:
    """The racing object is written at the last moment, after every check of ours: only the server's
    ifGenerationMatch=0 can refuse the write (fake-gcs-server enforces it on single-request uploads)."""
    storage = open_gcs(gcs_proxy.endpoint, gcs_bucket)
    racer = Fault(
        lambda m, p: m == "POST" and "uploadType=multipart" in p,
        before_forward=lambda: gcs_put_object(gcs_proxy.upstream_url, gcs_bucket, "backups/m.json", b"racer"),
    )
    gcs_proxy.add_fault(racer)
    with pytest.raises(ObjectExists, match="appeared"):
        storage.put_bytes("m.json", b"ours")
    assert racer.fired == 1
    posts = [e for e in gcs_proxy.snapshot() if "uploadType=multipart" in e.path]
    assert len(posts) == 1 and posts[0].status == 412 and "ifGenerationMatch=0" in posts[0].path
    assert gcs_get_object(gcs_proxy.upstream_url, gcs_bucket, "backups/m.json") == b"racer"


# ---- interrupted uploads ---------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["exception", "abort"])
def test_interrupted_upload_is_cancelled_and_never_listed(gcs_proxy: FaultProxy, gcs_bucket: str, how: str) -> None:
    storage = open_gcs(gcs_proxy.endpoint, gcs_bucket)
    writer = storage.open_writer("db/x/app.dump")
    assert gcs_open_sessions(gcs_proxy) == ["upload:backups/db/x/app.dump"]  # started at open: fail fast
    if how == "exception":
        with pytest.raises(RuntimeError, match="pg_dump died"):
            try:
                writer.write(os.urandom(int(1.5 * GCS_CHUNK)))
                raise RuntimeError("pg_dump died")
            except BaseException:
                writer.abort()
                raise
    else:
        writer.write(os.urandom(int(2.5 * GCS_CHUNK)))
        writer.abort()
        writer.abort()
    assert gcs_open_sessions(gcs_proxy) == []
    assert [e.status for e in gcs_proxy.snapshot() if e.method == "DELETE"] == [499]
    assert list(storage.list()) == [] and gcs_object_names(gcs_proxy.upstream_url, gcs_bucket) == []
    with pytest.raises(StorageError, match="aborted"):
        writer.write(b"x")


# ---- configuration errors: one line naming the setting --------------------------------------------


def test_missing_bucket_names_the_storage_url(gcs_server: str, gcs_bucket: str) -> None:
    storage = open_gcs(gcs_server, gcs_bucket + "-missing")
    for fn in (storage.check, lambda: storage.put_bytes("x", b"x"), lambda: storage.open_writer("x")):
        with pytest.raises(StorageError, match=r"bucket .* does not exist .*PGOPS_STORAGE_URL") as err:
            fn()
        assert "\n" not in str(err.value)
    with pytest.raises(StorageError, match="PGOPS_STORAGE_URL"):
        list(storage.list())


def test_unreachable_endpoint_fails_fast_naming_the_endpoint(gcs_isolated: None) -> None:
    endpoint = f"http://127.0.0.1:{closed_port()}"
    storage = open_gcs(endpoint, "some-bucket", GCS_MAX_ATTEMPTS="1")
    start = time.monotonic()
    with pytest.raises(StorageError, match=rf"cannot connect to GCS endpoint {endpoint}.*PGOPS_GCS_ENDPOINT_URL"):
        storage.check()
    with pytest.raises(StorageError, match="PGOPS_GCS_ENDPOINT_URL"):
        storage.open_writer("x")
    assert time.monotonic() - start < 5


def test_credentials_file_errors_name_the_setting(gcs_server: str, gcs_bucket: str, tmp_path: Path) -> None:
    missing = tmp_path / "nope.json"
    with pytest.raises(StorageError, match=rf"PGOPS_GCS_CREDENTIALS_FILE={missing}: file not found"):
        open_gcs(gcs_server, gcs_bucket, GCS_CREDENTIALS_FILE=str(missing))
    garbage = tmp_path / "garbage.json"
    garbage.write_text("not json")
    with pytest.raises(StorageError, match=r"PGOPS_GCS_CREDENTIALS_FILE=.*not a JSON credentials file"):
        open_gcs(gcs_server, gcs_bucket, GCS_CREDENTIALS_FILE=str(garbage))
    partial = tmp_path / "partial.json"
    partial.write_text(json.dumps({"type": "service_account", "client_email": "x@y"}))
    with pytest.raises(StorageError, match=r"PGOPS_GCS_CREDENTIALS_FILE=.*lacks private_key, token_uri"):
        open_gcs(gcs_server, gcs_bucket, GCS_CREDENTIALS_FILE=str(partial))


def test_refused_service_account_key_names_the_credentials_file(
    gcs_proxy: FaultProxy,
    gcs_bucket: str,
    tmp_path: Path,
    canned: Callable[..., CannedGCS],
    gcs_log: pytest.LogCaptureFixture,
) -> None:
    """A deleted / revoked key: Google's token endpoint answers invalid_grant. Then a key that works."""
    refusing = canned(
        [("POST", "/token", 400, {"error": "invalid_grant", "error_description": "Invalid JWT Signature."})]
    )
    sa, pem = service_account_file(tmp_path, refusing.endpoint + "/token")
    storage = open_gcs(gcs_proxy.endpoint, gcs_bucket, GCS_CREDENTIALS_FILE=str(sa))
    assert "sa.json" in repr(storage)
    with pytest.raises(StorageError) as err:
        storage.check()
    msg = str(err.value)
    assert f"PGOPS_GCS_CREDENTIALS_FILE={sa}" in msg and "invalid_grant" in msg and "\n" not in msg
    body = urllib.parse.parse_qs(refusing.requests[0][3].decode())
    assert body["grant_type"] == ["urn:ietf:params:oauth:grant-type:jwt-bearer"]  # a JWT signed with the key
    assertion = body["assertion"][0]
    assert gcs_proxy.snapshot() == []  # nothing reached the store
    with pytest.raises(StorageError, match="PGOPS_GCS_CREDENTIALS_FILE"):
        storage.put_bytes("x", b"x")

    token = "ya29.test-access-token-5f4e3d2c1b"
    accepting = canned([("POST", "/token", 200, {"access_token": token, "expires_in": 3600, "token_type": "Bearer"})])
    sa_ok, pem_ok = service_account_file(tmp_path, accepting.endpoint + "/token")
    good = open_gcs(gcs_proxy.endpoint, gcs_bucket, GCS_CREDENTIALS_FILE=str(sa_ok))
    good.check()
    assert {e.headers.get("authorization") for e in gcs_proxy.snapshot()} == {f"Bearer {token}"}
    texts = [msg, repr(storage), repr(good), gcs_log.text]
    for text in texts:
        for secret in (pem, pem_ok, token, pem.splitlines()[1], pem_ok.splitlines()[1], assertion):
            assert secret not in text


def _adc_env(tmp_path: Path, endpoint_port: int, **extra: str) -> dict[str, str]:
    envfile = tmp_path / "pgops.env"
    envfile.touch()
    return {
        "PGOPS_ENV_FILE": str(envfile),
        "PGOPS_STORAGE_URL": "gs://some-bucket/x",
        "PGOPS_GCS_MAX_ATTEMPTS": "1",
        "CLOUDSDK_CONFIG": str(tmp_path / "no-gcloud"),
        "NO_GCE_CHECK": "true",  # no metadata server probe
        "GCE_METADATA_HOST": f"127.0.0.1:{endpoint_port}",
        "GCE_METADATA_IP": f"127.0.0.1:{endpoint_port}",
        **extra,
    }


def test_missing_application_default_credentials_are_named(tmp_path: Path, gcs_isolated: None) -> None:
    """In a child, like cron runs pgops: google-auth reads its environment once, at import."""
    port = closed_port()
    result = run_pgops(["check"], _adc_env(tmp_path, port), timeout=60)
    assert result.returncode == ExitCode.STORAGE, result.stderr
    errors = [line for line in result.stderr.splitlines() if "level=error" in line]
    assert len(errors) == 1
    assert "Application Default Credentials not found" in errors[0] and "PGOPS_GCS_CREDENTIALS_FILE" in errors[0]
    gac = tmp_path / "adc.json"
    result = run_pgops(["check"], _adc_env(tmp_path, port, GOOGLE_APPLICATION_CREDENTIALS=str(gac)), timeout=60)
    assert result.returncode == ExitCode.STORAGE, result.stderr
    assert f"GOOGLE_APPLICATION_CREDENTIALS={gac}" in result.stderr


# ---- CMEK and storage class ------------------------------------------------------------------------


def test_cmek_and_storage_class_are_sent_with_every_write(gcs_proxy: FaultProxy, gcs_bucket: str) -> None:
    storage = open_gcs(gcs_proxy.endpoint, gcs_bucket, GCS_KMS_KEY_NAME=KMS_KEY, GCS_STORAGE_CLASS="nearline")
    storage.put_bytes("small", b"x" * 100)
    stream(storage, "big", os.urandom(GCS_CHUNK + 1))
    starts = [e for e in gcs_proxy.snapshot() if e.method == "POST" and "/upload/" in e.path]
    assert len(starts) == 2
    for e in starts:
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(e.path).query)
        assert query["kmsKeyName"] == [KMS_KEY] and query["ifGenerationMatch"] == ["0"]
        assert b'"storageClass": "NEARLINE"' in e.body_start
    # What the emulator stores: the storage class of single-request uploads (it drops it on resumable
    # ones, and never records a KMS key).
    assert gcs_object_meta(gcs_proxy.upstream_url, gcs_bucket, "backups/small")["storageClass"] == "NEARLINE"  # type: ignore[index]


def test_malformed_kms_key_or_storage_class_is_a_config_error(gcs_server: str, gcs_bucket: str) -> None:
    with pytest.raises(ConfigError, match=r"PGOPS_GCS_KMS_KEY_NAME=.*projects/P/locations/L"):
        open_gcs(gcs_server, gcs_bucket, GCS_KMS_KEY_NAME=KMS_KEY + "/cryptoKeyVersions/1")
    with pytest.raises(ConfigError, match="PGOPS_GCS_STORAGE_CLASS='GLACIER' is not valid"):
        open_gcs(gcs_server, gcs_bucket, GCS_STORAGE_CLASS="GLACIER")


def test_refused_kms_key_fails_before_any_data_and_leaves_nothing(
    canned: Callable[..., CannedGCS], gcs_isolated: None
) -> None:
    """GCS's answer for a disabled key, over real HTTP from a stub: the emulator ignores CMEK."""
    disabled = gcs_error(
        400,
        "invalid",
        f"The Cloud KMS key {KMS_KEY}/cryptoKeyVersions/1 is disabled, destroyed, or scheduled for destruction.",
    )
    stub = canned(
        [
            ("GET", "/storage/v1/b/bkt/o/", 404, gcs_error(404, "notFound", "No such object: bkt/backups/x")),
            ("GET", "/storage/v1/b/bkt?", 200, {"kind": "storage#bucket", "name": "bkt"}),
            ("POST", "/upload/storage/v1/b/bkt/o", 400, disabled),
        ]
    )
    storage = open_gcs(stub.endpoint, "bkt", GCS_KMS_KEY_NAME=KMS_KEY)
    with pytest.raises(StorageError, match=r"GCS refused the KMS key .*PGOPS_GCS_KMS_KEY_NAME") as err:
        storage.open_writer("db/app.dump")  # before the first byte of a dump is read
    assert "\n" not in str(err.value)
    with pytest.raises(StorageError, match="PGOPS_GCS_KMS_KEY_NAME"):
        storage.put_bytes("m.json", b"{}")
    with pytest.raises(StorageError, match="PGOPS_GCS_KMS_KEY_NAME"):
        storage.check()  # the probe is written like a backup
    assert not [r for r in stub.requests if r[0] == "PUT"], "no data was ever sent"


# ---- retention policies and holds ------------------------------------------------------------------


def test_held_and_retained_objects_are_reported_and_kept(canned: Callable[..., CannedGCS], gcs_isolated: None) -> None:
    """Metadata and refusals as GCS sends them (fake-gcs-server neither stores nor enforces holds)."""
    future = (dt.datetime.now(dt.UTC) + dt.timedelta(days=3)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    base = {"bucket": "bkt", "size": "1", "generation": "7", "crc32c": "AAAAAA==", "updated": future}
    refused = gcs_error(
        403, "retentionPolicyNotMet", "Object 'bkt/backups/policy' is subject to bucket's retention policy."
    )
    stub = canned(
        [
            ("GET", "/storage/v1/b/bkt/o/backups%2Fheld", 200, {**base, "name": "backups/held", "temporaryHold": True}),
            (
                "GET",
                "/storage/v1/b/bkt/o/backups%2Fevent",
                200,
                {**base, "name": "backups/event", "eventBasedHold": True},
            ),
            ("GET", "/storage/v1/b/bkt/o/backups%2Fretained", 200, {**base, "retentionExpirationTime": future}),
            (
                "GET",
                "/storage/v1/b/bkt/o/backups%2Flocked",
                200,
                {**base, "retention": {"mode": "Locked", "retainUntilTime": future}},
            ),
            ("GET", "/storage/v1/b/bkt/o/backups%2Fpolicy", 200, {**base, "name": "backups/policy"}),
            ("DELETE", "/storage/v1/b/bkt/o/backups%2Fpolicy", 403, refused),
        ]
    )
    storage = open_gcs(stub.endpoint, "bkt")
    for key, match in [
        ("held", "temporary hold"),
        ("event", "event-based hold"),
        ("retained", "bucket's retention policy until"),
        ("locked", r"retained \(Locked\) until"),
        ("policy", "retention policy or hold"),
    ]:
        with pytest.raises(ObjectLocked, match=match):
            storage.delete(key)
    deletes = [r for r in stub.requests if r[0] == "DELETE"]
    assert len(deletes) == 1 and "ifGenerationMatch=7" in deletes[0][1]  # only the unprotected-looking one


# ---- secrets --------------------------------------------------------------------------------------


def error_texts(exc: BaseException) -> Iterator[str]:
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        yield str(e)
        yield repr(e)
        e = e.__cause__ or e.__context__


def test_no_session_uri_or_secret_in_any_error_or_log(
    gcs_proxy: FaultProxy, gcs_bucket: str, gcs_log: pytest.LogCaptureFixture
) -> None:
    """A resumable session URI lets anyone holding it write into the object: it is never shown."""
    texts: list[str] = []

    def collect(fn: Callable[[], object]) -> None:
        with pytest.raises(StorageError) as err:
            fn()
        texts.extend(error_texts(err.value))

    storage = open_gcs(gcs_proxy.endpoint, gcs_bucket, GCS_MAX_ATTEMPTS="2")
    gcs_proxy.add_fault(Fault(chunk_put, nth=2, times=None))
    collect(lambda: stream(storage, "a", os.urandom(3 * GCS_CHUNK)))
    gcs_proxy.faults.clear()
    storage.put_bytes("k", b"x")
    collect(lambda: storage.put_bytes("k", b"y"))
    collect(lambda: storage.get_bytes("absent"))
    collect(open_gcs(gcs_proxy.endpoint, gcs_bucket + "-missing").check)
    texts += [repr(storage), str(storage), gcs_log.text]
    upload_ids = {
        urllib.parse.parse_qs(urllib.parse.urlsplit(e.path).query)["upload_id"][0]
        for e in gcs_proxy.snapshot()
        if "upload_id=" in e.path
    }
    assert upload_ids and len(texts) > 8
    for text in texts:
        for upload_id in upload_ids:
            assert upload_id not in text, text
