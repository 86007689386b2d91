"""Does a restored database hold what its backup recorded? Used by restore --check (before the switch)
and by verify --restore-test."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pgops.errors import IntegrityError

if TYPE_CHECKING:
    from pgops.manifest import Manifest
    from pgops.pg import PgConn


def estimate(table: dict[str, Any]) -> int:
    return max(int(table.get("reltuples", -1)), int(table.get("n_live_tup", -1)))


def row_count_ok(exact: int, est: int) -> bool:
    """Estimates come from the planner and the stats system: allow 10% (at least 100 rows) either way."""
    return est < 0 or abs(exact - est) <= max(100, est // 10)


def check_tables(conn: PgConn, dbname: str, m: Manifest) -> int:
    """Every table the manifest lists exists in dbname, with an exact row count near its estimate.
    Returns the number of tables checked; raises IntegrityError naming up to five problems."""
    import psycopg
    from psycopg import sql

    problems: list[str] = []
    with conn.connect(dbname) as c:
        for table in m.tables:
            name = f"{table['schema']}.{table['name']}"
            try:
                row = c.execute(
                    sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table["schema"], table["name"]))
                ).fetchone()
            except psycopg.Error as e:
                problems.append(f"{name}: {str(e).splitlines()[0]}")
                continue
            exact = int(row[0]) if row else -1
            if not row_count_ok(exact, estimate(table)):
                problems.append(f"{name}: {exact} rows, manifest estimate {estimate(table)}")
    if problems:
        raise IntegrityError(f"restore of {m.id} does not match its manifest: {'; '.join(problems[:5])}")
    return len(m.tables)
