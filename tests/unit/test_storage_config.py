"""Each backend gets its own typed, frozen config (pgops.storage.config), built from Settings in one
place; backends, clients and writers never see the whole Settings. No object store is needed here."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest

import pgops.storage
from pgops.errors import ConfigError, ExitCode
from pgops.settings import Secret, Settings, build_settings
from pgops.storage import GCSConfig, S3Config, open_backend, storage_config
from pgops.storage.url import parse_storage_url

STORAGE_DIR = Path(pgops.storage.__file__).parent
S3_SECRET = "wJalrXUtnFEMI-secret-key"
S3_TOKEN = "FwoGZXIvYXdzE-session-token"


def s3_env(ca_bundle: Path) -> dict[str, str]:
    """Every PGOPS_S3_* setting, each with a value other than its default (so a swapped field shows)."""
    return {
        "PGOPS_STORAGE_URL": "s3://acme-db-backups/prod",
        "PGOPS_S3_ENDPOINT_URL": "minio.internal:9000",
        "PGOPS_S3_REGION": "eu-central-1",
        "PGOPS_S3_ACCESS_KEY_ID": "AKIAEXAMPLE",
        "PGOPS_S3_SECRET_ACCESS_KEY": S3_SECRET,
        "PGOPS_S3_SESSION_TOKEN": S3_TOKEN,
        "PGOPS_S3_VERIFY_TLS": "false",
        "PGOPS_S3_CA_BUNDLE": str(ca_bundle),
        "PGOPS_S3_ADDRESSING_STYLE": "path",
        "PGOPS_S3_STORAGE_CLASS": "STANDARD_IA",
        "PGOPS_S3_SSE": "aws:kms",
        "PGOPS_S3_SSE_KMS_KEY_ID": "arn:aws:kms:eu-central-1:111122223333:key/1234abcd",
        "PGOPS_S3_PART_SIZE": "16MiB",
        "PGOPS_S3_MAX_ATTEMPTS": "7",
        "PGOPS_S3_REQUEST_CHECKSUM": "when_supported",
        "PGOPS_S3_CONDITIONAL_WRITES": "false",
    }


GCS_KMS = "projects/acme-prod/locations/europe-west3/keyRings/backups/cryptoKeys/pgops"
GCS_ENV = {
    "PGOPS_STORAGE_URL": "gs://acme-db-backups/prod",
    "PGOPS_GCS_CREDENTIALS_FILE": "/etc/pgops/gcs-backup-sa.json",
    "PGOPS_GCS_PROJECT": "acme-prod",
    "PGOPS_GCS_ENDPOINT_URL": "http://127.0.0.1:4443",
    "PGOPS_GCS_KMS_KEY_NAME": GCS_KMS,
    "PGOPS_GCS_STORAGE_CLASS": "NEARLINE",
    "PGOPS_GCS_CHUNK_SIZE": "8MiB",
    "PGOPS_GCS_MAX_ATTEMPTS": "3",
}


def backend_fields(settings: Settings, prefix: str) -> dict[str, object]:
    """The Settings fields of one backend (s3_*, gcs_*), named as the backend's config names them."""
    return {
        f.name[len(prefix) :]: getattr(settings, f.name)
        for f in dataclasses.fields(settings)
        if f.name.startswith(prefix)
    }


@pytest.fixture
def ca_bundle(tmp_path: Path) -> Path:
    path = tmp_path / "ca.pem"
    path.write_text("-----BEGIN CERTIFICATE-----\n")
    return path


def test_s3_config_holds_every_s3_setting_and_nothing_else(ca_bundle: Path) -> None:
    settings = build_settings({}, s3_env(ca_bundle))
    location, config = storage_config(settings)
    assert location == parse_storage_url("s3://acme-db-backups/prod")
    assert isinstance(config, S3Config)
    assert dataclasses.asdict(config) == backend_fields(settings, "s3_")
    assert config.secret_access_key.reveal() == S3_SECRET and config.session_token.reveal() == S3_TOKEN


def test_gcs_config_holds_every_gcs_setting_and_nothing_else() -> None:
    settings = build_settings({}, GCS_ENV)
    location, config = storage_config(settings)
    assert location == parse_storage_url("gs://acme-db-backups/prod")
    assert isinstance(config, GCSConfig)
    assert dataclasses.asdict(config) == backend_fields(settings, "gcs_")


def test_a_local_directory_needs_no_backend_config(tmp_path: Path) -> None:
    location, config = storage_config(build_settings({}, {"PGOPS_STORAGE_URL": tmp_path.as_uri()}))
    assert (location.scheme, location.path, config) == ("file", str(tmp_path), None)


def test_repr_of_a_config_never_shows_its_secrets(ca_bundle: Path) -> None:
    pair = storage_config(build_settings({}, s3_env(ca_bundle)))
    config = pair[1]
    assert isinstance(config, S3Config)
    shown = (repr(config), str(config), f"{config}", repr(pair), repr(dataclasses.astuple(config)))
    for text in shown:
        assert S3_SECRET not in text and S3_TOKEN not in text, text
    assert "secret_access_key=Secret('***')" in repr(config)
    assert "session_token=Secret('***')" in repr(config)
    assert dataclasses.replace(config, session_token=Secret("")).session_token.reveal() == ""


def test_configs_are_frozen(ca_bundle: Path) -> None:
    _, config = storage_config(build_settings({}, s3_env(ca_bundle)))
    assert config is not None
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.max_attempts = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"PGOPS_GCS_STORAGE_CLASS": "GLACIER"},
            "PGOPS_GCS_STORAGE_CLASS='GLACIER' is not valid; valid: STANDARD, NEARLINE, COLDLINE, ARCHIVE "
            "(or empty for the bucket default)",
        ),
        (
            {"PGOPS_GCS_KMS_KEY_NAME": f" {GCS_KMS}/cryptoKeyVersions/1 "},
            f"PGOPS_GCS_KMS_KEY_NAME='{GCS_KMS}/cryptoKeyVersions/1' is not a Cloud KMS key name; valid form: "
            "projects/P/locations/L/keyRings/R/cryptoKeys/K (without /cryptoKeyVersions/N)",
        ),
    ],
)
def test_gcs_values_are_refused_with_exit_2_before_any_client_is_built(env: dict[str, str], message: str) -> None:
    """No emulator runs here: the error comes from building the config, as it came before."""
    with pytest.raises(ConfigError) as err:
        storage_config(build_settings({}, {**GCS_ENV, **env}))
    assert str(err.value) == message
    assert err.value.exit_code == ExitCode.CONFIG and int(ExitCode.CONFIG) == 2


def test_gcs_storage_class_and_kms_key_are_normalised() -> None:
    _, config = storage_config(
        build_settings({}, {**GCS_ENV, "PGOPS_GCS_STORAGE_CLASS": " coldline ", "PGOPS_GCS_KMS_KEY_NAME": ""})
    )
    assert isinstance(config, GCSConfig)
    assert (config.storage_class, config.kms_key_name) == ("COLDLINE", "")


def test_a_config_of_another_backend_is_refused(ca_bundle: Path, tmp_path: Path) -> None:
    s3_location, s3 = storage_config(build_settings({}, s3_env(ca_bundle)))
    store = tmp_path / "store"
    file_location = parse_storage_url(store.as_uri())
    with pytest.raises(TypeError, match="cannot be opened with NoneType"):
        open_backend(s3_location, None)
    with pytest.raises(TypeError, match="cannot be opened with S3Config"):
        open_backend(file_location, s3)
    assert not store.exists()


def test_storage_code_reads_settings_only_in_config_py() -> None:
    """Backends, clients and writers take their config: no module under pgops/storage other than config.py
    reads a Settings field (s3_*, gcs_*, ...) or imports pgops.settings at run time."""
    offences = []
    for path in sorted(STORAGE_DIR.glob("*.py")):
        if path.name == "config.py":
            continue
        tree = ast.parse(path.read_text(), str(path))
        type_only = {
            id(n)
            for node in ast.walk(tree)
            if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING"
            for n in ast.walk(node)
        }
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr.startswith(("s3_", "gcs_")):
                offences.append(f"{path.name}:{node.lineno} reads .{node.attr}")
            allowed = path.name == "__init__.py" and id(node) in type_only  # open_storage's annotation
            if isinstance(node, ast.ImportFrom) and node.module == "pgops.settings" and not allowed:
                offences.append(f"{path.name}:{node.lineno} imports pgops.settings")
    assert offences == []
