"""RELIABILITY.md line 35: restoring roles onto a live server leaves existing roles (passwords, LOGIN)
alone unless asked; a role that is missing comes back with its memberships; the explicit flag saves the
current globals first, then overwrites; roles created for a restore that fails are dropped again."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from pgops.errors import ExitCode
from tests.fixtures.engine import Engine
from tests.fixtures.pg import Cluster
from tests.integration.test_restore_safety import corrupt_one_byte, dump_key


@pytest.fixture
def local(engine_env: dict[str, str], tmp_path: Path) -> Engine:
    return Engine("local", engine_env, tmp_path)


class Roles:
    """Roles of one test, prefixed so that tests on the shared cluster never meet: app (owns the
    database, its password gets rotated), off (disabled with NOLOGIN after the backup), grp and member
    (member is dropped after the backup), report (a group app was in, dropped after the backup)."""

    def __init__(self, pg: Cluster, prefix: str) -> None:
        self.pg, self.p = pg, prefix
        self.db = prefix + "db"

    def __getattr__(self, name: str) -> str:
        return self.p + name

    def run(self, *statements: str) -> None:
        for st in statements:
            self.pg.execute("postgres", st.format(p=self.p))

    def can_login(self, role: str, password: str) -> bool:
        try:
            psycopg.connect(
                host="127.0.0.1", port=self.pg.port, dbname="postgres", user=role, password=password, connect_timeout=5
            ).close()
        except psycopg.OperationalError:
            return False
        return True

    def member_of(self, member: str) -> list[str]:
        rows = self.pg.execute(
            "postgres",
            "SELECT g.rolname FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid "
            "JOIN pg_roles r ON r.oid = m.member WHERE r.rolname = %s ORDER BY 1",
            (member,),
        )
        return [r[0] for r in rows]

    def exists(self, role: str) -> bool:
        return bool(self.pg.execute("postgres", "SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)))

    def drop_all(self) -> None:
        for d in self.pg.databases():
            if d.startswith(self.db):
                self.pg.drop_database(d)
        for name in ("member", "grp", "report", "off", "app"):
            self.pg.execute("postgres", sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(self.p + name)))


@pytest.fixture
def roles(pg: Cluster, request: pytest.FixtureRequest) -> Iterator[Roles]:
    r = Roles(pg, "rr" + str(abs(hash(request.node.name)) % 10**6) + "_")
    r.drop_all()
    r.run(
        "CREATE ROLE {p}app LOGIN PASSWORD 'app-backup-time'",
        "CREATE ROLE {p}off LOGIN PASSWORD 'off-pw'",
        "CREATE ROLE {p}grp NOLOGIN",
        "CREATE ROLE {p}member LOGIN PASSWORD 'member-pw' IN ROLE {p}grp",
        "CREATE ROLE {p}report NOLOGIN",
        "GRANT {p}report TO {p}app",
    )
    pg.create_database(r.db, OWNER=r.app)
    pg.execute(r.db, "CREATE TABLE t (id int); INSERT INTO t VALUES (1)")
    yield r
    r.drop_all()


def backup_then_change_roles(local: Engine, r: Roles) -> None:
    local.run(["backup", "--databases", r.db], check=True)
    r.run(
        "ALTER ROLE {p}app PASSWORD 'app-rotated'",  # rotated after the backup
        "ALTER ROLE {p}off NOLOGIN",  # disabled after the backup
        "DROP ROLE {p}member",  # lost: must come back, in its group
        "DROP ROLE {p}report",  # lost: must come back, with app in it
    )


def test_with_globals_creates_only_missing_roles_with_their_memberships(local: Engine, roles: Roles) -> None:
    r = roles
    backup_then_change_roles(local, r)
    out = local.run(["restore", "--database", r.db, "--target-db", r.db + "_new", "--with-globals", "--json"])
    assert out.returncode == 0, out.stderr

    assert r.can_login(r.app, "app-rotated") and not r.can_login(r.app, "app-backup-time")
    assert r.pg.execute("postgres", "SELECT rolcanlogin FROM pg_roles WHERE rolname = %s", (r.off,)) == [(False,)]
    assert r.can_login(r.member, "member-pw")
    assert r.member_of(r.member) == [r.grp]
    assert r.member_of(r.app) == [r.report]
    report = json.loads(out.stdout)["globals"]
    assert report["mode"] == "missing" and report["saved_globals_id"] is None
    assert sorted(report["created_roles"]) == sorted([r.member, r.report])
    assert r.pg.execute(r.db + "_new", "SELECT count(*) FROM t") == [(1,)]


def test_overwrite_roles_saves_current_globals_then_overwrites(local: Engine, roles: Roles) -> None:
    r = roles
    backup_then_change_roles(local, r)
    out = local.run(
        ["restore", "--database", r.db, "--target-db", r.db + "_new", "--with-globals", "--overwrite-roles", "--json"],
        extra={"PGOPS_COMPRESSION": "none"},  # the saved globals stay readable for the check below
    )
    assert out.returncode == 0, out.stderr

    assert r.can_login(r.app, "app-backup-time") and not r.can_login(r.app, "app-rotated")
    assert r.can_login(r.off, "off-pw")
    report = json.loads(out.stdout)["globals"]
    assert report["mode"] == "overwrite" and report["saved_globals_id"]
    listed = json.loads(local.run(["list", "--json"], check=True).stdout)["backups"]
    saved = [b for b in listed if b["id"] == report["saved_globals_id"] and b["database"] is None]
    assert len(saved) == 1 and saved[0]["reason"] == "safety"
    st = local.storage()
    text = st.get_bytes(saved[0]["objects"][0]["key"]).decode()
    st.close()
    off = text.split(f"ALTER ROLE {r.off} WITH", 1)[1].split(";")[0]
    assert " NOLOGIN " in off  # the state the overwrite then changed
    assert f"CREATE ROLE {r.member};" not in text  # taken after the drop, before the overwrite


def test_overwrite_roles_needs_with_globals(local: Engine, roles: Roles) -> None:
    local.run(["backup", "--databases", roles.db], check=True)
    out = local.run(["restore", "--database", roles.db, "--target-db", roles.db + "_new", "--overwrite-roles"])
    assert out.returncode == ExitCode.CONFIG
    assert "--overwrite-roles" in out.stderr and "--with-globals" in out.stderr
    assert roles.db + "_new" not in roles.pg.databases()


def test_roles_created_for_a_failed_restore_are_dropped_again(local: Engine, roles: Roles) -> None:
    r = roles
    backup_then_change_roles(local, r)
    corrupt_one_byte(local, dump_key(local, r.db))
    out = local.run(["restore", "--database", r.db, "--target-db", r.db + "_new", "--with-globals"])
    assert out.returncode == ExitCode.INTEGRITY, out.stderr
    assert not r.exists(r.member) and not r.exists(r.report)
    assert r.db + "_new" not in r.pg.databases()
    assert r.can_login(r.app, "app-rotated")
