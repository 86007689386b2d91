"""Bad input seen the way the backup role and cron see it: `pgops` as a process, one error line naming
the file or setting and what would be valid, exit 2, no traceback and no raw library warnings."""

from __future__ import annotations

import contextlib
import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from pgops.errors import ExitCode
from tests.fixtures.engine import run_pgops
from tests.fixtures.objstore import s3_env

SECRET = "wJalrXUtnFEMI-K7MDENG-bPxRfiCY"
GOOD = "PGOPS_STORAGE_URL=s3://acme-db-backups/prod\n"


def check_settings(env_file: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return run_pgops(["check", "--settings-only", "--env-file", str(env_file)], env)


def one_error(result: subprocess.CompletedProcess[str]) -> str:
    """The single error line of a run that failed with exit 2, and nothing raw on stderr."""
    assert result.returncode == ExitCode.CONFIG, result.stderr
    assert "Traceback" not in result.stderr and "error_type=bug" not in result.stderr, result.stderr
    assert all(line.startswith("ts=") for line in result.stderr.splitlines()), result.stderr  # only log lines
    errors = [line for line in result.stderr.splitlines() if "level=error" in line]
    assert len(errors) == 1 and "error_type=ConfigError" in errors[0], result.stderr
    assert SECRET not in result.stderr
    return errors[0]


def _file(tmp_path: Path, data: bytes, mode: int = 0o600) -> Path:
    f = tmp_path / "pgops.env"
    f.write_bytes(data)
    f.chmod(mode)
    return f


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        (GOOD.encode() + b"PGOPS_TARGET db-1\n", "line 2 is not KEY=VALUE"),
        (GOOD.encode() + f"PGOPS_S3_SECRET_ACCESS_KEY: {SECRET}\n".encode(), "line 2 is not KEY=VALUE"),
        (GOOD.encode() + b"\x00\x01\x02\xff\xfe binary\n", "line 2 is not UTF-8 text"),
        (GOOD.encode() + b"PGOPS_TARGET=a\x00b\n", "line 2 holds a NUL byte"),
    ],
    ids=["words", "yaml-style-secret", "binary", "nul"],
)
def test_malformed_env_file_is_exit_2_naming_file_and_line(tmp_path: Path, data: bytes, needle: str) -> None:
    f = _file(tmp_path, data)
    error = one_error(check_settings(f))
    assert str(f) in error and needle in error


def test_directory_as_env_file_is_exit_2(tmp_path: Path) -> None:
    error = one_error(check_settings(tmp_path))
    assert f"env file {tmp_path} is a directory" in error


def test_readable_env_file_with_a_secret_is_refused_without_one_accepted(tmp_path: Path) -> None:
    f = _file(tmp_path, f"{GOOD}PGOPS_S3_ACCESS_KEY_ID=AKIA1\nPGOPS_S3_SECRET_ACCESS_KEY={SECRET}\n".encode(), 0o644)
    error = one_error(check_settings(f))
    assert "PGOPS_S3_SECRET_ACCESS_KEY" in error and "mode 0644" in error and "chmod 600" in error
    f.chmod(0o600)
    assert check_settings(f).returncode == 0
    public = _file(tmp_path, GOOD.encode(), 0o644)  # no secret in it: fine for anyone to read
    ok = check_settings(public)
    assert ok.returncode == 0, ok.stderr
    assert "level=warning" not in ok.stderr and "level=error" not in ok.stderr


@pytest.mark.parametrize(
    ("url", "needle"),
    [("gs://bucket/../etc", "'..' parts"), ("s3://acme-db-backups/prod?x=1", "'?' or '#'"), ("s3://x/p", "bucket")],
)
def test_settings_only_refuses_a_bad_storage_url(tmp_path: Path, url: str, needle: str) -> None:
    f = _file(tmp_path, f"PGOPS_STORAGE_URL={url}\n".encode())
    error = one_error(check_settings(f))
    assert "PGOPS_STORAGE_URL" in error and needle in error


# ---- TLS settings of the S3 client ----------------------------------------------------------------------


class TLSProxy:
    """HTTPS on 127.0.0.1 in front of moto's plain HTTP, with a self-signed certificate for 127.0.0.1."""

    def __init__(self, upstream: str, tmp: Path) -> None:
        self.cert, key = tmp / "cert.pem", tmp / "key.pem"
        subprocess.run(
            [
                "openssl",
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "1",
                "-subj",
                "/CN=127.0.0.1",
                "-addext",
                "subjectAltName=IP:127.0.0.1",
                "-keyout",
                str(key),
                "-out",
                str(self.cert),
            ],
            check=True,
            capture_output=True,
        )
        host, port = upstream.split("://", 1)[1].rsplit(":", 1)
        self._upstream = (host, int(port))
        self._ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._ctx.load_cert_chain(self.cert, key)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.endpoint = f"https://127.0.0.1:{self._listener.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                raw, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(raw,), daemon=True).start()

    def _serve(self, raw: socket.socket) -> None:
        with (
            contextlib.suppress(OSError),
            self._ctx.wrap_socket(raw, server_side=True) as client,
            socket.create_connection(self._upstream) as upstream,
        ):
            back = threading.Thread(target=_pipe, args=(upstream, client), daemon=True)
            back.start()
            _pipe(client, upstream)
            back.join(timeout=30)

    def close(self) -> None:
        self._listener.close()


def _pipe(src: socket.socket, dst: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while data := src.recv(65536):
            dst.sendall(data)
        dst.shutdown(socket.SHUT_WR)


@pytest.fixture
def tls_proxy(s3_server: str, tmp_path: Path) -> Iterator[TLSProxy]:
    proxy = TLSProxy(s3_server, tmp_path)
    try:
        yield proxy
    finally:
        proxy.close()


def _s3_over_tls(proxy: TLSProxy, bucket: str, tmp_path: Path, **overrides: str) -> dict[str, str]:
    env_file = tmp_path / "empty.env"
    env_file.touch()
    return {**s3_env(proxy.endpoint, bucket, S3_MAX_ATTEMPTS="1", **overrides), "PGOPS_ENV_FILE": str(env_file)}


def test_tls_verification_off_is_one_log_line(tls_proxy: TLSProxy, s3_bucket: str, tmp_path: Path) -> None:
    on = run_pgops(["list"], _s3_over_tls(tls_proxy, s3_bucket, tmp_path))  # control: the certificate is refused
    assert on.returncode == ExitCode.STORAGE and "TLS verification" in on.stderr, on.stderr
    off = run_pgops(["list"], _s3_over_tls(tls_proxy, s3_bucket, tmp_path, S3_VERIFY_TLS="false"))
    assert off.returncode == 0, off.stderr
    assert "InsecureRequestWarning" not in off.stderr and "warnings.warn" not in off.stderr, off.stderr
    assert all(line.startswith("ts=") for line in off.stderr.splitlines()), off.stderr
    warned = [line for line in off.stderr.splitlines() if "level=warning" in line]
    assert len(warned) == 1 and "PGOPS_S3_VERIFY_TLS" in warned[0], off.stderr


def test_ca_bundle_that_does_not_exist_is_named(tls_proxy: TLSProxy, s3_bucket: str, tmp_path: Path) -> None:
    good = run_pgops(["list"], _s3_over_tls(tls_proxy, s3_bucket, tmp_path, S3_CA_BUNDLE=str(tls_proxy.cert)))
    assert good.returncode == 0, good.stderr  # control: the bundle that signs the endpoint works
    missing = tmp_path / "no-such-ca.pem"
    env = _s3_over_tls(tls_proxy, s3_bucket, tmp_path, S3_CA_BUNDLE=str(missing))
    for args in (["list"], ["check", "--settings-only"]):
        error = one_error(run_pgops(args, env))
        assert "PGOPS_S3_CA_BUNDLE" in error and str(missing) in error and "does not exist" in error
