"""A local directory as an object store (file:///absolute/path).

Writes are atomic and create-only: bytes go to a temporary file in the destination directory (its
name starts with "." and contains "pgops-tmp", so list() never shows it), which is fsynced and then
hard-linked to the final name with os.link(). Unlike rename(), link() fails if the name exists, so two
writers can never overwrite each other. The temporary name is then unlinked and the directory fsynced.

Files are created 0600 and directories 0700 (before the umask): dumps contain the whole database.
`WriteOptions.content_type` is ignored (a file has no content type).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

from pgops.errors import ConfigError, ObjectExists, ObjectNotFound, StorageError
from pgops.storage.base import ObjectInfo, WriteOptions, read_all, write_all
from pgops.storage.keys import TEMP_MARKER, is_temp_name, validate_key, validate_prefix
from pgops.storage.url import StorageLocation, parse_storage_url

_DIR_MODE = 0o700


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _info(key: str, st: os.stat_result) -> ObjectInfo:
    return ObjectInfo(key=key, size=st.st_size, modified=dt.datetime.fromtimestamp(st.st_mtime, dt.UTC))


class LocalReader:
    def __init__(self, path: Path, key: str) -> None:
        self._key = key
        try:
            self._f = path.open("rb")
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise ObjectNotFound(f"object {key!r} does not exist") from None
        except OSError as e:
            raise StorageError(f"cannot open {key!r}: {e.strerror}") from e

    def read(self, size: int = -1, /) -> bytes:
        try:
            return self._f.read(size)
        except OSError as e:
            raise StorageError(f"cannot read {self._key!r}: {e.strerror}") from e

    def close(self) -> None:
        self._f.close()


class LocalWriter:
    """Streams into a temporary file next to the final name; commit() links it into place."""

    def __init__(self, storage: LocalStorage, key: str) -> None:
        self.key = key
        self._storage = storage
        self._final = storage.path_for(key)
        if self._final.exists():
            raise ObjectExists(f"object {key!r} already exists in {storage.url}; backups never overwrite")
        self._size = 0
        self._done = False
        self._tmp, self._fd = self._create_temp()

    def _create_temp(self) -> tuple[Path, int]:
        # A concurrent delete() may prune the directory between mkdir and open: try again then.
        for _ in range(5):
            self._storage.makedirs(self._final.parent)
            tmp = self._final.parent / f".{self._final.name}.{TEMP_MARKER}-{secrets.token_hex(6)}"
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            except FileNotFoundError:
                continue
            except OSError as e:
                raise StorageError(f"cannot create a temporary file for {self.key!r}: {e.strerror}") from e
            return tmp, fd
        raise StorageError(f"cannot create a temporary file for {self.key!r}: its directory keeps vanishing")

    def write(self, data: bytes, /) -> None:
        if self._done:
            raise StorageError(f"writer for {self.key!r} is already committed or aborted")
        view = memoryview(data)
        try:
            while view:
                n = os.write(self._fd, view)
                view = view[n:]
                self._size += n
        except OSError as e:
            raise StorageError(f"cannot write {self.key!r}: {e.strerror}") from e

    def commit(self) -> ObjectInfo:
        if self._done:
            raise StorageError(f"writer for {self.key!r} is already committed or aborted")
        try:
            os.fsync(self._fd)
            os.close(self._fd)
            self._fd = -1
            try:
                os.link(self._tmp, self._final)
            except FileExistsError:
                raise ObjectExists(
                    f"object {self.key!r} already exists in {self._storage.url}; backups never overwrite"
                ) from None
            self._tmp.unlink()
            _fsync_dir(self._final.parent)
            st = self._final.stat()
        except ObjectExists:
            self.abort()
            raise
        except OSError as e:
            self.abort()
            raise StorageError(f"cannot commit {self.key!r}: {e.strerror}") from e
        except BaseException:
            self.abort()
            raise
        self._done = True
        return _info(self.key, st)

    def abort(self) -> None:
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = -1
        if not self._done:
            self._done = True
            with contextlib.suppress(FileNotFoundError):
                self._tmp.unlink()
            self._storage.prune(self._final.parent)


class LocalStorage:
    def __init__(self, location: StorageLocation | str) -> None:
        if isinstance(location, str):
            location = parse_storage_url(location)
        if location.scheme != "file":
            raise ConfigError(f"PGOPS_STORAGE_URL={location.url!r} is not a local file URL; valid: file:///abs/path")
        self.url = location.url
        self.root = Path(location.path)

    def __repr__(self) -> str:
        return f"LocalStorage(url={self.url!r})"

    # ---- helpers ----------------------------------------------------------------------------------

    def path_for(self, key: str) -> Path:
        return self.root.joinpath(*validate_key(key).split("/"))

    def makedirs(self, path: Path) -> None:
        """Create `path` and any missing parents, fsyncing each parent so the new entries are durable."""
        missing: list[Path] = []
        p = path
        while not p.is_dir():
            missing.append(p)
            if p.parent == p:
                break
            p = p.parent
        for d in reversed(missing):
            try:
                d.mkdir(mode=_DIR_MODE)
            except FileExistsError:
                if not d.is_dir():
                    raise StorageError(f"{d} exists and is not a directory") from None
                continue
            except OSError as e:
                raise StorageError(f"cannot create directory {d}: {e.strerror}") from e
            _fsync_dir(d.parent)

    def prune(self, directory: Path) -> None:
        """Remove now-empty directories from `directory` up to (not including) the root."""
        d = directory
        while d != self.root and self.root in d.parents:
            try:
                d.rmdir()
            except OSError:
                return
            with contextlib.suppress(OSError):
                _fsync_dir(d.parent)
            d = d.parent

    # ---- Storage ------------------------------------------------------------------------------------

    def open_writer(self, key: str, options: WriteOptions | None = None) -> LocalWriter:
        return LocalWriter(self, key)

    def open_reader(self, key: str) -> LocalReader:
        return LocalReader(self.path_for(key), key)

    def put_bytes(self, key: str, data: bytes, options: WriteOptions | None = None) -> ObjectInfo:
        return write_all(self, key, data, options)

    def get_bytes(self, key: str) -> bytes:
        return read_all(self, key)

    def exists(self, key: str) -> bool:
        return self.path_for(key).is_file()

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        validate_prefix(prefix)
        # Walk only the deepest directory the prefix names completely.
        start = self.root.joinpath(*prefix.split("/")[:-1]) if "/" in prefix else self.root
        if not start.is_dir():
            return
        for dirpath, dirnames, filenames in os.walk(start):
            dirnames.sort()
            base = Path(dirpath)
            for name in sorted(filenames):
                if is_temp_name(name):
                    continue
                path = base / name
                key = path.relative_to(self.root).as_posix()
                if not key.startswith(prefix):
                    continue
                try:
                    st = path.stat()
                except FileNotFoundError:  # deleted while we walked
                    continue
                yield _info(key, st)

    def delete(self, key: str) -> None:
        """Remove the file and prune parent directories that became empty. No locks exist locally."""
        path = self.path_for(key)
        try:
            path.unlink()
        except (FileNotFoundError, NotADirectoryError):
            raise ObjectNotFound(f"object {key!r} does not exist") from None
        except IsADirectoryError:
            raise ObjectNotFound(f"object {key!r} does not exist (it is a directory)") from None
        except OSError as e:
            raise StorageError(f"cannot delete {key!r}: {e.strerror}") from e
        _fsync_dir(path.parent)
        self.prune(path.parent)

    def check(self) -> None:
        hint = "check PGOPS_STORAGE_URL"
        try:
            self.makedirs(self.root)
        except StorageError as e:
            raise StorageError(f"PGOPS_STORAGE_URL={self.url}: {e}") from None
        probe = self.root / f".pgops-check.{TEMP_MARKER}-{secrets.token_hex(6)}"
        try:
            fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            try:
                os.write(fd, b"pgops check\n")
                os.fsync(fd)
            finally:
                os.close(fd)
            probe.unlink()
        except OSError as e:
            with contextlib.suppress(OSError):
                probe.unlink()
            reason = "is not writable" if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS) else e.strerror
            raise StorageError(f"PGOPS_STORAGE_URL={self.url}: directory {self.root}: {reason}; {hint}") from e

    def close(self) -> None:
        return None
