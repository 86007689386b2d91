"""The env file is read strictly: anything that is not KEY=VALUE, binary content, a directory, or a secret
in a file others may read is one ConfigError naming the file (and the line); never the line's text."""

from __future__ import annotations

from pathlib import Path

import pytest

from pgops.errors import ConfigError, ExitCode
from pgops.settings import SPECS, build_settings, load_env_file

GOOD = "PGOPS_STORAGE_URL=s3://acme-db-backups/prod\n"
SECRET = "wJalrXUtnFEMI-K7MDENG-bPxRfiCY"


def _write(tmp_path: Path, data: bytes | str, mode: int = 0o600) -> Path:
    f = tmp_path / "pgops.env"
    if isinstance(data, str):
        data = data.encode()
    f.write_bytes(data)
    f.chmod(mode)
    return f


@pytest.mark.parametrize(
    ("content", "line", "needle"),
    [
        (GOOD + "this is not a setting\n", 2, "is not KEY=VALUE"),
        (GOOD + "PGOPS_TARGET\n", 2, "is not KEY=VALUE"),
        (GOOD + f"# comment\n\n\nPGOPS_S3_SECRET_ACCESS_KEY {SECRET}\n", 5, "is not KEY=VALUE"),
        (GOOD + "PGOPS_TARGET='unterminated\n", 2, "is not KEY=VALUE"),
        (GOOD.encode() + b"PGOPS_TARGET=\xff\xfe\x00\x01\n", 2, "not UTF-8 text"),
        (GOOD + "PGOPS_TARGET=a\x00b\n", 2, "NUL byte"),
        (b"\x7fELF\x02\x01\x01\x00" + bytes(range(256)), 2, "not UTF-8 text"),  # 0x80 follows the \n
    ],
    ids=["words", "key-without-value", "secret-without-equals", "open-quote", "invalid-utf8", "nul", "elf"],
)
def test_malformed_lines_name_the_file_and_line(tmp_path: Path, content: bytes | str, line: int, needle: str) -> None:
    f = _write(tmp_path, content)
    with pytest.raises(ConfigError) as err:
        load_env_file(f, required=True)
    msg = str(err.value)
    assert msg.startswith(f"env file {f} line {line} ") and needle in msg and "\n" not in msg
    assert SECRET not in msg
    assert err.value.exit_code == ExitCode.CONFIG


def test_a_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=rf"env file {tmp_path} is a directory"):
        load_env_file(tmp_path, required=True)
    with pytest.raises(ConfigError, match="is a directory"):  # also when it is the default path
        load_env_file(tmp_path, required=False)


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o660, 0o602])
@pytest.mark.parametrize("key", sorted(s.env for s in SPECS if s.secret))
def test_a_secret_in_a_file_others_may_access_is_refused(tmp_path: Path, mode: int, key: str) -> None:
    f = _write(tmp_path, f"{GOOD}{key}={SECRET}\n", mode)
    with pytest.raises(ConfigError) as err:
        load_env_file(f, required=True)
    msg = str(err.value)
    assert key in msg and f"mode {mode:04o}" in msg and f"chmod 600 {f}" in msg and SECRET not in msg


def test_private_files_and_files_without_secrets_are_fine(tmp_path: Path) -> None:
    private = _write(tmp_path, f"{GOOD}export PGOPS_S3_SECRET_ACCESS_KEY='{SECRET}'  # from Vault\n", 0o600)
    values = load_env_file(private, required=True)
    assert values["PGOPS_S3_SECRET_ACCESS_KEY"] == SECRET
    assert _write(tmp_path, f"{GOOD}PGOPS_S3_SECRET_ACCESS_KEY={SECRET}\n", 0o400) and load_env_file(
        tmp_path / "pgops.env", required=True
    )
    # Readable by everyone, but nothing secret in it (an empty secret is no secret): accepted.
    public = _write(tmp_path, f'# pgops\n{GOOD}PGOPS_PG_PASSWORD=\n\nPGOPS_TARGET="db-1"\n', 0o644)
    settings = build_settings(load_env_file(public, required=True), {})
    assert settings.target == "db-1" and settings.storage_url == "s3://acme-db-backups/prod"
