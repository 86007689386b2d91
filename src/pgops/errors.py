"""One exception hierarchy. The CLI maps each class to one exit code, in one place (cli.py)."""

from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
    """Process exit statuses of the `pgops` command. Documented in --help and docs/configuration.md."""

    OK = 0
    FAILURE = 1  # an unexpected internal error (a bug): the traceback is logged
    CONFIG = 2  # bad settings or arguments; nothing was done
    STORAGE = 3  # the object store failed or refused (credentials, bucket, endpoint, existing key)
    INTEGRITY = 4  # a checksum, size or manifest did not match
    POSTGRES = 5  # pg_dump / pg_restore / the server failed
    REFUSED = 6  # the operation would change something without the explicit flag it needs
    LOCK_HELD = 7  # another pgops run holds the lock for this target; nothing was done
    PARTIAL = 8  # some databases succeeded and some failed; see the log lines with result=failed
    NOT_FOUND = 9  # no backup matched the requested target (id, time, database)
    LOCKED_OBJECTS = 10  # retention could not delete objects held by Object Lock / a retention policy
    STALE = 11  # status: the newest good backup is older than the threshold
    INTERRUPTED = 130  # SIGINT (128 + 2); SIGTERM exits 143 (128 + 15)
    BROKEN_PIPE = 141  # 128 + SIGPIPE: the reader of stdout went away (`pgops list | head`)
    TERMINATED = 143


class PgOpsError(Exception):
    """Root of every error the library raises on purpose."""

    exit_code: ExitCode = ExitCode.FAILURE


class ConfigError(PgOpsError):
    """A setting or argument is unknown or invalid. Raised before any work starts."""

    exit_code = ExitCode.CONFIG


class ClusterMismatch(ConfigError):
    """The target belongs to another PostgreSQL cluster (system identifier); nothing was written."""


class MissingIdentity(ConfigError):
    """A restore test of encrypted backups without PGOPS_AGE_IDENTITY_FILE: it cannot restore, so it fails."""

    def __init__(self, message: str, databases: list[str | None]) -> None:
        super().__init__(message)
        self.databases = databases


class ClockBehind(ConfigError):
    """This host's clock is behind the newest good backup of the target; nothing was written."""


class StorageError(PgOpsError):
    """The object store failed, refused a request, or is unreachable."""

    exit_code = ExitCode.STORAGE


class ObjectExists(StorageError):
    """A write would overwrite an existing object; backups never overwrite."""


class ObjectNotFound(StorageError):
    """The requested object does not exist."""


class ObjectLocked(StorageError):
    """The object is protected (S3 Object Lock, GCS retention policy or hold) and cannot be deleted."""

    exit_code = ExitCode.LOCKED_OBJECTS


class IntegrityError(PgOpsError):
    """Stored bytes do not match the manifest, or a manifest is unreadable."""

    exit_code = ExitCode.INTEGRITY


class PostgresError(PgOpsError):
    """pg_dump, pg_restore, psql or the server itself failed."""

    exit_code = ExitCode.POSTGRES


class PgbackrestError(PgOpsError):
    """pgBackRest failed, or said something pgops cannot read (a missing stanza, an error status)."""

    exit_code = ExitCode.POSTGRES


class RestoreRefused(PgOpsError):
    """The restore would touch an existing database without --replace (or similar safety refusal)."""

    exit_code = ExitCode.REFUSED


class LockHeld(PgOpsError):
    """Another pgops run holds the lock for this target."""

    exit_code = ExitCode.LOCK_HELD


class BackupNotFound(PgOpsError):
    """No complete backup matched the selection."""

    exit_code = ExitCode.NOT_FOUND


class PartialFailure(PgOpsError):
    """Some units of work failed while others succeeded."""

    exit_code = ExitCode.PARTIAL


class Interrupted(PgOpsError):
    """A signal asked us to stop. Uploads are aborted and children reaped before this propagates."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"interrupted by signal {signum}")
        self.signum = signum
        self.exit_code = ExitCode.TERMINATED if signum == 15 else ExitCode.INTERRUPTED
