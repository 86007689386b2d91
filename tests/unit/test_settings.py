from __future__ import annotations

from pathlib import Path

import pytest

from pgops.errors import ConfigError
from pgops.settings import SPECS, Secret, build_settings, load_env_file

BASE = {"PGOPS_STORAGE_URL": "s3://bucket-name/prefix"}


def test_precedence_env_file_then_environment_then_flags() -> None:
    s = build_settings({"PGOPS_TARGET": "from-file", "PGOPS_COMPRESSION": "gzip"}, {"PGOPS_TARGET": "from-env"})
    assert (s.target, s.compression) == ("from-env", "gzip")
    s = build_settings({"PGOPS_TARGET": "from-file"}, {"PGOPS_TARGET": "from-env"}, {"PGOPS_TARGET": "from-flag"})
    assert s.target == "from-flag"


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"PGOPS_COMPRESION": "zstd"}, "did you mean PGOPS_COMPRESSION"),
        ({"PGOPS_COMPRESSION": "lz4"}, "valid values: zstd, gzip, none"),
        ({"PGOPS_COMPRESSION_LEVEL": "-1"}, "PGOPS_COMPRESSION_LEVEL"),
        ({"PGOPS_COMPRESSION": "gzip", "PGOPS_COMPRESSION_LEVEL": "15"}, "valid values: 1 to 9"),
        ({"PGOPS_S3_PART_SIZE": "1MiB"}, "PGOPS_S3_PART_SIZE"),
        ({"PGOPS_S3_PART_SIZE": "lots"}, "like 16MiB"),
        ({"PGOPS_S3_VERIFY_TLS": "maybe"}, "valid values: true, false"),
        ({"PGOPS_STORAGE_URL": "ftp://x/y"}, "s3://bucket/prefix"),
        ({"PGOPS_STORAGE_URL": "file://relative/path"}, "absolute path"),
        ({"PGOPS_STORAGE_URL": "s3://key:secret@bucket/x"}, "credentials do not belong"),
        ({"PGOPS_TARGET": "bad name!"}, "PGOPS_TARGET"),
        ({"PGOPS_S3_SSE_KMS_KEY_ID": "k"}, "PGOPS_S3_SSE=aws:kms"),
        ({"PGOPS_PG_CONNINFO": "host=x password=hunter2"}, "must not contain a password"),
        ({"PGOPS_DATABASES": "a,b", "PGOPS_EXCLUDE_DATABASES": "b"}, "both name"),
        ({"PGOPS_KEEP_LAST": "-1"}, "valid values: an integer >= 0"),
        ({"PGOPS_MIN_KEEP": "0"}, "valid values: an integer >= 1"),
        ({"PGOPS_MAX_AGE": "30 days"}, "like 36h, 90d"),
        ({"PGOPS_RETENTION_TIMEZONE": "Mars/Olympus"}, "IANA names"),
        ({"PGOPS_BACKUP_FROM": "leader"}, "PGOPS_BACKUP_FROM='leader' is not valid; valid values: any, primary"),
    ],
)
def test_bad_input_names_the_key_and_valid_values(env: dict[str, str], needle: str) -> None:
    with pytest.raises(ConfigError) as e:
        build_settings({}, {**BASE, **env})
    assert needle in str(e.value)
    assert "hunter2" not in str(e.value)


def test_secrets_never_in_repr_str_or_redacted() -> None:
    s = build_settings(
        {},
        {
            **BASE,
            "PGOPS_PG_PASSWORD": "hunter2-pw",
            "PGOPS_S3_ACCESS_KEY_ID": "AKIA1",
            "PGOPS_S3_SECRET_ACCESS_KEY": "wJalrXUtnFEMI-secret",
        },
    )
    for text in (repr(s), str(s), str(s.redacted()), repr(s.pg_password), f"{s.s3_secret_access_key}"):
        assert "hunter2-pw" not in text and "wJalrXUtnFEMI-secret" not in text
    assert s.pg_password.reveal() == "hunter2-pw"
    assert s.redacted()["pg_password"] == "set"
    assert repr(Secret("")) == "Secret('')"


def test_env_file_unknown_key_and_missing_explicit_file(tmp_path: Path) -> None:
    f = tmp_path / "pgops.env"
    f.write_text("PGOPS_STORAGE_URL=file:///var/backups\nSOMETHING_ELSE=1\n")
    with pytest.raises(ConfigError, match="SOMETHING_ELSE in the env file"):
        build_settings(load_env_file(f, required=True), {})
    with pytest.raises(ConfigError, match="does not exist"):
        load_env_file(tmp_path / "nope.env", required=True)
    assert load_env_file(tmp_path / "nope.env", required=False) == {}


def test_defaults_are_valid_and_documented() -> None:
    s = build_settings({}, {})
    assert s.storage_url is None and s.compression == "zstd" and s.effective_compression_level == 3
    assert s.s3_verify_tls is True and s.s3_request_checksum == "when_required"
    assert (s.min_keep, s.grace_period, s.max_age, s.retention_timezone) == (1, 36 * 3600, 0, "UTC")
    assert build_settings({}, {"PGOPS_MAX_AGE": "2w"}).max_age == 14 * 86400
    assert s.backup_from == "any" and build_settings({}, {"PGOPS_BACKUP_FROM": "Primary"}).backup_from == "primary"
    from pgops.reference import render

    docs = (Path(__file__).parents[2] / "docs" / "configuration.md").read_text()
    assert docs == render(), "docs/configuration.md is stale: python -m pgops.reference > docs/configuration.md"
    for spec in SPECS:
        assert f"`{spec.env}`" in docs, f"{spec.env} is not documented in docs/configuration.md"
        assert spec.example in docs, f"the example for {spec.env} is not in docs/configuration.md"


def test_missing_storage_url_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match="PGOPS_STORAGE_URL is not set"):
        build_settings({}, {}).require_storage()


@pytest.mark.parametrize(("compression", "level"), [("zstd", "99"), ("zstd", "0"), ("zstd", "22"), ("gzip", "10")])
def test_compression_level_error_and_docs_give_the_same_range(compression: str, level: str) -> None:
    from pgops.settings import COMPRESSION_LEVELS

    lo, hi, default = COMPRESSION_LEVELS[compression]
    with pytest.raises(ConfigError) as err:
        build_settings({}, {"PGOPS_COMPRESSION": compression, "PGOPS_COMPRESSION_LEVEL": level})
    assert f"valid values: {lo} to {hi} (empty: the default, {default})" in str(err.value)
    docs = (Path(__file__).parents[2] / "docs" / "configuration.md").read_text()
    (row,) = [line for line in docs.splitlines() if line.startswith("| `PGOPS_COMPRESSION_LEVEL`")]
    assert f"{compression} {lo}-{hi} (default {default})" in row
    assert build_settings({}, {"PGOPS_COMPRESSION": compression, "PGOPS_COMPRESSION_LEVEL": str(hi)})
    assert build_settings({}, {"PGOPS_COMPRESSION": compression}).effective_compression_level == default
    with pytest.raises(ConfigError, match="valid values: empty"):
        build_settings({}, {"PGOPS_COMPRESSION": "none", "PGOPS_COMPRESSION_LEVEL": "3"})
