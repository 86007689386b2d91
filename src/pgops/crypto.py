"""Client-side encryption with age (pyrage), streamed: hosts hold only public keys.

The stored objects are standard age files (`age -d -i key.txt` decrypts them). pyrage drives the loop
(`encrypt_io` pulls from a reader and pushes to a writer); it turns any exception raised by our reader or
writer into its own error type with only a message, so the wrappers here keep the original exception
(a signal, a storage error) and re-raise it unchanged.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from pgops.errors import ConfigError, IntegrityError
from pgops.settings import Settings


class Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


@dataclasses.dataclass(frozen=True)
class Recipients:
    keys: tuple[str, ...]  # age1... public keys, as given

    def parsed(self) -> list[Any]:
        import pyrage

        out = []
        for k in self.keys:
            try:
                out.append(pyrage.x25519.Recipient.from_str(k))
            except pyrage.RecipientError:
                raise ConfigError(
                    f"PGOPS_AGE_RECIPIENTS: {k[:16]!r}... is not an age X25519 public key; valid: age1... "
                    "(from age-keygen)"
                ) from None
        return out


def recipients_from_settings(settings: Settings) -> Recipients | None:
    keys = list(settings.age_recipients)
    if settings.age_recipients_file:
        path = Path(settings.age_recipients_file)
        try:
            lines = path.read_text().splitlines()
        except OSError as e:
            raise ConfigError(f"PGOPS_AGE_RECIPIENTS_FILE={str(path)!r} cannot be read: {e.strerror}") from None
        keys += [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not keys:
        return None
    r = Recipients(tuple(dict.fromkeys(keys)))
    r.parsed()  # validate now, before any work starts
    return r


def load_identities(settings: Settings, backup_id: str) -> list[Any]:
    """The private keys needed to read an encrypted backup. A clear ConfigError if there are none."""
    import pyrage

    if not settings.age_identity_file:
        raise ConfigError(
            f"backup {backup_id} is encrypted with age; set PGOPS_AGE_IDENTITY_FILE (or --identity-file) "
            "to the private key file"
        )
    path = Path(settings.age_identity_file)
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"PGOPS_AGE_IDENTITY_FILE={str(path)!r} cannot be read: {e.strerror}") from None
    identities = []
    for line in text.splitlines():
        key = line.strip()
        if key.startswith("AGE-SECRET-KEY-"):
            try:
                identities.append(pyrage.x25519.Identity.from_str(key))
            except pyrage.IdentityError:
                raise ConfigError(f"PGOPS_AGE_IDENTITY_FILE={str(path)!r} holds a malformed age key") from None
    if not identities:
        raise ConfigError(f"PGOPS_AGE_IDENTITY_FILE={str(path)!r} holds no AGE-SECRET-KEY-1... line")
    return identities


class _Guard:
    """Remembers the first exception raised inside a callback, so it survives pyrage's wrapping."""

    def __init__(self) -> None:
        self.error: BaseException | None = None

    def call(self, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except BaseException as e:
            if self.error is None:
                self.error = e
            raise

    def reraise(self) -> None:
        if self.error is not None:
            raise self.error


class _Reader:
    def __init__(self, source: Readable, guard: _Guard) -> None:
        self.source, self.guard = source, guard

    def read(self, size: int = -1) -> bytes:
        return bytes(self.guard.call(lambda: self.source.read(size)))


class _Writer:
    def __init__(self, sink: Callable[[bytes], object], guard: _Guard) -> None:
        self.sink, self.guard = sink, guard

    def write(self, data: bytes) -> int:
        self.guard.call(lambda: self.sink(bytes(data)))
        return len(data)

    def flush(self) -> None:
        return None


def encrypt_stream(source: Readable, sink: Callable[[bytes], object], recipients: Recipients) -> None:
    import pyrage

    guard = _Guard()
    try:
        pyrage.encrypt_io(_Reader(source, guard), _Writer(sink, guard), recipients.parsed())
    except (pyrage.EncryptError, OSError) as e:
        guard.reraise()
        raise IntegrityError(f"age encryption failed: {e}") from None
    guard.reraise()


def decrypt_stream(
    source: Readable, sink: Callable[[bytes], object], identities: list[Any], *, what: str, recipients: list[str]
) -> None:
    import pyrage

    guard = _Guard()
    try:
        pyrage.decrypt_io(_Reader(source, guard), _Writer(sink, guard), identities)
    except pyrage.DecryptError as e:
        guard.reraise()
        if "no matching keys" in str(e).lower():
            shown = ", ".join(r[:16] + "…" for r in recipients) or "unknown recipients"
            raise ConfigError(
                f"PGOPS_AGE_IDENTITY_FILE: none of its keys can decrypt {what} (encrypted to {shown})"
            ) from None
        raise IntegrityError(f"{what}: age decryption failed: {e}") from None
    except OSError as e:
        guard.reraise()
        raise IntegrityError(f"{what}: age decryption failed (corrupt or truncated): {e}") from None
    guard.reraise()
