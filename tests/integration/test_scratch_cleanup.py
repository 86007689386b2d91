"""A failed restore or drill cleans up its scratch database, and never hides the failure that got it there."""

from __future__ import annotations

import logging

import pytest

from pgops.pg import PgConn, drop_scratch
from tests.fixtures.pg import Cluster, free_port


def test_cleanup_on_a_dead_server_warns_with_the_name_instead_of_raising(caplog: pytest.LogCaptureFixture) -> None:
    dead = PgConn(f"host=127.0.0.1 port={free_port()} user=postgres connect_timeout=2")
    with caplog.at_level(logging.WARNING):
        drop_scratch(dead, "pgops_restore_0badc0de")
    lines = [r.getMessage() for r in caplog.records if "event=scratch_left" in r.getMessage()]
    assert len(lines) == 1 and "pgops_restore_0badc0de" in lines[0] and "DROP DATABASE" in lines[0]


def test_cleanup_drops_the_scratch_database(pg: Cluster) -> None:
    pg.create_database("pgops_restore_cleanme")
    drop_scratch(PgConn(pg.conninfo), "pgops_restore_cleanme")
    assert "pgops_restore_cleanme" not in pg.databases()
