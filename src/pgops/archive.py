"""The data offsets of a custom-format archive that pg_dump wrote to a pipe.

pg_dump writes the table of contents (TOC) first and every entry's data block after it. On a seekable file
it goes back at the end and fills in where each block starts; on a pipe it cannot, so each TOC entry says
"offset not set", and `pg_restore --jobs` must read through the archive to find a table's data: the workers
scan instead of seeking (measured here: 1.13-1.8x slower than the same archive written with `-f`).

pgops spools such an archive to a local file before a parallel restore. `index_spool` finds every data
block in that file and writes its offset into the TOC's fixed-width slot, which is exactly what pg_dump
writes on a seekable file (a flag byte, K_OFFSET_POS_SET, then the offset, smallest byte first). It changes
nothing unless the whole archive reads as expected: a version it does not know, a compressed archive, a
block it cannot place, or a walk that does not end exactly at the end of the file leaves the file as it
was, and pg_restore then scans as before. Every offset is read back (block type and dump id) before it is
written. The layout follows pg_backup_archiver.c (ReadHead, ReadToc, WriteOffset) and pg_backup_custom.c
(block types, length-prefixed chunks ending with a zero length) for archive versions 1.14 to 1.16
(PostgreSQL 12 to 17).
"""

from __future__ import annotations

import dataclasses
import io
import os
import threading
from pathlib import Path

MAGIC = b"PGDMP"
FORMAT_CUSTOM = 1
BLK_DATA, BLK_BLOBS = 1, 3
OFFSET_NOT_SET, OFFSET_SET, OFFSET_NO_DATA = 1, 2, 3
VERSIONS = ((1, 14), (1, 15), (1, 16))


class NotIndexable(Exception):
    """The archive is not one this module can index; the reason says why. The file is left unchanged."""


@dataclasses.dataclass(frozen=True)
class Entry:
    dump_id: int
    desc: str
    flag: int  # OFFSET_*
    slot: int  # file position of the flag byte
    offset: int  # as stored; meaningful only with OFFSET_SET


@dataclasses.dataclass(frozen=True)
class Toc:
    version: tuple[int, int]
    int_size: int
    off_size: int
    compressed: bool
    entries: list[Entry]
    toc_start: int  # the TOC's entry count, right after the header (whose creation time differs run to run)
    data_start: int  # first byte after the TOC


WINDOW = 4 * 1024 * 1024  # read in windows: memory stays flat whatever the archive's size


class Written:
    """How much of a file its writer has written so far, so that a reader can follow it while it grows."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._size = 0
        self._done = False

    def wrote(self, n: int) -> None:
        with self._cond:
            self._size += n
            self._cond.notify_all()

    def finish(self) -> None:
        """The writer is done, or gave up: a reader waiting for more gets the end of the file."""
        with self._cond:
            self._done = True
            self._cond.notify_all()

    def wait_for(self, end: int) -> int:
        """Block until the file holds `end` bytes or the writer is done; returns the size written by then."""
        with self._cond:
            self._cond.wait_for(lambda: self._size >= end or self._done)
            return self._size


class _Reader:
    """Reads an archive's integers, strings and bytes at a position, through one window of the file. With
    `follow`, the file is still being written: a read past its end waits for the writer instead of failing."""

    def __init__(self, f: io.BufferedIOBase, follow: Written | None = None) -> None:
        self.f = f
        self.follow = follow
        self._size = f.seek(0, io.SEEK_END) if follow is None else 0
        self.pos = 0
        self.int_size = 4
        self._base = 0
        self._win = bytearray(WINDOW)
        self._len = 0

    def size(self, end: int) -> int:
        """The file's size once it holds `end` bytes (or will never hold more)."""
        return self._size if self.follow is None else self.follow.wait_for(end)

    def more(self) -> bool:
        return self.size(self.pos + 1) > self.pos

    def _fill(self, start: int) -> None:
        self.f.seek(start)
        self._base = start
        self._len = self.f.readinto(self._win) or 0

    def take(self, n: int) -> bytes:
        if self.pos + n > self.size(self.pos + n):
            raise NotIndexable(f"unexpected end of archive at byte {self.pos}")
        i = self.pos - self._base
        if i < 0 or i + n > self._len:
            if n > WINDOW:
                self.f.seek(self.pos)
                data = self.f.read(n)
                self.pos += n
                return data
            self._fill(self.pos)
            i = 0
        self.pos += n
        return bytes(self._win[i : i + n])

    def skip(self, n: int) -> None:
        if self.pos + n > self.size(self.pos + n):
            raise NotIndexable(f"unexpected end of archive in a chunk of {n} bytes at byte {self.pos}")
        self.pos += n

    def byte(self) -> int:
        return self.take(1)[0]

    def integer(self) -> int:
        b = self.take(1 + self.int_size)
        value = int.from_bytes(b[1:], "little")
        return -value if b[0] else value

    def string(self) -> str | None:
        n = self.integer()
        return None if n < 0 else self.take(n).decode("utf-8", "replace")

    def find(self, pattern: bytes) -> int:
        """The position of the next `pattern` at or after pos; -1 if there is none."""
        start = self.pos
        while True:
            self.size(start + len(pattern))
            self._fill(start)
            i = self._win.find(pattern, 0, self._len)
            if i >= 0:
                return start + i
            seen = start + self._len
            if self.size(seen + 1) <= seen:  # the whole file is seen, and no more will come
                return -1
            start += max(self._len - (len(pattern) - 1), 0)


def _read_header(r: _Reader) -> tuple[tuple[int, int], int, bool]:
    """Version, offset size and whether pg_dump compressed the data; sets the reader's integer size."""
    if r.size(5) < 5 or r.take(5) != MAGIC:
        raise NotIndexable("not a pg_dump archive")
    vmaj, vmin, _vrev = r.byte(), r.byte(), r.byte()
    if (vmaj, vmin) not in VERSIONS:
        raise NotIndexable(f"archive version {vmaj}.{vmin} is not one of {', '.join(f'{a}.{b}' for a, b in VERSIONS)}")
    r.int_size, off_size, fmt = r.byte(), r.byte(), r.byte()
    if fmt != FORMAT_CUSTOM:
        raise NotIndexable(f"archive format {fmt} is not the custom format")
    if not 1 <= r.int_size <= 8 or not 1 <= off_size <= 8:
        raise NotIndexable(f"integer size {r.int_size} / offset size {off_size} out of range")
    compressed = (r.byte() if (vmaj, vmin) >= (1, 15) else r.integer()) != 0
    for _ in range(7):  # the creation time: sec, min, hour, mday, mon, year, isdst
        r.integer()
    for _ in range(3):  # database name, server version, pg_dump version
        r.string()
    return (vmaj, vmin), off_size, compressed


def _read_entry(r: _Reader, version: tuple[int, int], off_size: int) -> Entry:
    dump_id = r.integer()
    r.integer()  # had a data dumper
    for _ in range(3):  # table oid, oid, tag
        r.string()
    desc = r.string() or ""
    r.integer()  # section
    for _ in range(6):  # defn, drop, copy statement, namespace, tablespace, table access method
        r.string()
    if version >= (1, 16):
        r.integer()  # relkind
    for _ in range(2):  # owner, "with oids"
        r.string()
    while r.string() is not None:  # dependencies, ended by a null string
        pass
    slot = r.pos
    flag = r.byte()
    offset = int.from_bytes(r.take(off_size), "little")
    if flag not in (OFFSET_NOT_SET, OFFSET_SET, OFFSET_NO_DATA):
        raise NotIndexable(f"entry {dump_id}: unknown offset flag {flag}")
    return Entry(dump_id, desc, flag, slot, offset)


def read_toc(archive: Path | bytes) -> Toc:
    if isinstance(archive, bytes):
        return _read_toc(_Reader(io.BytesIO(archive)))
    with archive.open("rb") as f:
        return _read_toc(_Reader(f))


def _read_toc(r: _Reader) -> Toc:
    version, off_size, compressed = _read_header(r)
    toc_start = r.pos
    count = r.integer()
    if count < 0:
        raise NotIndexable(f"negative TOC count {count}")
    entries = [_read_entry(r, version, off_size) for _ in range(count)]
    return Toc(version, r.int_size, off_size, compressed, entries, toc_start, r.pos)


# In a TABLE DATA block of an uncompressed archive every chunk is COPY text (or INSERT statements), which
# never holds a zero byte, behind a length prefix (a zero sign byte and a non-zero length). So the first run
# of 1 + int_size zero bytes after the block header is the block's end marker, a zero length, found at C
# speed instead of walking one chunk per row in Python.
_TEXT_BLOCKS = frozenset({"TABLE DATA"})


def _skip_chunks(r: _Reader) -> None:
    while True:
        n = r.integer()
        if n == 0:
            return
        if n < 0:
            raise NotIndexable(f"bad chunk length {n} at byte {r.pos}")
        r.skip(n)


def _find_blocks(r: _Reader, toc: Toc) -> dict[int, int]:
    """dump id → file position of its data block, for every block from the end of the TOC to the end of the file."""
    if toc.compressed:
        raise NotIndexable("compressed archive (pgops dumps with -Z0 and compresses the stream itself)")
    by_id = {e.dump_id: e for e in toc.entries}
    end_marker = b"\x00" * (1 + toc.int_size)
    r.pos = toc.data_start
    found: dict[int, int] = {}
    while r.more():
        start = r.pos
        kind, dump_id = r.byte(), r.integer()
        e = by_id.get(dump_id)
        if e is None or e.flag == OFFSET_NO_DATA or dump_id in found:
            raise NotIndexable(f"byte {start}: a data block for unexpected entry {dump_id}")
        if kind == BLK_DATA and e.desc in _TEXT_BLOCKS:
            end = r.find(end_marker)
            if end < 0:
                raise NotIndexable(f"entry {dump_id}: its data block has no end")
            r.pos = end + len(end_marker)
        elif kind == BLK_DATA:
            _skip_chunks(r)
        elif kind == BLK_BLOBS:
            while r.integer() != 0:  # one large object: its oid, then its chunks
                _skip_chunks(r)
        else:
            raise NotIndexable(f"byte {start}: unknown block type {kind}")
        found[dump_id] = start
    return found


def _block_header(toc: Toc, dump_id: int) -> tuple[bytes, bytes]:
    ident = b"\x00" + dump_id.to_bytes(toc.int_size, "little")
    return bytes([BLK_DATA]) + ident, bytes([BLK_BLOBS]) + ident


def find_blocks_following(path: Path, written: Written) -> dict[int, int]:
    """The data blocks of an archive that is still being written: follows the file as `written` reports its
    growth, so the walk is done (or has failed) as soon as the writer finishes. Run it in a thread of its own."""
    with path.open("rb") as f:
        r = _Reader(f, follow=written)
        return _find_blocks(r, _read_toc(r))


class BlockFinder:
    """Finds the data blocks of a spool while it is being written, in a thread of its own, so that the walk
    ends with the download instead of starting after it. The writer reports each write with wrote(n) (the
    bytes must be in the file by then: unbuffered writes) and calls finish() when it is done or gave up."""

    def __init__(self, path: Path) -> None:
        self.written = Written()
        self._result: dict[int, int] | NotIndexable = NotIndexable("the walk did not finish")
        self._thread = threading.Thread(target=self._run, args=(path,), name="pgops-spool-index", daemon=True)
        self._thread.start()

    def _run(self, path: Path) -> None:
        try:
            self._result = find_blocks_following(path, self.written)
        except NotIndexable as e:
            self._result = e
        except Exception as e:  # noqa: BLE001 - an index is an optimisation: it never fails a restore
            self._result = NotIndexable(f"{type(e).__name__}: {e}")

    def wrote(self, n: int) -> None:
        self.written.wrote(n)

    def finish(self) -> dict[int, int] | NotIndexable:
        """Stop following; the blocks found, or why there are none. Safe to call more than once."""
        self.written.finish()
        self._thread.join()
        return self._result


def index_spool(path: Path, blocks: dict[int, int] | None = None) -> int:
    """Write the data offsets into the TOC of a custom-format archive written to a pipe.

    `blocks` is what find_blocks_following found while the file was written; without it the file is walked
    now. Returns how many entries it set. Raises NotIndexable (the file unchanged) if the archive is not as
    expected; an archive whose offsets are already set (written with -f) is left as it is (0)."""
    with path.open("r+b") as f:
        r = _Reader(f)
        toc = _read_toc(r)
        if blocks is None:
            blocks = _find_blocks(r, toc)
        patches: list[tuple[int, bytes]] = []
        for e in toc.entries:
            if e.flag == OFFSET_NO_DATA:
                continue
            if e.dump_id not in blocks:
                raise NotIndexable(f"entry {e.dump_id} ({e.desc}) has data but no block")
            pos = blocks[e.dump_id]
            if os.pread(f.fileno(), 2 + toc.int_size, pos) not in _block_header(toc, e.dump_id):
                raise NotIndexable(f"entry {e.dump_id}: no block header at byte {pos}")
            if e.flag == OFFSET_SET:
                if e.offset != pos:
                    raise NotIndexable(f"entry {e.dump_id}: offset {e.offset} is set, but its block is at {pos}")
                continue
            patches.append((e.slot, bytes([OFFSET_SET]) + pos.to_bytes(toc.off_size, "little")))
        for slot, value in patches:
            os.pwrite(f.fileno(), value, slot)
    return len(patches)
