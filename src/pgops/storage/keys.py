"""Object key rules shared by every backend.

A key is relative to the storage prefix and uses "/" separators. It must not be empty, absolute, or
contain empty, "." or ".." components, control characters, or a component reserved for our own
temporary files (a name starting with "." that contains "pgops-tmp"). The same rules apply to every
backend so that a key valid on S3 is also valid in a local directory, and the other way round.
"""

from __future__ import annotations

from pgops.errors import StorageError

TEMP_MARKER = "pgops-tmp"


def is_temp_name(name: str) -> bool:
    """True for the names of our temporary files (skipped by list())."""
    return name.startswith(".") and TEMP_MARKER in name


def validate_key(key: str) -> str:
    """Return `key` unchanged if it is a valid object key, else raise StorageError naming the problem."""
    if not key:
        raise StorageError("invalid object key '': a key must not be empty")
    if key.startswith("/"):
        raise StorageError(f"invalid object key {key!r}: a key is relative and must not start with '/'")
    if any(ord(c) < 0x20 or c == "\x7f" for c in key):
        raise StorageError(f"invalid object key {key!r}: control characters are not allowed")
    for part in key.split("/"):
        if part in ("", ".", ".."):
            raise StorageError(f"invalid object key {key!r}: empty, '.' and '..' components are not allowed")
        if is_temp_name(part):
            raise StorageError(
                f"invalid object key {key!r}: names starting with '.' and containing {TEMP_MARKER!r} "
                "are reserved for temporary files"
            )
    return key


def validate_prefix(prefix: str) -> str:
    """A list() prefix: may be empty or end in a partial name, but must not escape the storage root."""
    if prefix.startswith("/") or ".." in prefix.split("/"):
        raise StorageError(f"invalid list prefix {prefix!r}: it must be relative and must not contain '..'")
    return prefix
