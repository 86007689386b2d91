"""The tricky-names fixture exists twice: as a Python fixture and as psql scripts for the Molecule hosts.
Both must build the same database, or the end-to-end scenario would test less than it claims."""

from __future__ import annotations

import re
import subprocess

from tests.fixtures.pg import Cluster, database_level, make_tricky_database, tricky_psql_scripts

UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[0-9a-f]{4}-[0-9a-f]{12}")


def test_psql_scripts_build_the_same_database_as_the_fixture(pg: Cluster) -> None:
    make_tricky_database(pg, "fixture_py", pgbench=False)
    first, second = tricky_psql_scripts("fixture psql")
    for script in (first, second):
        subprocess.run(
            [str(pg.bindir / "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", pg.dsn("postgres")],
            input=script,
            text=True,
            check=True,
            capture_output=True,
        )
    assert _comparable(pg, "fixture psql") == _comparable(pg, "fixture_py")
    assert database_level(pg, "fixture psql") == database_level(pg, "fixture_py")


def _comparable(pg: Cluster, name: str) -> str:
    """Two builds differ only where they must: the large object's OID (the next free one in the cluster)
    and the random uuid_generate_v4() defaults. The OID is replaced as a whole word only: its digits also occur
    inside the rows' hex strings now and then (a fresh-clone CI run met "…df4416551e7…" with OID 16551)."""
    with pg.connect(name) as c:
        row = c.execute("SELECT oid::text FROM pg_largeobject_metadata").fetchone()
    assert row is not None
    return UUID.sub("<uuid>", re.sub(rf"\b{row[0]}\b", "<lo-oid>", pg.dump(name)))
