"""A throwaway PostgreSQL 15 cluster for the benchmark, its data set, and pgBackRest set up against it.

As root, initdb refuses to run, so the cluster runs as the `postgres` OS user in a temp directory it
owns (as in tests/fixtures/pg.py). Clients reach it over a Unix socket in that directory with trust auth.
Settings are stock except: more shared_buffers / maintenance_work_mem / max_wal_size (so index builds and
loads do not thrash), archive_mode=on (pgBackRest needs it; the command is a no-op except while
pgBackRest runs), and autovacuum off (so no background vacuum lands inside a measurement).
"""

from __future__ import annotations

import os
import pwd
import socket
import subprocess
import threading
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

BINDIR = Path("/usr/lib/postgresql/15/bin")
PG_CONF = """
port = {port}
listen_addresses = ''
unix_socket_directories = '{sockdir}'
max_connections = 40
shared_buffers = 256MB
maintenance_work_mem = 256MB
max_wal_size = 8GB
checkpoint_timeout = 30min
autovacuum = off
archive_mode = on
archive_command = '/bin/true'
"""
INITDB_OPTS = ("-E", "UTF8", "--locale=C.UTF-8", "--auth=trust", "--data-checksums")
MIXED_ROWS_PER_SCALE = 25_000  # dumps to about as many bytes as pgbench at the same scale (~10 MB per unit)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def as_postgres(argv: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else argv


def chown_postgres(path: Path) -> None:
    if os.geteuid() == 0:
        pw = pwd.getpwnam("postgres")
        os.chown(path, pw.pw_uid, pw.pw_gid)


class BenchCluster:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.data = root / "data"
        self.port = free_port()

    @property
    def conninfo(self) -> str:
        return f"host={self.root} port={self.port} user=postgres"

    def dsn(self, dbname: str) -> str:
        return f"{self.conninfo} dbname={dbname}"

    def init_and_start(self) -> None:
        chown_postgres(self.root)
        subprocess.run(
            as_postgres([str(BINDIR / "initdb"), "-D", str(self.data), "-U", "postgres", *INITDB_OPTS]),
            check=True,
            capture_output=True,
        )
        with (self.data / "postgresql.conf").open("a") as f:
            f.write(PG_CONF.format(port=self.port, sockdir=self.root))
        subprocess.run(
            as_postgres([str(BINDIR / "pg_ctl"), "-D", str(self.data), "-l", str(self.root / "pg.log"), "-w", "start"]),
            check=True,
            capture_output=True,
        )

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            subprocess.run(
                as_postgres([str(BINDIR / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop"]),
                check=False,
                capture_output=True,
            )

    @property
    def postmaster_pid(self) -> int:
        return int((self.data / "postmaster.pid").read_text().split()[0])

    def execute(self, query: str | sql.Composable, dbname: str = "postgres", params: Any = None) -> list[Any]:
        with psycopg.connect(self.dsn(dbname), autocommit=True) as c:
            cur = c.execute(query, params)  # type: ignore[arg-type]
            return cur.fetchall() if cur.description else []

    def set_archive_command(self, command: str) -> None:
        self.execute(sql.SQL("ALTER SYSTEM SET archive_command = {}").format(sql.Literal(command)))
        self.execute("SELECT pg_reload_conf()")

    def quiesce(self) -> None:
        """Before each measurement: flush dirty buffers and the page cache's dirty pages."""
        self.execute("CHECKPOINT")
        os.sync()

    def version(self) -> str:
        return str(self.execute("SHOW server_version")[0][0])

    def db_size(self, dbname: str) -> int:
        return int(self.execute("SELECT pg_database_size(%s)", params=(dbname,))[0][0])

    def drop_database(self, name: str) -> None:
        self.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))

    def create_database(self, name: str) -> None:
        self.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))

    def row_counts(self, dbname: str) -> dict[str, int]:
        tables = ("pgbench_accounts", "pgbench_branches", "pgbench_tellers", "mixed")
        return {t: int(self.execute(f"SELECT count(*) FROM {t}", dbname)[0][0]) for t in tables}  # noqa: S608


# --- the data set -----------------------------------------------------------------------------------

MIXED_DDL = """
CREATE TABLE mixed (
    id bigint NOT NULL, created_at timestamptz NOT NULL, customer_id int NOT NULL, email text NOT NULL,
    sku text NOT NULL, digest text NOT NULL, token text NOT NULL, amount numeric(12,2) NOT NULL,
    qty int NOT NULL, ratio double precision NOT NULL, status text NOT NULL, note text, attrs jsonb NOT NULL
)
"""
# Realistic entropy: hex hashes (~4 bits/char), random numbers and timestamps, short natural-ish text
# from a small vocabulary, low-cardinality enums, and jsonb documents mixing all of those.
MIXED_INSERT = """
INSERT INTO mixed
SELECT i,
       timestamptz '2023-01-01' + i * interval '7 seconds' + random() * interval '6 seconds',
       (random() * 1e6)::int,
       'user' || (random() * 1e6)::int || '@' || d.domains[1 + mod(i, 4)],
       'SKU-' || lpad((random() * 99999)::int::text, 5, '0'),
       encode(sha256(int8send(i)), 'hex'),
       md5(random()::text),
       round((random() * 10000)::numeric, 2),
       1 + (random() * 20)::int,
       random(),
       d.statuses[1 + (random() * 5)::int],
       d.words[1 + (random() * 15)::int] || ' ' || d.words[1 + (random() * 15)::int] || ' order '
         || (random() * 1e5)::int || ' ' || d.words[1 + (random() * 15)::int],
       jsonb_build_object(
         'ip', '10.' || (random() * 255)::int || '.' || (random() * 255)::int || '.' || (random() * 255)::int,
         'agent', d.agents[1 + mod(i, 3)], 'score', round(random()::numeric, 4),
         'ref', substr(md5(i::text || 'r'), 1, 16), 'tags', jsonb_build_array(d.words[1 + mod(i, 16)], mod(i, 97)),
         'lines', jsonb_build_array(jsonb_build_object('sku', (random() * 9999)::int, 'n', 1 + mod(i, 5),
                                                       'price', round((random() * 500)::numeric, 2))))
FROM generate_series(%(lo)s::int, %(hi)s::int) AS i,
     (SELECT '{example.com,mail.test,corp.internal,shop.example}'::text[] AS domains,
             '{new,paid,shipped,delivered,returned,cancelled}'::text[] AS statuses,
             '{"Mozilla/5.0 (X11; Linux x86_64)",curl/8.5.0,okhttp/4.12.0}'::text[] AS agents,
             '{red,blue,fast,gift,bulk,refund,express,fragile,priority,sample,retail,promo,north,south,east,west}'::text[]
               AS words) AS d
"""
MIXED_INDEXES = (
    "ALTER TABLE mixed ADD PRIMARY KEY (id)",
    "CREATE INDEX mixed_created_at ON mixed (created_at)",
    "CREATE INDEX mixed_customer ON mixed (customer_id)",
)


def make_dataset(cluster: BenchCluster, dbname: str, scale: int) -> None:
    """pgbench at `scale` plus `mixed` rows of about the same size, with indexes (restores rebuild them)."""
    cluster.create_database(dbname)
    subprocess.run(
        [str(BINDIR / "pgbench"), "-i", "-q", "--init-steps=dtGvp", "-s", str(scale), cluster.dsn(dbname)],
        check=True,
        capture_output=True,
    )
    cluster.execute(MIXED_DDL, dbname)
    rows = MIXED_ROWS_PER_SCALE * scale
    halves = [(1, rows // 2), (rows // 2 + 1, rows)]  # two loaders: one per core
    errors: list[BaseException] = []

    def load(lo: int, hi: int) -> None:
        try:
            cluster.execute(MIXED_INSERT, dbname, {"lo": lo, "hi": hi})
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=load, args=h) for h in halves]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    for stmt in MIXED_INDEXES:
        cluster.execute(stmt, dbname)
    cluster.execute("VACUUM (ANALYZE, FREEZE) mixed", dbname)


# --- pgBackRest ---------------------------------------------------------------------------------------

PGBR_CONF = """[global]
repo1-path={repo}
repo1-retention-full=99
compress-type=zst
compress-level=1
process-max=2
start-fast=y
archive-check=y
log-level-console=warn
log-level-stderr=warn
log-level-file=off
lock-path={lock}

[bench]
pg1-path={data}
pg1-port={port}
pg1-socket-path={sock}
"""


class PgBackRest:
    STANZA = "bench"

    def __init__(self, cluster: BenchCluster, root: Path) -> None:
        self.cluster = cluster
        self.root = root
        self.repo = root / "repo"
        self.conf = root / "pgbackrest.conf"
        for d in (root, self.repo, root / "lock"):
            d.mkdir(parents=True, exist_ok=True)
            chown_postgres(d)
        self.conf.write_text(
            PGBR_CONF.format(
                repo=self.repo, lock=root / "lock", data=cluster.data, port=cluster.port, sock=cluster.root
            )
        )
        os.chmod(self.conf, 0o644)

    def command(self, *args: str) -> list[str]:
        return ["pgbackrest", f"--config={self.conf}", f"--stanza={self.STANZA}", *args]

    def argv(self, *args: str) -> list[str]:
        """command() run as the postgres OS user."""
        return as_postgres(self.command(*args))

    def archive_command(self, *options: str) -> str:
        """The archive_command that pushes through this stanza, with extra pgBackRest options (e.g. async)."""
        return " ".join([*self.command(*options), "archive-push", "%p"])

    def stanza_create(self) -> None:
        subprocess.run(self.argv("stanza-create"), check=True, capture_output=True)

    def new_restore_dir(self, name: str) -> Path:
        d = self.root / name
        d.mkdir(mode=0o700)
        chown_postgres(d)
        return d

    def last_backup_size(self) -> int:
        """Bytes the newest backup added to the repository (compressed, as stored)."""
        import json

        out = subprocess.run(self.argv("info", "--output=json"), check=True, capture_output=True, text=True).stdout
        backups = json.loads(out)[0]["backup"]
        return int(backups[-1]["info"]["repository"]["delta"])
