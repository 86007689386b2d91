#!/usr/bin/python3
"""Run one object-store emulator of the compose stack in the foreground and create its bucket.

    pgops-emulator s3            moto_server on 0.0.0.0:$EMULATOR_PORT (default 5000); in memory
    pgops-emulator gcs           fake-gcs-server on 0.0.0.0:$EMULATOR_PORT (default 4443), filesystem backend
                                 in $EMULATOR_DATA_DIR; upload URLs point at $EMULATOR_PUBLIC_HOST (gcs:4443)
    pgops-emulator health s3|gcs exit 0 when the server answers and $EMULATOR_BUCKET exists (the health check)

The bucket ($EMULATOR_BUCKET, default pgops-backups) is created once the server answers; an existing one
is fine. SIGTERM and SIGINT are passed on to the server, and its exit status is ours.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

BUCKET = os.environ.get("EMULATOR_BUCKET", "pgops-backups")
DEFAULT_PORTS = {"s3": "5000", "gcs": "4443"}


def port(kind: str) -> str:
    return os.environ.get("EMULATOR_PORT", DEFAULT_PORTS[kind])


def request(method: str, url: str, body: dict[str, str] | None = None) -> int:
    """HTTP status of one request (no exception for 4xx/5xx; OSError when nothing answers)."""
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Content-Type": "application/json"}
    req = urllib.request.Request(url, data=data, method=method, headers=headers)  # noqa: S310 - http://127.0.0.1 only
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:  # noqa: S310
            return int(resp.status)
    except urllib.error.HTTPError as e:
        return int(e.code)


def server_command(kind: str) -> list[str]:
    if kind == "s3":
        return ["moto_server", "-H", "0.0.0.0", "-p", port(kind)]  # noqa: S104 - the container's own interface
    public = os.environ.get("EMULATOR_PUBLIC_HOST", f"gcs:{port(kind)}")
    return [
        "fake-gcs-server",
        *("-scheme", "http", "-host", "0.0.0.0", "-port", port(kind)),  # noqa: S104
        *("-backend", "filesystem", "-filesystem-root", os.environ.get("EMULATOR_DATA_DIR", "/var/lib/emulator/gcs")),
        *("-public-host", public, "-external-url", f"http://{public}", "-log-level", "warn"),
    ]


def bucket_status(kind: str) -> int:
    base = f"http://127.0.0.1:{port(kind)}"
    if kind == "s3":
        return request("HEAD", f"{base}/{BUCKET}")
    return request("GET", f"{base}/storage/v1/b/{BUCKET}")


def create_bucket(kind: str) -> int:
    base = f"http://127.0.0.1:{port(kind)}"
    if kind == "s3":
        return request("PUT", f"{base}/{BUCKET}")
    return request("POST", f"{base}/storage/v1/b?project=pgops-compose", {"name": BUCKET})


def serve(kind: str) -> int:
    server = subprocess.Popen(server_command(kind))
    signal.signal(signal.SIGTERM, lambda *_: server.send_signal(signal.SIGTERM))
    signal.signal(signal.SIGINT, lambda *_: server.send_signal(signal.SIGINT))
    deadline = time.monotonic() + 60
    while True:
        try:
            status = bucket_status(kind)
            break
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                server.kill()
                sys.stderr.write(f"pgops-emulator: the {kind} server did not start\n")
                return 1
            time.sleep(0.2)
    if status == 404:
        status = create_bucket(kind)
        if status not in (200, 409):
            server.terminate()
            sys.stderr.write(f"pgops-emulator: creating bucket {BUCKET} failed with HTTP {status}\n")
            return 1
    print(f"pgops-emulator: {kind} server on port {port(kind)}, bucket {BUCKET}", flush=True)
    return server.wait()


def main(argv: list[str]) -> int:
    if len(argv) == 1 and argv[0] in DEFAULT_PORTS:
        return serve(argv[0])
    if len(argv) == 2 and argv[0] == "health" and argv[1] in DEFAULT_PORTS:
        try:
            return 0 if bucket_status(argv[1]) == 200 else 1
        except OSError:
            return 1
    sys.stderr.write("usage: pgops-emulator s3|gcs | pgops-emulator health s3|gcs\n")
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
