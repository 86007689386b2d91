"""The moto S3 emulator in its own process on 127.0.0.1, so its CPU and memory are not pgops'."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

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
