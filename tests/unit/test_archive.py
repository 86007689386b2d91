"""pgops.archive on real pg_dump 17 output (archive version 1.16; the integration tests cover PostgreSQL 15's
1.14 live). The fixtures are one database dumped through a pipe and to a file: see
tests/fixtures/archives/make-pg17.sh."""

from __future__ import annotations

from pathlib import Path

import pytest
import zstandard

from pgops.archive import NotIndexable, index_spool, read_toc

ARCHIVES = Path(__file__).resolve().parent.parent / "fixtures" / "archives"


def _unpack(name: str, into: Path) -> Path:
    out = into / name.removesuffix(".zst")
    out.write_bytes(zstandard.ZstdDecompressor().decompress((ARCHIVES / name).read_bytes()))
    return out


def test_a_pg17_archive_from_a_pipe_gets_the_offsets_pg_dump_17_writes_on_a_file(tmp_path: Path) -> None:
    piped, seekable = _unpack("pg17-piped.pgc.zst", tmp_path), _unpack("pg17-seekable.pgc.zst", tmp_path)
    toc = read_toc(piped)
    assert toc.version == (1, 16)
    with_data = [e for e in toc.entries if e.flag != 3]
    assert [e.desc for e in with_data].count("TABLE DATA") == 3 and [e.desc for e in with_data][-1] == "BLOBS"
    assert all(e.flag == 1 for e in with_data)

    assert index_spool(piped) == len(with_data)

    got, ref = read_toc(piped), read_toc(seekable)
    assert [(e.dump_id, e.flag, e.offset) for e in got.entries] == [(e.dump_id, e.flag, e.offset) for e in ref.entries]
    assert piped.read_bytes()[got.toc_start :] == seekable.read_bytes()[ref.toc_start :]


def test_a_pg17_archive_with_a_block_cut_short_is_left_unchanged(tmp_path: Path) -> None:
    piped = _unpack("pg17-piped.pgc.zst", tmp_path)
    data = piped.read_bytes()
    piped.write_bytes(data[:-7])
    with pytest.raises(NotIndexable, match="end"):
        index_spool(piped)
    assert piped.read_bytes() == data[:-7]
