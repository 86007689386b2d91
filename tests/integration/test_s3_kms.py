"""A disabled SSE-KMS key (RELIABILITY 8, issue 4). moto accepts any KMS key id, so a loopback stub
answers writes the way S3 does when the key is disabled; everything else in the run is real."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest

from pgops.errors import ExitCode
from tests.fixtures.engine import Engine, base_env
from tests.fixtures.pg import Cluster

DISABLED = (
    b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>KMS.DisabledException</Code>'
    b"<Message>arn:aws:kms:us-east-1:123456789012:key/disabled is disabled.</Message></Error>"
)


class _DisabledKeyS3(http.server.BaseHTTPRequestHandler):
    requests: ClassVar[list[str]] = []

    def _answer(self, status: int, body: bytes = b"") -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0) or 0))
        type(self).requests.append(f"{self.command} {self.path}")
        self.send_response(status)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_HEAD(self) -> None:
        self._answer(404 if "/testhost/" in self.path else 200)  # the bucket exists; no key does yet

    def do_PUT(self) -> None:
        self._answer(400, DISABLED)

    def do_POST(self) -> None:
        self._answer(400, DISABLED)

    def do_GET(self) -> None:
        self._answer(200, b'<?xml version="1.0"?><ListBucketResult><KeyCount>0</KeyCount></ListBucketResult>')

    def log_message(self, format: str, *args: object) -> None:
        return


@pytest.fixture
def disabled_kms_endpoint() -> Iterator[str]:
    _DisabledKeyS3.requests = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _DisabledKeyS3)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


def test_disabled_kms_key_fails_fast_with_one_clear_line(
    pg: Cluster, tmp_path: Path, disabled_kms_endpoint: str
) -> None:
    env = {
        **base_env(pg, tmp_path),
        "PGOPS_STORAGE_URL": "s3://kms-bucket/backups",
        "PGOPS_S3_ENDPOINT_URL": disabled_kms_endpoint,
        "PGOPS_S3_ACCESS_KEY_ID": "testing",
        "PGOPS_S3_SECRET_ACCESS_KEY": "testing-secret",
        "PGOPS_S3_REGION": "us-east-1",
        "PGOPS_S3_ADDRESSING_STYLE": "path",
        "PGOPS_S3_MAX_ATTEMPTS": "2",
        "PGOPS_S3_SSE": "aws:kms",
        "PGOPS_S3_SSE_KMS_KEY_ID": "arn:aws:kms:us-east-1:123456789012:key/disabled",
    }
    result = Engine("s3", env, tmp_path).run(["backup"])
    assert result.returncode == ExitCode.STORAGE, result.stderr
    errors = [line for line in result.stderr.splitlines() if "level=error" in line]
    assert len(errors) == 1 and "PGOPS_S3_SSE_KMS_KEY_ID" in errors[0] and "KMS.DisabledException" in errors[0]
    assert "testing-secret" not in result.stderr
    writes = [r for r in _DisabledKeyS3.requests if r.startswith(("PUT", "POST"))]
    assert len(writes) <= 2  # the first write of the run (the target's cluster claim) is refused: it stops there
    assert "event=backup_start" not in result.stderr
