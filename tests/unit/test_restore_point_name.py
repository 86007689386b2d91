"""The default restore point name fits PostgreSQL's 63 bytes and pgops' own name rule, whatever the reason."""

from __future__ import annotations

import datetime as dt

import pytest

from pgops.restore_point import NAME_RE, default_name

NOW = dt.datetime(2026, 12, 3, 16, 9, 17, tzinfo=dt.UTC)


@pytest.mark.parametrize("reason", ["pre-migration", "a" * 64, "x" * 39 + "._-" + "y" * 20, "0"])
def test_default_name_fits(reason: str) -> None:
    name = default_name(reason, NOW)
    assert len(name.encode()) <= 63 and NAME_RE.match(name), name
    assert name.startswith("pgops-" + reason[:10]) and name.endswith("-20261203T160917Z")
