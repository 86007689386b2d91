"""`restore --jobs N` writes the data offsets into the spooled archive's TOC (pgops.archive), which pg_dump
cannot do on a pipe. The offsets must be exactly the ones pg_dump writes on a seekable file, the restore
must be the same database, and an archive that does not read as expected must be left byte for byte as it
was (pg_restore then scans, as before)."""

from __future__ import annotations

import random
import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from pgops.archive import BlockFinder, NotIndexable, index_spool, read_toc
from tests.fixtures.engine import run_pgops
from tests.fixtures.pg import BINDIR, Cluster, make_tricky_database

SOURCE = "spool_offsets_src"

# Chunks whose length prefixes are full of zero bytes (rows of exactly 256 bytes: 00 00 01 00 00), an empty
# table (a block that is only its end marker), text with control bytes, and a large object made of zero
# bytes around a fake block header: the walk must not mistake any of them for the end of a block.
AWKWARD = """
CREATE TABLE rows_256 (t text);
INSERT INTO rows_256 SELECT repeat('a', 255) FROM generate_series(1, 300);
CREATE TABLE rows_65536 (t text);
INSERT INTO rows_65536 SELECT repeat('b', 65535) FROM generate_series(1, 3);
CREATE TABLE nothing_here (i int);
CREATE TABLE control_bytes (t text);
INSERT INTO control_bytes SELECT chr(1) || chr(2) || 'x' || chr(1) FROM generate_series(1, 1000);
SELECT lo_from_bytea(0, decode(repeat('00', 70000) || '010005000000' || repeat('00', 10), 'hex'));
CREATE MATERIALIZED VIEW mv AS SELECT count(*) AS n FROM rows_256;
"""


def _pg_dump(pg: Cluster, *extra: str) -> list[str]:
    return [str(BINDIR / "pg_dump"), "-Fc", "-Z0", *extra, "-d", pg.dsn(SOURCE)]


def _through_a_pipe(argv: list[str], out: Path) -> None:
    """What pgops does: pg_dump writes into a pipe, so it cannot go back and set the offsets."""
    with subprocess.Popen(argv, stdout=subprocess.PIPE) as p, out.open("wb") as f:
        assert p.stdout is not None
        shutil.copyfileobj(p.stdout, f)
    assert p.returncode == 0


@pytest.fixture(scope="module")
def archives(pg: Cluster, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    make_tricky_database(pg, SOURCE)
    with pg.connect(SOURCE) as c:
        c.execute(AWKWARD)
    d = tmp_path_factory.mktemp("archives")
    subprocess.run([*_pg_dump(pg), "-f", str(d / "seekable.pgc")], check=True)
    _through_a_pipe(_pg_dump(pg), d / "piped.pgc")
    subprocess.run([str(BINDIR / "pg_dump"), "-Fc", "-d", pg.dsn(SOURCE), "-f", str(d / "compressed.pgc")], check=True)
    return {p.stem: p for p in d.iterdir()}


def _restore_list(path: Path) -> str:
    return subprocess.run(
        [str(BINDIR / "pg_restore"), "--list", str(path)], check=True, capture_output=True, text=True
    ).stdout


def test_the_offsets_written_are_the_ones_pg_dump_writes_on_a_seekable_file(
    archives: dict[str, Path], tmp_path: Path
) -> None:
    piped = tmp_path / "spool.pgc"
    shutil.copy(archives["piped"], piped)
    before = read_toc(piped)
    with_data = [e for e in before.entries if e.flag != 3]
    assert with_data and all(e.flag == 1 for e in with_data), "pg_dump on a pipe sets no offsets"
    assert {e.desc for e in with_data} == {"TABLE DATA", "BLOBS"}

    assert index_spool(piped) == len(with_data)

    patched, seekable = piped.read_bytes(), archives["seekable"].read_bytes()
    toc, ref = read_toc(patched), read_toc(seekable)
    assert [(e.dump_id, e.flag, e.offset) for e in toc.entries] == [(e.dump_id, e.flag, e.offset) for e in ref.entries]
    # byte for byte pg_dump's own seekable archive, after the header's creation time
    assert patched[toc.toc_start :] == seekable[ref.toc_start :]
    assert _restore_list(piped) == _restore_list(archives["piped"])
    # a second run finds every offset set and the right one: nothing to do
    assert index_spool(piped) == 0
    assert piped.read_bytes() == patched


def test_a_patched_spool_and_an_unpatched_one_restore_the_same_database_in_parallel(
    pg: Cluster, archives: dict[str, Path], tmp_path: Path
) -> None:
    patched = tmp_path / "patched.pgc"
    shutil.copy(archives["piped"], patched)
    assert index_spool(patched) > 0
    source = pg.dump(SOURCE)
    for name, archive in (("offsets_patched", patched), ("offsets_unpatched", archives["piped"])):
        pg.create_database(name, OWNER="pgops_app_owner")
        try:
            subprocess.run(
                [str(BINDIR / "pg_restore"), "--exit-on-error", "--jobs=2", "-d", pg.dsn(name), str(archive)],
                check=True,
                capture_output=True,
            )
            assert pg.dump(name) == source, name
        finally:
            pg.drop_database(name)


def test_blocks_are_found_while_the_spool_is_written_in_pieces(archives: dict[str, Path], tmp_path: Path) -> None:
    """restore --jobs walks the spool while the download writes it: pieces of any size, with pauses, must
    give exactly the blocks a walk of the finished file gives."""
    data = archives["piped"].read_bytes()
    spool = tmp_path / "spool.pgc"
    spool.touch()
    finder = BlockFinder(spool)
    rng = random.Random(15)
    with spool.open("wb", buffering=0) as f:
        pos = 0
        while pos < len(data):
            piece = data[pos : pos + rng.choice([1, 5, 7, 4096, 65536, 1 << 20])]
            f.write(piece)
            finder.wrote(len(piece))
            pos += len(piece)
            if rng.random() < 0.05:
                time.sleep(0.002)
    found = finder.finish()
    assert isinstance(found, dict), found
    expected = {e.dump_id: e.offset for e in read_toc(archives["seekable"]).entries if e.flag != 3}
    assert found == expected
    assert index_spool(spool, found) == len(expected)
    assert (
        spool.read_bytes()[read_toc(spool).toc_start :]
        == archives["seekable"].read_bytes()[read_toc(archives["seekable"]).toc_start :]
    )


@pytest.mark.parametrize("stop_at", [0, 3, 20_000, -1000])
def test_a_writer_that_gives_up_ends_the_walk_without_an_index(
    archives: dict[str, Path], tmp_path: Path, stop_at: int
) -> None:
    """A download that fails half-way (or before its first byte) must not leave the walking thread waiting."""
    data = archives["piped"].read_bytes()[:stop_at]
    spool = tmp_path / "spool.pgc"
    spool.write_bytes(data)
    finder = BlockFinder(spool)
    finder.wrote(len(data))
    done: list[object] = []
    waiter = threading.Thread(target=lambda: done.append(finder.finish()))
    waiter.start()
    waiter.join(10)
    assert not waiter.is_alive(), "the walk still waits for a writer that gave up"
    assert isinstance(done[0], NotIndexable)


def _truncated(data: bytes) -> bytes:
    return data[: len(data) - 1000]


def _unknown_block_id(data: bytes) -> bytes:
    toc = read_toc(data)
    out = bytearray(data)
    out[toc.data_start + 2 : toc.data_start + 6] = (99999).to_bytes(4, "little")
    return bytes(out)


def _trailing_bytes(data: bytes) -> bytes:
    return data + b"\x01\x00garbage"


def _future_version(data: bytes) -> bytes:
    return data[:6] + bytes([99]) + data[7:]


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (_truncated, "end"),
        (_unknown_block_id, "unexpected entry 99999"),
        (_trailing_bytes, "unexpected entry|unexpected end"),
        (_future_version, "version 1.99"),
    ],
)
def test_an_archive_that_does_not_read_as_expected_is_left_unchanged(
    archives: dict[str, Path], tmp_path: Path, damage: Callable[[bytes], bytes], reason: str
) -> None:
    spool = tmp_path / "spool.pgc"
    spool.write_bytes(damage(archives["piped"].read_bytes()))
    before = spool.read_bytes()
    with pytest.raises(NotIndexable, match=reason):
        index_spool(spool)
    assert spool.read_bytes() == before


def test_a_compressed_or_plain_dump_is_left_unchanged(archives: dict[str, Path], tmp_path: Path) -> None:
    compressed = tmp_path / "c.pgc"
    compressed.write_bytes(archives["compressed"].read_bytes())
    before = compressed.read_bytes()
    with pytest.raises(NotIndexable, match="compressed"):
        index_spool(compressed)
    assert compressed.read_bytes() == before
    plain = tmp_path / "plain.sql"
    plain.write_bytes(b"--\n-- PostgreSQL database dump\n--\n")
    with pytest.raises(NotIndexable, match="not a pg_dump archive"):
        index_spool(plain)


def test_restore_jobs_indexes_the_verified_spool(
    pg: Cluster, engine_env: dict[str, str], archives: dict[str, Path], tmp_path: Path
) -> None:
    run_pgops(["backup", "--databases", SOURCE, "--no-globals"], engine_env, check=True)
    data_entries = sum(e.flag != 3 for e in read_toc(archives["piped"]).entries)
    spool = tmp_path / "spool"
    spool.mkdir()
    target = "spool_offsets_back"
    result = run_pgops(
        ["restore", "--database", SOURCE, "--target-db", target, "--jobs", "2", "--spool-dir", str(spool)],
        engine_env,
    )
    try:
        assert result.returncode == 0, result.stderr
        assert "event=spool_indexed id=" in result.stderr, result.stderr
        indexed = next(line for line in result.stderr.splitlines() if "event=spool_indexed" in line)
        assert f" entries={data_entries} " in indexed, indexed
        assert pg.dump(target) == pg.dump(SOURCE)
        assert list(spool.iterdir()) == []
    finally:
        pg.drop_database(target)
