"""Talking to PostgreSQL: connections, server facts, client binaries and database-level properties.

Passwords reach libpq and child processes only through the environment (PGPASSWORD), never argv.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pgops.errors import ConfigError, PgOpsError, PostgresError
from pgops.log import q
from pgops.proc import capture

if TYPE_CHECKING:
    import psycopg

    from pgops.cluster import ClusterIdentity
    from pgops.settings import Settings

DEBIAN_PG_ROOT = Path("/usr/lib/postgresql")


@dataclasses.dataclass(frozen=True)
class PgConn:
    """How to reach one server: a conninfo without password, plus the password kept aside."""

    conninfo: str
    password: str = dataclasses.field(default="", repr=False)

    @classmethod
    def from_settings(cls, settings: Settings) -> PgConn:
        conninfo = settings.pg_conninfo
        env_user = "user" in conninfo or "PGUSER" in os.environ
        if not conninfo and not any(k in os.environ for k in ("PGHOST", "PGSERVICE")) and not env_user:
            conninfo = "user=postgres"
        elif not env_user and "user=" not in conninfo:
            conninfo = (conninfo + " user=postgres").strip()
        return cls(conninfo, settings.pg_password.reveal())

    def for_db(self, dbname: str) -> str:
        from psycopg.conninfo import make_conninfo

        return make_conninfo(self.conninfo, dbname=dbname)

    def child_env(self) -> dict[str, str]:
        """The environment for pg_dump & co: ours minus PGOPS_* (secrets among them), plus PGPASSWORD."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("PGOPS_")}
        if self.password:
            env["PGPASSWORD"] = self.password
        env.setdefault("PGAPPNAME", "pgops")
        return env

    def libpq_env(self) -> dict[str, str]:
        """child_env plus the conninfo as PG* variables, for tools that take no connection string."""
        from psycopg.conninfo import conninfo_to_dict

        names = {
            "host": "PGHOST",
            "hostaddr": "PGHOSTADDR",
            "port": "PGPORT",
            "user": "PGUSER",
            "sslmode": "PGSSLMODE",
            "sslrootcert": "PGSSLROOTCERT",
            "sslcert": "PGSSLCERT",
            "sslkey": "PGSSLKEY",
            "service": "PGSERVICE",
            "connect_timeout": "PGCONNECT_TIMEOUT",
        }
        env = self.child_env()
        for key, value in conninfo_to_dict(self.conninfo).items():
            if key in names and value is not None:
                env[names[key]] = str(value)
        return env

    def connect(self, dbname: str = "postgres", *, autocommit: bool = True) -> psycopg.Connection[Any]:
        import psycopg

        kwargs: dict[str, Any] = {
            "autocommit": autocommit,
            "application_name": "pgops",
            "connect_timeout": 15,
        }
        if self.password:
            kwargs["password"] = self.password
        try:
            return psycopg.connect(self.for_db(dbname), **kwargs)
        except psycopg.OperationalError as e:
            raise PostgresError(f"cannot connect to database {dbname!r}: {_first_line(e)}") from None


def in_recovery(conn: psycopg.Connection[Any]) -> bool:
    """True on a server in recovery: a standby (a Patroni replica), or a restored server not yet promoted."""
    row = conn.execute("SELECT pg_is_in_recovery()").fetchone()
    return bool(row and row[0])


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


@dataclasses.dataclass(frozen=True)
class ServerInfo:
    version: str  # e.g. "15.18 (Debian 15.18-0+deb12u1)"
    version_num: int  # e.g. 150018

    @property
    def major(self) -> int:
        return self.version_num // 10000


def server_info(conn: psycopg.Connection[Any]) -> ServerInfo:
    row = conn.execute(
        "SELECT current_setting('server_version'), current_setting('server_version_num')::int"
    ).fetchone()
    assert row is not None
    return ServerInfo(row[0], row[1])


def cluster_identity(conn: psycopg.Connection[Any], host: str) -> ClusterIdentity:
    """The server's system identifier (readable by any role), major version, and as hints its data
    directory (only roles that may read it; pg_settings hides it from others) and port."""
    from pgops.cluster import ClusterIdentity

    row = conn.execute(
        "SELECT (SELECT system_identifier FROM pg_control_system())::text,"
        " current_setting('server_version_num')::int / 10000,"
        " (SELECT setting FROM pg_settings WHERE name = 'data_directory'),"
        " current_setting('port')::int"
    ).fetchone()
    assert row is not None
    return ClusterIdentity(row[0], row[1], row[2], row[3], host)


def list_databases(conn: psycopg.Connection[Any]) -> list[str]:
    """Every database that is not a template, connectable or not: one that does not allow connections
    must fail its backup by name, never drop out of 'all' unnoticed."""
    rows = conn.execute("SELECT datname FROM pg_database WHERE NOT datistemplate ORDER BY datname").fetchall()
    return [r[0] for r in rows]


# What pgops itself leaves on a server: the original a `restore --replace` moved aside, and a scratch
# database of a restore or drill that was killed before it could drop it.
LEFTOVER_RE = re.compile(r"pgops_(?:restore|verify)_[0-9a-f]{8}|.+_pgops_old_[0-9]{8}t[0-9]{6}z", re.S)


def is_leftover(name: str) -> bool:
    return LEFTOVER_RE.fullmatch(name) is not None


def leftover_databases(conn: psycopg.Connection[Any]) -> list[tuple[str, int]]:
    """pgops' leftovers on this server with their sizes in bytes, by name."""
    rows = conn.execute(
        "SELECT datname, pg_database_size(oid) FROM pg_database WHERE NOT datistemplate ORDER BY datname"
    ).fetchall()
    return [(r[0], int(r[1])) for r in rows if is_leftover(r[0])]


def database_exists(conn: psycopg.Connection[Any], name: str) -> bool:
    return conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is not None


def role_exists(conn: psycopg.Connection[Any], name: str) -> bool:
    return conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (name,)).fetchone() is not None


def find_bindir(settings_bindir: str, server_major: int | None) -> Path:
    """The client binaries to use. pg_dump must be at least as new as the server."""
    if settings_bindir:
        p = Path(settings_bindir)
        if not (p / "pg_dump").is_file():
            raise ConfigError(
                f"PGOPS_PG_BINDIR={settings_bindir!r} holds no pg_dump; set it to a PostgreSQL bin directory"
            )
        return p
    candidates = sorted(
        (int(d.name), d / "bin")
        for d in DEBIAN_PG_ROOT.glob("*")
        if d.name.isdigit() and (d / "bin" / "pg_dump").is_file()
    )
    if server_major is not None:
        for major, path in candidates:
            if major == server_major:
                return path
        newer = [(m, p) for m, p in candidates if m > server_major]
        if newer:
            return newer[0][1]
    if candidates:
        major, path = candidates[-1]
        if server_major is not None and major < server_major:
            raise ConfigError(
                f"pg_dump {major} is older than the server ({server_major}); install "
                f"postgresql-client-{server_major} or set PGOPS_PG_BINDIR"
            )
        return path
    raise ConfigError("no pg_dump found under /usr/lib/postgresql/*/bin; set PGOPS_PG_BINDIR")


def tool_version(bindir: Path, tool: str) -> str:
    rc, out, err = capture([str(bindir / tool), "--version"], env=os.environ)
    if rc != 0:
        raise PostgresError(f"{bindir / tool} --version failed: {err.strip()[:200]}")
    return out.strip()


# --- database-level properties (pg_restore without --create does not restore them) ----------------

# GUCs whose value is a list that pg_dump re-quotes element by element (pg_dump's variable_is_guc_list_quote).
_LIST_QUOTE_GUCS = frozenset(
    {
        "local_preload_libraries",
        "search_path",
        "session_preload_libraries",
        "shared_preload_libraries",
        "temp_tablespaces",
        "unix_socket_directories",
    }
)


def quoted_identifier_at(text: str, i: int) -> tuple[str, int]:
    """The "quoted" identifier whose opening quote is text[i], unquoted ("" is one "), and the index just
    past its closing quote."""
    j, buf, n = i + 1, [], len(text)
    while j < n:
        if text[j] == '"':
            if j + 1 < n and text[j + 1] == '"':
                buf.append('"')
                j += 2
                continue
            break
        buf.append(text[j])
        j += 1
    return "".join(buf), j + 1


def split_guc_list(value: str) -> list[str]:
    """Split a list-valued GUC like `"$user", public` into its elements, undoing identifier quoting."""
    items: list[str] = []
    i, n = 0, len(value)
    while i < n:
        while i < n and value[i].isspace():
            i += 1
        if i >= n:
            break
        if value[i] == '"':
            name, i = quoted_identifier_at(value, i)
            items.append(name)
        else:
            j = i
            while j < n and value[j] != ",":
                j += 1
            items.append(value[i:j].strip())
            i = j
        while i < n and value[i] != ",":
            i += 1
        i += 1  # skip the comma
    return items


def database_properties(conn: psycopg.Connection[Any], name: str) -> dict[str, Any]:
    """What CREATE DATABASE options, ACL, comment and per-database settings the database has."""
    row = conn.execute(
        """
        SELECT pg_encoding_to_char(d.encoding), d.datcollate, d.datctype,
               d.datlocprovider::text, d.daticulocale, pg_get_userbyid(d.datdba), d.datconnlimit,
               shobj_description(d.oid, 'pg_database'), d.datacl IS NULL
        FROM pg_database d WHERE d.datname = %s
        """,
        (name,),
    ).fetchone()
    if row is None:
        raise PostgresError(f"database {name!r} does not exist")
    # Every ACL item; the owner's own entries apart (an owner may have revoked some, say TEMPORARY).
    items = conn.execute(
        """
        SELECT CASE WHEN a.grantee = 0 THEN NULL ELSE pg_get_userbyid(a.grantee) END,
               a.privilege_type, a.is_grantable, a.grantee = d.datdba
        FROM pg_database d, aclexplode(d.datacl) a
        WHERE d.datname = %s
        ORDER BY 1 NULLS FIRST, 2
        """,
        (name,),
    ).fetchall()
    settings = conn.execute(
        """
        SELECT CASE WHEN s.setrole = 0 THEN NULL ELSE pg_get_userbyid(s.setrole) END, unnest(s.setconfig)
        FROM pg_db_role_setting s JOIN pg_database d ON d.oid = s.setdatabase
        WHERE d.datname = %s ORDER BY 1 NULLS FIRST, 2
        """,
        (name,),
    ).fetchall()
    return {
        "encoding": row[0],
        "collate": row[1],
        "ctype": row[2],
        "locale_provider": {"c": "libc", "i": "icu", "b": "builtin"}.get(row[3], "libc"),
        "icu_locale": row[4],
        "owner": row[5],
        "connection_limit": row[6],
        "comment": row[7],
        "default_acl": row[8],
        "acl": [{"grantee": g, "privilege": p, "grantable": bool(gr)} for g, p, gr, own in items if not own],
        "owner_acl": [{"privilege": p, "grantable": bool(gr)} for _, p, gr, own in items if own],
        "settings": [{"role": r, "setting": s} for r, s in settings],
    }


def create_database_sql(name: str, props: dict[str, Any], owner: str | None) -> Any:
    """CREATE DATABASE for a restore target, with the source's encoding and locale, from template0."""
    from psycopg import sql

    parts = [sql.SQL("CREATE DATABASE {} WITH TEMPLATE = template0").format(sql.Identifier(name))]
    if props.get("encoding"):
        parts.append(sql.SQL("ENCODING = {}").format(sql.Literal(props["encoding"])))
    provider = props.get("locale_provider", "libc")
    if provider == "icu" and props.get("icu_locale"):
        parts.append(sql.SQL("LOCALE_PROVIDER = icu ICU_LOCALE = {}").format(sql.Literal(props["icu_locale"])))
    if props.get("collate"):
        parts.append(sql.SQL("LC_COLLATE = {}").format(sql.Literal(props["collate"])))
    if props.get("ctype"):
        parts.append(sql.SQL("LC_CTYPE = {}").format(sql.Literal(props["ctype"])))
    if owner:
        parts.append(sql.SQL("OWNER = {}").format(sql.Identifier(owner)))
    return sql.SQL(" ").join(parts)


_DATABASE_PRIVILEGES = frozenset({"CONNECT", "CREATE", "TEMPORARY"})


def apply_database_properties(
    conn: psycopg.Connection[Any], name: str, props: dict[str, Any], *, skip_missing_roles: bool
) -> list[str]:
    """Re-create comment, connection limit, ACL and settings on `name`. Returns warnings (skipped roles)."""
    from psycopg import sql

    db = sql.Identifier(name)
    warnings: list[str] = []

    def role_ok(role: str | None) -> bool:
        if role is None or role_exists(conn, role):
            return True
        if skip_missing_roles:
            warnings.append(
                f"role {role!r} does not exist on this server; its database-level grant/setting was skipped"
            )
            return False
        raise PostgresError(
            f"role {role!r} from the backup does not exist on this server; restore with --with-globals or --no-owner"
        )

    if props.get("comment") is not None:
        conn.execute(sql.SQL("COMMENT ON DATABASE {} IS {}").format(db, sql.Literal(props["comment"])))
    if props.get("connection_limit", -1) != -1:
        conn.execute(
            sql.SQL("ALTER DATABASE {} CONNECTION LIMIT {}").format(db, sql.Literal(props["connection_limit"]))
        )

    def grant(item: dict[str, Any], grantee: Any) -> None:
        privilege = str(item["privilege"]).upper()
        if privilege not in _DATABASE_PRIVILEGES:
            warnings.append(f"skipped database privilege with unexpected name {privilege!r}")
            return
        stmt = sql.SQL("GRANT {} ON DATABASE {} TO {}").format(sql.SQL(privilege), db, grantee)
        conn.execute(sql.SQL("{} WITH GRANT OPTION").format(stmt) if item["grantable"] else stmt)

    if not props.get("default_acl", True):
        conn.execute(sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(db))
        if "owner_acl" in props:  # older manifests did not record the owner's own entries: it keeps them all
            row = conn.execute("SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = %s", (name,)).fetchone()
            owner = sql.Identifier(row[0] if row else "")
            conn.execute(sql.SQL("REVOKE ALL ON DATABASE {} FROM {}").format(db, owner))
            for item in props["owner_acl"]:
                grant(item, owner)
        for item in props.get("acl", []):
            if role_ok(item["grantee"]):
                grant(item, sql.SQL("PUBLIC") if item["grantee"] is None else sql.Identifier(item["grantee"]))
    for item in props.get("settings", []):
        if not role_ok(item["role"]):
            continue
        guc, _, value = item["setting"].partition("=")
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.]*", guc):
            warnings.append(f"skipped database setting with unexpected name {guc!r}")
            continue
        elements = split_guc_list(value) if guc.lower() in _LIST_QUOTE_GUCS else [value]
        val = sql.SQL(", ").join(sql.Literal(v) for v in elements)
        target = sql.SQL("ALTER DATABASE {} SET {} TO {}").format(db, sql.Identifier(guc), val)
        if item["role"] is not None:
            target = sql.SQL("ALTER ROLE {} IN DATABASE {} SET {} TO {}").format(
                sql.Identifier(item["role"]), db, sql.Identifier(guc), val
            )
        conn.execute(target)
    return warnings


_SESSIONS = """
    SELECT coalesce(usename, ''), coalesce(nullif(application_name, ''), backend_type){}
    FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid() ORDER BY 1, 2
"""


def database_sessions(conn: psycopg.Connection[Any], name: str) -> list[tuple[str, str]]:
    """(user, application) of every other session on the database; the backend type when no application
    name is set (an autovacuum worker, say)."""
    return [(r[0], r[1]) for r in conn.execute(_SESSIONS.format(""), (name,)).fetchall()]


def terminate_connections(conn: psycopg.Connection[Any], name: str) -> list[tuple[str, str]]:
    """End every other session on the database; returns (user, application) of each one signalled."""
    rows = conn.execute(_SESSIONS.format(", pg_terminate_backend(pid)"), (name,)).fetchall()
    return [(r[0], r[1]) for r in rows if r[2]]


def drop_database(conn: psycopg.Connection[Any], name: str) -> None:
    from psycopg import sql

    conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def drop_scratch(pg: PgConn, name: str) -> None:
    """Clean up after a failed restore or drill. Never raises: the failure that brought us here is the one
    to report. If the server cannot drop it (it crashed, its disk is full), say which database is left."""
    import psycopg

    try:
        with pg.connect("postgres") as c:
            drop_database(c, name)
    except (PgOpsError, psycopg.Error) as e:
        logging.getLogger(__name__).warning(
            "event=scratch_left database=%s error=%s hint=%s",
            q(name),
            q(_first_line(e)),
            q(f"drop it by hand once the server is healthy: DROP DATABASE {name}"),
        )


def table_estimates(conn: psycopg.Connection[Any]) -> list[dict[str, Any]]:
    """Every user table with a cheap row estimate: no scan, only the planner's and the stats system's
    numbers (reltuples is -1 for a table never vacuumed or analyzed)."""
    rows = conn.execute(
        """
        SELECT n.nspname, c.relname, c.reltuples::bigint, coalesce(s.n_live_tup, -1)
        FROM pg_class c
        JOIN pg_namespace n ON n.oid = c.relnamespace
        LEFT JOIN pg_stat_user_tables s ON s.relid = c.oid
        WHERE c.relkind IN ('r', 'p', 'm') AND n.nspname NOT IN ('pg_catalog', 'information_schema')
          AND n.nspname NOT LIKE 'pg_toast%' AND n.nspname NOT LIKE 'pg_temp%'
        ORDER BY 1, 2
        """
    ).fetchall()
    return [{"schema": r[0], "name": r[1], "reltuples": r[2], "n_live_tup": r[3]} for r in rows]
