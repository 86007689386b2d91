"""Does a restored database hold what its backup recorded? Used by restore --check (before the switch)
and by verify --restore-test."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pgops.errors import IntegrityError

if TYPE_CHECKING:
    from pgops.manifest import Manifest
    from pgops.pg import PgConn


def estimates(table: dict[str, Any]) -> list[int]:
    """The planner's reltuples and the stats system's n_live_tup, where known (-1 means unknown)."""
    return [v for v in (int(table.get("reltuples", -1)), int(table.get("n_live_tup", -1))) if v >= 0]


def row_count_ok(exact: int, table: dict[str, Any]) -> bool:
    """Not fewer rows than either estimate allows: 10% (at least 100 rows) below it. Either can be off on its own:
    in PostgreSQL 15, n_live_tup counts a bulk load twice until autovacuum analyzes the table again. And both lag
    behind a table that grew since its last ANALYZE, most of all on a promoted standby (a Patroni member after a
    failover): its counters hold only what happened since the promotion, and reltuples only the old primary's last
    ANALYZE. More rows than estimated is never data missing from the restore; fewer is what this check is for."""
    known = estimates(table)
    return not known or any(exact >= est - max(100, est // 10) for est in known)


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
            if not row_count_ok(exact, table):
                shown = " or ".join(str(e) for e in sorted(set(estimates(table))))
                problems.append(f"{name}: {exact} rows, manifest estimate {shown}")
    if problems:
        raise IntegrityError(f"restore of {m.id} does not match its manifest: {'; '.join(problems[:5])}")
    return len(m.tables)
