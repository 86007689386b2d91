"""`pgops leftovers`: the databases pgops itself left on the server, and dropping them on request.

Two kinds: `<name>_pgops_old_<time>`, the original that `restore --replace` moved aside (kept so that the
operator can look at it or switch back), and `pgops_restore_<hex>` / `pgops_verify_<hex>`, the scratch
database of a restore or drill that was killed before it could drop it. Neither is part of
`PGOPS_DATABASES=all`. Nothing drops them on its own: `pgops leftovers --drop NAME` or `--drop-all` does.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from pgops.errors import ConfigError, PostgresError
from pgops.log import q
from pgops.pg import PgConn, is_leftover, leftover_databases
from pgops.settings import Settings

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Leftover:
    database: str
    bytes: int

    @property
    def kind(self) -> str:
        return "replaced" if "_pgops_old_" in self.database else "scratch"

    def to_json(self) -> dict[str, Any]:
        return {"database": self.database, "kind": self.kind, "bytes": self.bytes}


def find_leftovers(conn: PgConn) -> list[Leftover]:
    with conn.connect("postgres") as c:
        return [Leftover(name, size) for name, size in leftover_databases(c)]


def drop_leftovers(settings: Settings, names: list[str], *, everything: bool) -> list[Leftover]:
    """Drop the named leftovers (or all). Refuses a name that is not a pgops leftover on this server before
    dropping anything. A leftover with sessions on it is not dropped (PostgresError names it)."""
    from psycopg import errors as pgerrors
    from psycopg import sql

    conn = PgConn.from_settings(settings)
    found = {x.database: x for x in find_leftovers(conn)}
    for name in names:
        if not is_leftover(name) or name not in found:
            valid = ", ".join(sorted(found)) or "none on this server"
            raise ConfigError(
                f"--drop {name!r} is not a database pgops left behind; valid: a name `pgops leftovers` lists ({valid})"
            )
    chosen = list(found.values()) if everything else [found[n] for n in dict.fromkeys(names)]
    dropped: list[Leftover] = []
    with conn.connect("postgres") as c:
        for x in chosen:
            try:
                c.execute(sql.SQL("DROP DATABASE {}").format(sql.Identifier(x.database)))
            except pgerrors.Error as e:
                first = str(e).strip().splitlines()[0]
                raise PostgresError(f"could not drop leftover {x.database!r}: {first}") from None
            log.info("event=leftover_dropped database=%s kind=%s bytes=%d", q(x.database), x.kind, x.bytes)
            dropped.append(x)
    return dropped
