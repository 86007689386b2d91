"""Settings: one frozen object built from the env file, then the environment, then flags.

Later sources override earlier ones: flags > environment (PGOPS_*) > env file (default
/etc/pgops/pgops.env). Every key is declared once, in SPECS, with its parser, default and help text;
docs/configuration.md is checked against SPECS by a test. Unknown PGOPS_* keys are errors, so a typo
never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import socket
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from pgops.errors import ConfigError

DEFAULT_ENV_FILE = "/etc/pgops/pgops.env"
PREFIX = "PGOPS_"


class Secret:
    """A string that never shows itself in repr, str, logs or error text."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')" if self._value else "Secret('')"

    __str__ = __repr__

    def __bool__(self) -> bool:
        return bool(self._value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


# ---- parsers: each takes the raw string and the key, and raises ConfigError naming both -------------

Parser = Callable[[str, str], Any]


def _str(raw: str, key: str) -> str:
    return raw.strip()


def _secret(raw: str, key: str) -> Secret:
    return Secret(raw)


def _bool(raw: str, key: str) -> bool:
    v = raw.strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{key}={raw!r} is not a boolean; valid values: true, false (also 1/0, yes/no, on/off)")


def _int_range(lo: int, hi: int | None = None) -> Parser:
    def parse(raw: str, key: str) -> int:
        try:
            v = int(raw.strip())
        except ValueError:
            raise ConfigError(f"{key}={raw!r} is not an integer; valid values: {_range_text(lo, hi)}") from None
        if v < lo or (hi is not None and v > hi):
            raise ConfigError(f"{key}={v} is out of range; valid values: {_range_text(lo, hi)}")
        return v

    return parse


def _range_text(lo: int, hi: int | None) -> str:
    return f"an integer from {lo} to {hi}" if hi is not None else f"an integer >= {lo}"


_SIZE_RE = re.compile(r"^\s*(\d+)\s*([kmgt]i?b?|b)?\s*$", re.IGNORECASE)
_SIZE_MULT = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}


def _size(lo: int, hi: int) -> Parser:
    def parse(raw: str, key: str) -> int:
        m = _SIZE_RE.match(raw)
        if not m:
            raise ConfigError(f"{key}={raw!r} is not a size; valid values: a byte count like 16MiB, 64M or 8388608")
        v = int(m.group(1)) * _SIZE_MULT[(m.group(2) or "")[:1].lower()]
        if not lo <= v <= hi:
            raise ConfigError(f"{key}={raw!r} is out of range; valid values: {lo} to {hi} bytes")
        return v

    return parse


def _readable_file(raw: str, key: str) -> str:
    """Empty, or a file this user can read."""
    v = raw.strip()
    if not v:
        return v
    path = Path(v)
    if not path.exists():
        problem = "does not exist"
    elif not path.is_file():
        problem = "is not a file"
    elif not os.access(path, os.R_OK):
        problem = "cannot be read by this user"
    else:
        return v
    raise ConfigError(f"{key}={v!r}: {problem}; valid values: a readable file, or empty")


def _choice(*choices: str) -> Parser:
    def parse(raw: str, key: str) -> str:
        v = raw.strip().lower()
        if v not in choices:
            raise ConfigError(f"{key}={raw!r} is not valid; valid values: {', '.join(choices)}")
        return v

    return parse


def _list(raw: str, key: str) -> tuple[str, ...]:
    return tuple(p.strip() for p in raw.split(",") if p.strip())


def _storage_url(raw: str, key: str) -> str:
    from pgops.storage.url import parse_storage_url  # the one parser of storage URLs

    parse_storage_url(raw, key)
    return raw.strip()


_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")


def _default_target() -> str:
    host = socket.gethostname().split(".")[0] or "localhost"
    return re.sub(r"[^A-Za-z0-9._-]", "-", host)[:63]


def _optional(parse: Parser) -> Parser:
    """Empty means unset (None): the effective default then depends on other settings."""

    def parse_optional(raw: str, key: str) -> Any:
        return None if not raw.strip() else parse(raw, key)

    return parse_optional


_DURATION_RE = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$", re.IGNORECASE)
_DURATION_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def _duration(raw: str, key: str) -> int:
    """A duration like 36h, 30d or 8w, in seconds. 0 means off."""
    v = raw.strip()
    if v in ("", "0"):
        return 0
    m = _DURATION_RE.match(v)
    if not m:
        raise ConfigError(
            f"{key}={raw!r} is not a duration; valid values: a number with s, m, h, d or w (like 36h, 90d)"
        )
    return int(m.group(1)) * _DURATION_SECONDS[m.group(2).lower()]


def _timezone(raw: str, key: str) -> str:
    import zoneinfo

    v = raw.strip() or "UTC"
    try:
        zoneinfo.ZoneInfo(v)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ConfigError(
            f"{key}={raw!r} is not a known time zone; valid values: IANA names like UTC, Europe/Berlin"
        ) from None
    return v


def _name(raw: str, key: str) -> str:
    v = raw.strip() or _default_target()
    if not _NAME_RE.match(v):
        raise ConfigError(
            f"{key}={raw!r} is not a valid name; valid values: 1-63 characters of letters, digits, '.', '_', '-'"
        )
    return v


def _stanza(raw: str, key: str) -> str:
    """Empty (no physical layer), or a pgBackRest stanza name."""
    v = raw.strip()
    if v and not _NAME_RE.match(v):  # pgBackRest's stanza rule is pgops' name rule
        raise ConfigError(
            f"{key}={raw!r} is not a valid stanza name; valid values: empty, or 1-63 letters, digits, '.', '_', "
            "'-' starting with a letter or digit"
        )
    return v


# Compression levels: (lowest, highest, default) per PGOPS_COMPRESSION; the help text, the error and the
# default all come from here, so docs/configuration.md and the engine cannot disagree.
COMPRESSION_LEVELS = {"zstd": (1, 19, 3), "gzip": (1, 9, 6), "none": (0, 0, 0)}
_LEVELS_TEXT = ", ".join(f"{k} {lo}-{hi} (default {d})" for k, (lo, hi, d) in COMPRESSION_LEVELS.items() if hi)


def _compression_level(raw: str, key: str) -> int:
    """Any integer; _cross_check holds it to the range of the chosen compression."""
    try:
        return int(raw.strip())
    except ValueError:
        raise ConfigError(f"{key}={raw!r} is not an integer; valid values: {_LEVELS_TEXT}") from None


@dataclasses.dataclass(frozen=True)
class Spec:
    key: str  # without the PGOPS_ prefix, lower case is the attribute name
    parse: Parser
    default: str | None  # raw default, parsed like any other value; None = unset
    help: str
    example: str
    secret: bool = False

    @property
    def env(self) -> str:
        return PREFIX + self.key

    @property
    def attr(self) -> str:
        return self.key.lower()


SPECS: tuple[Spec, ...] = (
    # --- where backups go -----------------------------------------------------------------------
    Spec(
        "STORAGE_URL",
        _storage_url,
        None,
        "Where backups are stored: s3://bucket/prefix, gs://bucket/prefix or file:///absolute/path. Bucket "
        "names follow the provider's rules; the prefix or path has no empty, '.' or '..' parts and no '?' or '#'.",
        "s3://acme-db-backups/prod",
    ),
    Spec(
        "TARGET",
        _name,
        "",
        "Name of the server being backed up; the first level of keys under the "
        "storage prefix, and the lock name. Default: the short host name. A drill host passes another "
        "server's name (`pgops verify --restore-test --target db-prod-1`) to restore-test its backups on its "
        "own server; verify writes only its `verified-*.json` record there.",
        "pg-prod-1",
    ),
    # --- what to back up ------------------------------------------------------------------------
    Spec(
        "DATABASES",
        _list,
        "all",
        "Databases to back up: 'all' (every non-template database except pgops' leftovers, see `pgops leftovers`; "
        "one that does not allow connections is a failed unit, exit 8) or a comma-separated list.",
        "app,billing",
    ),
    Spec("EXCLUDE_DATABASES", _list, "", "Databases to skip when DATABASES=all.", "scratch,tmp_import"),
    Spec(
        "GLOBALS",
        _bool,
        "true",
        "Also store pg_dumpall --globals-only (roles, tablespaces) once per run.",
        "true",
    ),
    Spec(
        "BACKUP_FROM",
        _choice("any", "primary"),
        "any",
        "Which server runs the target's jobs: `pgops backup`, `pgops retention` and `pgops verify` (with "
        "`--restore-test` too). any: the one PG_CONNINFO reaches, a standby too. primary: on a server in recovery "
        "(a standby, a Patroni replica) each logs `event=<command>_skipped reason=in_recovery` (`backup_skipped`, "
        "`retention_skipped`, `verify_skipped`) and exits 0, with no lock, no store access and no heartbeat "
        "ping; a skipped backup sets `pgops_backup_skipped_replica` to 1. For the same schedule on every member "
        "of a Patroni cluster (with one TARGET for all): only the leader backs up, prunes and verifies (a "
        "replica's read-only server could not restore-test), and after a failover the new leader's runs take "
        "over.",
        "primary",
    ),
    # --- how to connect -------------------------------------------------------------------------
    Spec(
        "PG_CONNINFO",
        _str,
        "",
        "libpq connection string for the server (no password here). Empty: the "
        "standard PG* variables, else the local socket as user postgres.",
        "host=/var/run/postgresql port=5432",
    ),
    Spec(
        "PG_PASSWORD",
        _secret,
        "",
        "Password, passed to libpq and children through the environment only; ~/.pgpass works too.",
        "(from Vault)",
        secret=True,
    ),
    Spec(
        "PG_BINDIR",
        _str,
        "",
        "Directory holding pg_dump, pg_dumpall and pg_restore. Empty: the "
        "/usr/lib/postgresql/<major>/bin that matches the server, else the newest installed.",
        "/usr/lib/postgresql/17/bin",
    ),
    # --- compression ----------------------------------------------------------------------------
    Spec("COMPRESSION", _choice("zstd", "gzip", "none"), "zstd", "Compression of the stored dump.", "zstd"),
    Spec(
        "COMPRESSION_LEVEL",
        _optional(_compression_level),
        "",
        f"Level: {_LEVELS_TEXT}. Empty: the default.",
        "3",
    ),
    Spec("COMPRESSION_THREADS", _int_range(0, 256), "0", "zstd worker threads; 0 = one per CPU.", "2"),
    # --- S3 -------------------------------------------------------------------------------------
    Spec(
        "S3_ENDPOINT_URL",
        _str,
        "",
        "Custom endpoint for S3-compatible stores. Without a scheme, https:// is assumed.",
        "https://minio.internal:9000",
    ),
    Spec("S3_REGION", _str, "", "Region. Empty: the SDK default chain, else us-east-1.", "eu-central-1"),
    Spec(
        "S3_ACCESS_KEY_ID",
        _str,
        "",
        "Access key id. Empty: the SDK default chain (instance profile, AWS_* variables, ~/.aws).",
        "AKIA...",
    ),
    Spec("S3_SECRET_ACCESS_KEY", _secret, "", "Secret access key.", "(from Vault)", secret=True),
    Spec(
        "S3_SESSION_TOKEN",
        _secret,
        "",
        "Session token for temporary credentials.",
        "(from Vault)",
        secret=True,
    ),
    Spec(
        "S3_VERIFY_TLS",
        _bool,
        "true",
        "Check the endpoint's TLS certificate. false: not checked, and each run logs one warning saying so.",
        "true",
    ),
    Spec(
        "S3_CA_BUNDLE",
        _readable_file,
        "",
        "CA bundle file (PEM) for a private endpoint's certificate; it must exist.",
        "/etc/ssl/certs/internal-ca.pem",
    ),
    Spec("S3_ADDRESSING_STYLE", _choice("auto", "path", "virtual"), "auto", "Bucket addressing.", "path"),
    Spec(
        "S3_STORAGE_CLASS",
        _str,
        "",
        "Storage class of new objects. Empty: the bucket default.",
        "STANDARD_IA",
    ),
    Spec("S3_SSE", _choice("none", "aes256", "aws:kms"), "none", "Server-side encryption.", "aws:kms"),
    Spec(
        "S3_SSE_KMS_KEY_ID",
        _str,
        "",
        "KMS key for S3_SSE=aws:kms. Empty: the AWS-managed key.",
        "arn:aws:kms:eu-central-1:111122223333:key/1234abcd-...",
    ),
    Spec(
        "S3_PART_SIZE",
        _size(5 * 1024**2, 5 * 1024**3),
        "8MiB",
        "First multipart part size. It doubles "
        "every 1000 parts, so an unknown-size stream never reaches the 10,000-part limit.",
        "8MiB",
    ),
    Spec(
        "S3_MAX_ATTEMPTS",
        _int_range(1, 20),
        "5",
        "How often each S3 request or part is sent at most, the first try included (1 = no retry); "
        "retries back off exponentially.",
        "5",
    ),
    Spec(
        "S3_REQUEST_CHECKSUM",
        _choice("when_required", "when_supported"),
        "when_required",
        "boto3 request_checksum_calculation; when_required keeps S3-compatible stores working.",
        "when_required",
    ),
    Spec(
        "S3_CONDITIONAL_WRITES",
        _bool,
        "true",
        "Send If-None-Match: * so the store itself refuses "
        "overwrites. Turn off only for stores that reject the header (a HEAD check still runs).",
        "true",
    ),
    # --- GCS ------------------------------------------------------------------------------------
    Spec(
        "GCS_CREDENTIALS_FILE",
        _str,
        "",
        "Service-account JSON key file. Empty: Application Default Credentials (GOOGLE_APPLICATION_CREDENTIALS, "
        "gcloud, or the metadata server / workload identity).",
        "/etc/pgops/gcs-backup-sa.json",
    ),
    Spec("GCS_PROJECT", _str, "", "Project for the client. Empty: taken from the credentials.", "acme-prod"),
    Spec(
        "GCS_ENDPOINT_URL",
        _str,
        "",
        "Custom endpoint (an emulator). Empty: storage.googleapis.com, or STORAGE_EMULATOR_HOST if set.",
        "http://127.0.0.1:4443",
    ),
    Spec(
        "GCS_KMS_KEY_NAME",
        _str,
        "",
        "Cloud KMS key for CMEK on new objects. Empty: the bucket default.",
        "projects/acme-prod/locations/europe-west3/keyRings/backups/cryptoKeys/pgops",
    ),
    Spec("GCS_STORAGE_CLASS", _str, "", "Storage class of new objects. Empty: the bucket default.", "NEARLINE"),
    Spec(
        "GCS_CHUNK_SIZE",
        _size(256 * 1024, 1024**3),
        "16MiB",
        "Resumable upload chunk size (a multiple of 256 KiB); memory holds about one chunk.",
        "16MiB",
    ),
    Spec("GCS_MAX_ATTEMPTS", _int_range(1, 20), "5", "Attempts per request/chunk, with exponential backoff.", "5"),
    # --- client-side encryption (age) -----------------------------------------------------------
    Spec(
        "AGE_RECIPIENTS",
        _list,
        "",
        "Encrypt backups to these age public keys (comma-separated). Hosts need only public keys.",
        "age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p",
    ),
    Spec(
        "AGE_RECIPIENTS_FILE",
        _str,
        "",
        "File with one age public key per line (# comments allowed), added to AGE_RECIPIENTS.",
        "/etc/pgops/age-recipients.txt",
    ),
    Spec(
        "AGE_IDENTITY_FILE",
        _str,
        "",
        "age identity (private key) file, needed only to restore or verify encrypted backups. Without it, "
        "`pgops verify` checks encrypted backups by sha256 only, and `pgops verify --restore-test` of one "
        "fails (exit 2).",
        "/root/pgops-restore.key",
    ),
    # --- retention --------------------------------------------------------------------------------
    Spec("KEEP_LAST", _int_range(0), "0", "Keep the newest N good backups per database (0 = rule off).", "7"),
    Spec("KEEP_DAILY", _int_range(0), "7", "Keep the newest good backup of each of the last N days.", "7"),
    Spec("KEEP_WEEKLY", _int_range(0), "4", "Keep the newest good backup of each of the last N ISO weeks.", "4"),
    Spec("KEEP_MONTHLY", _int_range(0), "6", "Keep the newest good backup of each of the last N months.", "12"),
    Spec("KEEP_YEARLY", _int_range(0), "0", "Keep the newest good backup of each of the last N years.", "3"),
    Spec(
        "MAX_AGE",
        _duration,
        "0",
        "Delete good backups older than this, unless MIN_KEEP, the newest good or newest verified backup, or the "
        "globals a kept backup needs keep them (0 = off). See docs/retention.md.",
        "400d",
    ),
    Spec(
        "MIN_KEEP",
        _int_range(1),
        "1",
        "Always keep at least this many good backups per database, whatever the other rules say.",
        "3",
    ),
    Spec(
        "KEEP_SAFETY",
        _duration,
        "14d",
        "How long the safety copy that restore --replace takes is kept. Safety copies count for no other "
        "keep rule and are never 'latest'.",
        "30d",
    ),
    Spec(
        "RETENTION_TIMEZONE",
        _timezone,
        "UTC",
        "Time zone in which days, weeks, months and years are counted for the keep rules.",
        "Europe/Berlin",
    ),
    Spec(
        "GRACE_PERIOD",
        _duration,
        "36h",
        "Failed or incomplete backups and objects without a manifest are removed once older than this; "
        "a run in progress is never that old.",
        "36h",
    ),
    # --- observability ----------------------------------------------------------------------------
    Spec(
        "METRICS_DIR",
        _str,
        "",
        "Directory of node_exporter's textfile collector; pgops writes pgops.prom there atomically. Empty: off.",
        "/var/lib/prometheus/node-exporter",
    ),
    Spec(
        "HEARTBEAT_URL",
        _secret,
        "",
        "healthchecks.io-style URL: pinged at start (/start), on success, and on failure (/<exit code>). "
        "A failed ping never fails the run.",
        "https://hc-ping.com/your-check-uuid",
        secret=True,
    ),
    Spec(
        "STATUS_MAX_AGE",
        _duration,
        "26h",
        "pgops status exits 11 (stale) when a database's newest good backup is older than this.",
        "26h",
    ),
    # --- physical backups and WAL archiving (pgBackRest) ---------------------------------------------
    Spec(
        "PGBACKREST_STANZA",
        _stanza,
        "",
        "pgBackRest stanza of this server. Empty: no physical layer. Set: `status`, `list` and the metrics show "
        "its backups and WAL archiving (the current RPO), and `physical-backup` / `physical-restore` drive it. "
        "Letters, digits, '.', '_', '-', at most 63, the first a letter or digit.",
        "main",
    ),
    Spec(
        "PGBACKREST_CONFIG",
        _str,
        "/etc/pgbackrest/pgbackrest.conf",
        "pgBackRest's configuration file, passed to every pgbackrest command as --config=.",
        "/etc/pgbackrest/pgbackrest.conf",
    ),
    Spec(
        "RPO_MAX_SECONDS",
        _int_range(0),
        "300",
        "pgops status exits 11 (stale) when the current RPO (seconds of WAL not yet archived) exceeds this "
        "(0 = check off). Only with PGBACKREST_STANZA, and only on a primary.",
        "300",
    ),
    Spec(
        "PHYSICAL_MAX_AGE",
        _duration,
        "36h",
        "pgops status exits 11 (stale) when the newest physical backup of any type (full, diff, incr) is "
        "older than this (0 = check off). Only with PGBACKREST_STANZA.",
        "36h",
    ),
    Spec(
        "PHYSICAL_FULL_MAX_AGE",
        _duration,
        "8d",
        "pgops status exits 11 (stale) when the newest full physical backup is older than this (0 = check off). "
        "Only with PGBACKREST_STANZA.",
        "8d",
    ),
    # --- running --------------------------------------------------------------------------------
    Spec("LOCK_DIR", _str, "/run/lock", "Directory for the per-target lock file.", "/run/lock"),
    Spec(
        "SPOOL_DIR",
        _str,
        "",
        "Directory for the seekable local copy that restore --jobs N needs: room for the plain dump. pgops writes "
        "the data offsets into the copy's table of contents, so the workers seek to each table's data.",
        "/var/tmp/pgops",  # noqa: S108 - an example in the docs, not a path we create
    ),
    Spec("LOG_FORMAT", _choice("logfmt", "json"), "logfmt", "Log line format on stderr.", "json"),
    Spec("LOG_LEVEL", _choice("debug", "info", "warning", "error"), "info", "Log level.", "info"),
)

SPEC_BY_KEY = {s.key: s for s in SPECS}
SECRET_ENV_KEYS = frozenset(s.env for s in SPECS if s.secret)


@dataclasses.dataclass(frozen=True)
class Settings:
    storage_url: str | None
    target: str
    databases: tuple[str, ...]
    exclude_databases: tuple[str, ...]
    globals: bool
    backup_from: str
    pg_conninfo: str
    pg_password: Secret
    pg_bindir: str
    compression: str
    compression_level: int | None
    compression_threads: int
    s3_endpoint_url: str
    s3_region: str
    s3_access_key_id: str
    s3_secret_access_key: Secret
    s3_session_token: Secret
    s3_verify_tls: bool
    s3_ca_bundle: str
    s3_addressing_style: str
    s3_storage_class: str
    s3_sse: str
    s3_sse_kms_key_id: str
    s3_part_size: int
    s3_max_attempts: int
    s3_request_checksum: str
    s3_conditional_writes: bool
    gcs_credentials_file: str
    gcs_project: str
    gcs_endpoint_url: str
    gcs_kms_key_name: str
    gcs_storage_class: str
    gcs_chunk_size: int
    gcs_max_attempts: int
    age_recipients: tuple[str, ...]
    age_recipients_file: str
    age_identity_file: str
    keep_last: int
    keep_daily: int
    keep_weekly: int
    keep_monthly: int
    keep_yearly: int
    max_age: int
    min_keep: int
    keep_safety: int
    retention_timezone: str
    grace_period: int
    metrics_dir: str
    heartbeat_url: Secret
    status_max_age: int
    pgbackrest_stanza: str
    pgbackrest_config: str
    rpo_max_seconds: int
    physical_max_age: int
    physical_full_max_age: int
    lock_dir: str
    spool_dir: str
    log_format: str
    log_level: str

    def require_storage(self) -> str:
        if not self.storage_url:
            raise ConfigError(
                "PGOPS_STORAGE_URL is not set; valid forms: s3://bucket/prefix, gs://bucket/prefix, "
                "file:///absolute/path (env file, environment, or --storage-url)"
            )
        return self.storage_url

    @property
    def effective_compression_level(self) -> int:
        if self.compression_level is not None:
            return self.compression_level
        return COMPRESSION_LEVELS[self.compression][2]

    def redacted(self) -> dict[str, Any]:
        """A dict safe to log: secrets appear only as whether they are set."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            out[f.name] = ("set" if v else "unset") if isinstance(v, Secret) else v
        return out


def _suggest(key: str) -> str:
    close = difflib.get_close_matches(key, [s.env for s in SPECS], n=1)
    return f" (did you mean {close[0]}?)" if close else ""


def load_env_file(path: str | os.PathLike[str] | None, *, required: bool) -> dict[str, str]:
    """Read the env file strictly (envfile.py). A missing default file is fine; a missing explicit one is an error."""
    from pgops.envfile import read_env_file

    return read_env_file(Path(path or DEFAULT_ENV_FILE), required=required, secret_keys=SECRET_ENV_KEYS)


def build_settings(
    env_file: Mapping[str, str] | None = None,
    environ: Mapping[str, str] | None = None,
    flags: Mapping[str, str] | None = None,
) -> Settings:
    """Merge the three sources (later wins), reject unknown PGOPS_* keys, parse and validate every value."""
    merged: dict[str, tuple[str, str]] = {}  # key -> (raw value, where it came from)
    for origin, source in (
        ("env file", env_file or {}),
        ("environment", environ or {}),
        ("flag", flags or {}),
    ):
        for name, raw in source.items():
            if not name.startswith(PREFIX) or name == "PGOPS_ENV_FILE":
                if origin == "env file" and name != "PGOPS_ENV_FILE":
                    raise ConfigError(f"{name} in the env file is not a pgops setting; keys start with {PREFIX}")
                continue
            key = name[len(PREFIX) :]
            if key not in SPEC_BY_KEY:
                raise ConfigError(f"unknown setting {name} (from {origin}){_suggest(name)}")
            merged[key] = (raw, origin)

    values: dict[str, Any] = {}
    for spec in SPECS:
        value = merged[spec.key][0] if spec.key in merged else spec.default
        values[spec.attr] = None if value is None else spec.parse(value, spec.env)
    settings = Settings(**values)
    _cross_check(settings)
    return settings


def _cross_check(s: Settings) -> None:
    lvl = s.compression_level
    if lvl is not None:
        lo, hi, default = COMPRESSION_LEVELS[s.compression]
        if not lo <= lvl <= hi:
            valid = f"{lo} to {hi} (empty: the default, {default})" if hi else "empty (no compression, no level)"
            raise ConfigError(
                f"PGOPS_COMPRESSION_LEVEL={lvl} is not valid for PGOPS_COMPRESSION={s.compression}; "
                f"valid values: {valid}"
            )
    if s.s3_sse_kms_key_id and s.s3_sse != "aws:kms":
        raise ConfigError("PGOPS_S3_SSE_KMS_KEY_ID is set but PGOPS_S3_SSE is not aws:kms; set PGOPS_S3_SSE=aws:kms")
    if s.s3_secret_access_key and not s.s3_access_key_id:
        raise ConfigError("PGOPS_S3_SECRET_ACCESS_KEY is set without PGOPS_S3_ACCESS_KEY_ID; set both or neither")
    if "password" in s.pg_conninfo.lower():
        raise ConfigError("PGOPS_PG_CONNINFO must not contain a password; use PGOPS_PG_PASSWORD or ~/.pgpass")
    if s.gcs_chunk_size % (256 * 1024):
        raise ConfigError(
            f"PGOPS_GCS_CHUNK_SIZE={s.gcs_chunk_size} is not a multiple of 256 KiB; valid: e.g. 8MiB, 16MiB"
        )
    overlap = set(s.databases) & set(s.exclude_databases)
    if overlap:
        raise ConfigError(f"PGOPS_EXCLUDE_DATABASES and PGOPS_DATABASES both name {sorted(overlap)}")


def load_settings(flags: Mapping[str, str] | None = None, env_file: str | None = None) -> Settings:
    """The one entry point the CLI uses: env file, then os.environ, then flags."""
    environ = dict(os.environ)
    path = env_file or environ.get("PGOPS_ENV_FILE")
    file_values = load_env_file(path, required=path is not None)
    return build_settings(file_values, environ, flags)
