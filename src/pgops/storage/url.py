"""PGOPS_STORAGE_URL, parsed here and nowhere else.

Settings validate the URL with `parse_storage_url` when they are built (so `pgops check --settings-only`
and every command refuse a bad URL with exit 2 before any work starts), and `open_storage` hands the
parsed `StorageLocation` to the backend, which never parses the text again.

Rules, one error each (ConfigError naming the setting and the valid form):
- the scheme is s3, gs or file;
- s3 and gs name a bucket by the provider's rules (the postgresql_backup role checks the same), with no
  credentials and no port;
- the prefix (s3, gs) or directory (file, which must be absolute) has no empty, '.' or '..' part and
  no control character, since keys are built under it (storage/keys.py holds keys to the same rules);
- no '?' or '#': a URL parser would cut them off silently.
"""

from __future__ import annotations

import dataclasses
import re
from urllib.parse import unquote, urlsplit

from pgops.errors import ConfigError

SETTING = "PGOPS_STORAGE_URL"
VALID_FORMS = "s3://bucket/prefix, gs://bucket/prefix, file:///absolute/path"

# The providers' bucket name rules (lower case; S3 3-63 characters, GCS up to 222 with dots).
_BUCKET_RE = {
    "s3": re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$"),
    "gs": re.compile(r"^[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]$"),
}
_ENDS = "starting and ending with a letter or digit"
_BUCKET_RULE = {
    "s3": f"3-63 characters of lower-case letters, digits, '.' and '-', {_ENDS}",
    "gs": f"3-222 characters of lower-case letters, digits, '.', '_' and '-', {_ENDS}",
}


@dataclasses.dataclass(frozen=True)
class StorageLocation:
    scheme: str  # "s3" | "gs" | "file"
    bucket: str  # s3, gs: the bucket; file: ""
    prefix: str  # s3, gs: "" or "some/prefix/" (always ending in "/"); file: ""
    path: str  # file: the absolute directory; s3, gs: ""

    @property
    def url(self) -> str:
        """The canonical URL (for messages): no trailing slash, no credentials."""
        if self.scheme == "file":
            return "file://" + self.path
        return (
            f"{self.scheme}://{self.bucket}/{self.prefix.rstrip('/')}"
            if self.prefix
            else f"{self.scheme}://{self.bucket}"
        )


def parse_storage_url(raw: str, setting: str = SETTING) -> StorageLocation:
    """Parse and check a storage URL; ConfigError (exit 2) naming `setting` for anything invalid."""
    v = raw.strip()
    scheme = v.split("://", 1)[0].lower() if "://" in v else ""
    if scheme not in ("s3", "gs", "file"):
        raise ConfigError(f"{setting}={v!r} is not a storage URL; valid forms: {VALID_FORMS}")
    if "?" in v or "#" in v:
        raise ConfigError(f"{setting}={v!r} must not contain '?' or '#'; valid forms: {VALID_FORMS}")
    parts = urlsplit(v)
    if "@" in parts.netloc:
        raise ConfigError(f"{setting}: credentials do not belong in the URL; use the credential settings instead")
    if scheme == "file":
        path = unquote(parts.path)
        if parts.netloc not in ("", "localhost") or not path.startswith("/"):
            raise ConfigError(
                f"{setting}={v!r}: a file URL needs an absolute path and no host, like file:///var/backups/pgops"
            )
        _check_parts(v, path.strip("/"), "directory", setting)
        return StorageLocation("file", "", "", "/" + path.strip("/"))
    bucket = parts.netloc
    if not bucket:
        raise ConfigError(f"{setting}={v!r}: the URL names no bucket; valid form: {scheme}://bucket/prefix")
    if not _BUCKET_RE[scheme].match(bucket):
        raise ConfigError(f"{setting}={v!r}: {bucket!r} is not a valid bucket name; valid: {_BUCKET_RULE[scheme]}")
    prefix = parts.path.strip("/")
    _check_parts(v, prefix, "prefix", setting)
    return StorageLocation(scheme, bucket, prefix + "/" if prefix else "", "")


def _check_parts(url: str, inner: str, what: str, setting: str) -> None:
    if not inner:
        return
    if any(p in ("", ".", "..") for p in inner.split("/")):
        raise ConfigError(f"{setting}={url!r}: the {what} must not contain empty, '.' or '..' parts")
    if any(ord(c) < 0x20 or c == "\x7f" for c in inner):
        raise ConfigError(f"{setting}={url!r}: the {what} must not contain control characters")
