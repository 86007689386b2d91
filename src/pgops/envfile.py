"""Reading the env file (/etc/pgops/pgops.env, --env-file, PGOPS_ENV_FILE) strictly.

Each problem is one ConfigError (exit 2) naming the file and, where it applies, the line. Error text
never quotes a line's content, since a malformed line may hold a secret.

- not a regular file (a directory, a device): refused;
- not UTF-8 text, or holding NUL bytes (binary content): refused, naming the first bad line;
- a line that is neither KEY=VALUE, a comment nor blank (python-dotenv's syntax: `export`, quotes and
  `#` comments are accepted): refused, naming the line;
- a secret (a setting marked secret in settings.SPECS, with a value) in a file that group or others
  may access (any of the mode bits 0077): refused, as ssh refuses a private key and libpq a ~/.pgpass
  that others can read. The postgresql_backup role writes the file 0600; a file without secrets may
  be readable by others.
"""

from __future__ import annotations

import io
import stat
from collections.abc import Collection
from pathlib import Path

from pgops.errors import ConfigError

SECRET_MODE_BITS = 0o077


def read_env_file(path: Path, *, required: bool, secret_keys: Collection[str]) -> dict[str, str]:
    """KEY -> raw value. A missing file is {} unless `required`."""
    try:
        st = path.stat()
    except FileNotFoundError:
        if required:
            raise ConfigError(f"env file {path} does not exist (--env-file / PGOPS_ENV_FILE)") from None
        return {}
    except OSError as e:
        raise ConfigError(f"env file {path} cannot be read: {e.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        kind = "a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file"
        raise ConfigError(f"env file {path} is {kind}; valid: a file of PGOPS_KEY=value lines")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"env file {path} cannot be read: {e.strerror}") from None
    values = parse_env_bytes(data, path)
    secrets = sorted(k for k, v in values.items() if k in secret_keys and v)
    mode = stat.S_IMODE(st.st_mode)
    if secrets and mode & SECRET_MODE_BITS:
        raise ConfigError(
            f"env file {path} holds a secret ({', '.join(secrets)}) but group or others may access it "
            f"(mode {mode:04o}); valid: mode 0600 or stricter, owned by the user that runs pgops (chmod 600 {path})"
        )
    return values


def parse_env_bytes(data: bytes, path: Path) -> dict[str, str]:
    """Parse dotenv text; ConfigError naming `path` and the line for anything that is not KEY=VALUE."""
    from dotenv.parser import parse_stream

    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise ConfigError(
            f"env file {path} line {line} is not UTF-8 text (binary content?); valid: KEY=VALUE lines"
        ) from None
    if "\0" in text:
        line = text[: text.index("\0")].count("\n") + 1
        raise ConfigError(f"env file {path} line {line} holds a NUL byte (binary content?); valid: KEY=VALUE lines")
    values: dict[str, str] = {}
    for binding in parse_stream(io.StringIO(text)):
        if binding.error or (binding.key is not None and binding.value is None):
            raw = binding.original.string  # starts with the blank lines before it; the line is where text starts
            line = binding.original.line + raw[: len(raw) - len(raw.lstrip())].count("\n")
            raise ConfigError(
                f"env file {path} line {line} is not KEY=VALUE, a # comment or blank; valid: PGOPS_KEY=value"
            )
        if binding.key is not None and binding.value is not None:
            values[binding.key] = binding.value
    return values
