"""The situations the runbooks start from, made for real on the hosts before a block runs (`setup=NAME`).

Each step returns bindings: values the runbook shows (a time, a backup id) mapped to this run's values, which
the runner substitutes into the commands that follow. Faults are real: the host's server is stopped hard,
table and index pages are overwritten on disk, a restore is killed with SIGKILL, small tmpfs mounts fill up.
"""

# ruff: noqa: S608, S108
# S608: the SQL here is fixed text of the scenario, not built from input; S108: paths on the test hosts.
from __future__ import annotations

import datetime
import json
import time
from collections.abc import Callable
from typing import Any

import yaml

from conftest import EPHEMERAL, INVENTORY, PROJECT, copy_inventory, must, podman_cp, run_script

PSQL = "runuser -u postgres -- psql -X -q -v ON_ERROR_STOP=1"
PGOPS = "runuser -u postgres -- pgops"
KEY = "/var/lib/postgresql/pgops-restore.key"
LOCAL_STORE = "/srv/pgops-backup"
ENV = "/etc/pgops/pgops.env"
SAVED_ENV = "/etc/pgops/pgops.env.s3"
SCRATCH = "SELECT datname FROM pg_database WHERE datname LIKE 'pgops_restore_%'"
BLOCK0 = "/var/tmp/rb-customers-block0"  # the good first page of billing.customers, to undo the damage


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _install_key(host: str) -> None:
    podman_cp(str(EPHEMERAL / "age.key"), host, KEY)
    must(host, f"chown postgres:postgres {KEY}; chmod 0600 {KEY}")


def _customers_file(*, checkpoint: bool) -> str:
    sql = "SELECT pg_relation_filepath('customers')"
    first = '-c "CHECKPOINT" ' if checkpoint else ""
    return must("db", f'{PSQL} -At -d billing {first}-c "{sql}"').split()[-1]


def _damage_customers() -> None:
    """Overwrite 64 bytes in the middle of billing.customers' first page, with the server stopped."""
    path = _customers_file(checkpoint=True)
    must(
        "db",
        f"""
        f=/var/lib/postgresql/15/main/{path}
        pg_ctlcluster 15 main stop
        [ -e {BLOCK0} ] || dd if=$f of={BLOCK0} bs=8192 count=1 status=none
        head -c 64 /dev/urandom | dd of=$f bs=1 seek=4000 conv=notrunc status=none
        pg_ctlcluster 15 main start
        """,
    )


def _repair_customers() -> None:
    path = _customers_file(checkpoint=False)
    must(
        "db",
        f"""
        pg_ctlcluster 15 main stop
        dd if={BLOCK0} of=/var/lib/postgresql/15/main/{path} bs=8192 count=1 conv=notrunc status=none
        pg_ctlcluster 15 main start
        """,
    )


def lose_db() -> dict[str, str]:
    """A1: the host is lost. Its server stops without a clean shutdown, and its cron is fenced."""
    copy_inventory()
    must("db", "systemctl stop cron; pg_ctlcluster 15 main stop -m immediate; pg_lsclusters")
    return {}


def a2() -> dict[str, str]:
    """A2 starts over on the new host: what A1 restored is dropped, the wheelhouse and the key are copied in."""
    must(
        "restore",
        f"""
        for db in appdb billing; do {PSQL} -d postgres -c "DROP DATABASE IF EXISTS $db WITH (FORCE)"; done
        for db in postgres template1; do {PSQL} -d $db -c 'DROP OWNED BY app_owner, billing_owner, reporting'; done
        {PSQL} -d postgres -c 'DROP ROLE app_owner' -c 'DROP ROLE billing_owner' -c 'DROP ROLE reporting'
        mkdir -p /root/dist
        """,
    )
    podman_cp(str(PROJECT / "dist" / "pgops"), "restore", "/root/dist/pgops")
    _install_key("restore")
    return {}


def b1() -> dict[str, str]:
    """B: the lost host is back for the other procedures. After its last backup an invoice and two lines
    are written, then (the block) the table is dropped."""
    must("db", "pg_ctlcluster 15 main start; systemctl start cron")
    _install_key("db")
    must(
        "db",
        f"""
        {PSQL} -d billing <<'SQL'
        SET ROLE billing_owner;
        INSERT INTO invoices (customer_id, total) VALUES (7, 99.00);
        INSERT INTO invoice_lines (invoice_id, amount) VALUES (20003, 60.00), (20003, 39.00);
        SQL
        """,
    )
    time.sleep(1.5)
    return {"2026-11-22T08:05:00Z": _now()}


def b2() -> dict[str, str]:
    """B2: the side database again (B1 dropped it), and customer 42's invoices deleted from the live table."""
    must(
        "db",
        f"""
        {PGOPS} restore --database billing --target-db billing_side --identity-file {KEY} >/dev/null
        {PSQL} -d billing \\
          -c 'DELETE FROM invoice_lines WHERE invoice_id IN (SELECT id FROM invoices WHERE customer_id = 42)' \\
          -c 'DELETE FROM invoices WHERE customer_id = 42'
        """,
    )
    return {}


def c1() -> dict[str, str]:
    """C1: B's side database is gone (B2 drops it), and billing.customers has a damaged page on disk."""
    must("db", f"{PSQL} -d postgres -c 'DROP DATABASE billing_side'")
    _damage_customers()
    return {}


def c1_index() -> dict[str, str]:
    """C1, index only: database ix, whose primary key index has a damaged page; the table is intact."""
    must(
        "db",
        f"""
        {PSQL} -d postgres -c 'CREATE DATABASE ix'
        {PSQL} -d ix -c 'CREATE TABLE t (id int PRIMARY KEY, v text)' \\
          -c "INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 20000) g" -c CHECKPOINT
        f=/var/lib/postgresql/15/main/$({PSQL} -At -d ix -c "SELECT pg_relation_filepath('t_pkey')")
        pg_ctlcluster 15 main stop
        head -c 64 /dev/urandom | dd of=$f bs=1 seek=$((3 * 8192 + 4000)) conv=notrunc status=none
        pg_ctlcluster 15 main start
        """,
    )
    return {}


def c3() -> dict[str, str]:
    """C3 is for a database pg_dump can read (a bad migration): billing's page is put back; ix is dropped."""
    must("db", f"{PSQL} -d postgres -c 'DROP DATABASE ix'")
    _repair_customers()
    return {}


def c4() -> dict[str, str]:
    """C4: billing's page is damaged again, so --replace cannot take its safety backup."""
    _damage_customers()
    return {}


def c6() -> dict[str, str]:
    """C6 (and D, and the retirement): a file:// store on a 5 MB tmpfs, two backups into it, and bytes in
    the middle of the newest appdb dump overwritten. billing is the good copy again."""
    must(
        "db",
        f"""
        {PSQL} -d postgres -c 'DROP DATABASE billing WITH (FORCE)' -c 'DROP DATABASE billing_from_safety' \\
          -c 'ALTER DATABASE billing_undone_20261122 RENAME TO billing'
        mkdir -p {LOCAL_STORE}
        mountpoint -q {LOCAL_STORE} || mount -t tmpfs -o size=5m tmpfs {LOCAL_STORE}
        chown postgres:postgres {LOCAL_STORE}
        [ -e {SAVED_ENV} ] || cp -p {ENV} {SAVED_ENV}
        sed -i 's|^PGOPS_STORAGE_URL=.*|PGOPS_STORAGE_URL=file://{LOCAL_STORE}|' {ENV}
        {PGOPS} backup 2>&1 | tail -n 1
        sleep 1
        {PGOPS} backup 2>&1 | tail -n 1
        f=$(ls -d {LOCAL_STORE}/pgops-rb-db/appdb/*/ | sort | tail -n 1)dump.pgc.zst.age
        size=$(stat -c %s $f)
        head -c 256 /dev/urandom | dd of=$f bs=1 seek=$((size / 2)) conv=notrunc status=none
        """,
    )
    return {}


def d1() -> dict[str, str]:
    """D1: the server went down without a clean shutdown (SIGKILL to every server process)."""
    must("db", "systemctl kill -s SIGKILL postgresql@15-main; sleep 2; ! pg_lsclusters -h | grep -q online")
    return {}


def d1_scratch() -> dict[str, str]:
    """D1 step 4: a restore killed with SIGKILL while it loads, which leaves its scratch database behind."""
    r = run_script(
        "db",
        f"""
        runuser -u postgres -- pgops restore --database billing --target-db billing_killed --identity-file {KEY} &
        for i in $(seq 1 200); do
          {PSQL} -At -d postgres -c "{SCRATCH}" | grep -q . && break
          sleep 0.05
        done
        pkill -KILL -u postgres -f 'pgops restore'; pkill -KILL -u postgres pg_restore || true
        wait
        {PSQL} -At -d postgres -c "{SCRATCH}"
        """,
    )
    assert "pgops_restore_" in r.output, f"no scratch database was left by the killed restore:\n{r.output}"
    return {}


def _stored_sizes() -> dict[str, int]:
    """Stored bytes of the newest backup of each database (and of the globals)."""
    out = must("db", f"{PGOPS} list --json 2>/dev/null")
    sizes: dict[str, int] = {}
    for b in json.loads(out)["backups"]:  # newest first
        sizes.setdefault(b.get("database") or "@globals", sum(o["size"] for o in b["objects"]))
    return sizes


def d2() -> dict[str, str]:
    """D2: the local target fills up: after the globals and appdb (dumped first), too little room for
    billing, enough for the small postgres database."""
    sizes = _stored_sizes()
    room = sizes["@globals"] + sizes["appdb"] + 2 * sizes["postgres"] + 64 * 1024
    assert sizes["billing"] > 96 * 1024, f"billing too small to fail alone: {sizes}"
    must(
        "db",
        f"""
        rm -f {LOCAL_STORE}/filler*
        free=$(($(stat -f -c '%a * %S' {LOCAL_STORE})))
        fill=$((free - {room}))
        [ $fill -gt 0 ] && head -c $fill /dev/zero > {LOCAL_STORE}/filler
        """,
    )
    return {}


def d2_full() -> dict[str, str]:
    """D2, the disk completely full."""
    must("db", f"dd if=/dev/zero of={LOCAL_STORE}/filler2 bs=4k status=none 2>/dev/null || true")
    return {}


def d3() -> dict[str, str]:
    """D3: the spool directory is a 1 MB tmpfs; the local store gets its room back."""
    must(
        "db",
        f"""
        rm -f {LOCAL_STORE}/filler*
        mkdir -p /var/tmp/pgops
        mountpoint -q /var/tmp/pgops || mount -t tmpfs -o size=1m tmpfs /var/tmp/pgops
        chown postgres:postgres /var/tmp/pgops
        """,
    )
    return {}


def retire() -> dict[str, str]:
    """Retire: billing_side was backed up one night (an explicit --databases), then dropped."""
    must(
        "db",
        f"""
        {PSQL} -d postgres -c 'CREATE DATABASE billing_side'
        {PSQL} -d billing_side -c 'CREATE TABLE t AS SELECT 1 AS x'
        {PGOPS} backup --databases billing_side --no-globals 2>&1 | tail -n 1
        {PSQL} -d postgres -c 'DROP DATABASE billing_side'
        """,
    )
    return {}


def decrypt() -> dict[str, str]:
    """By hand: the newest billing and globals backup copied out of the file:// store, age and zstd
    installed from Debian, the identity file in the working directory."""
    must(
        "db",
        f"""
        command -v age >/dev/null || (apt-get update -qq && apt-get install -y -qq age zstd >/dev/null)
        command -v zstd >/dev/null || apt-get install -y -qq zstd >/dev/null
        rm -rf billing globals
        cp -r $(ls -d {LOCAL_STORE}/pgops-rb-db/billing/*/ | sort | tail -n 1) billing
        cp -r $(ls -d {LOCAL_STORE}/pgops-rb-db/@globals/*/ | sort | tail -n 1) globals
        """,
    )
    return {}


def ops() -> dict[str, str]:
    """backup-operations.md: back to the S3 store, after a fresh backup there."""
    must("db", f"cp -p {SAVED_ENV} {ENV}; {PGOPS} backup 2>&1 | tail -n 1")
    return {}


def restore_test() -> dict[str, str]:
    """The metrics after a restore drill: the drill runs with the private key."""
    must("db", f"{PGOPS} verify --restore-test --identity-file {KEY} 2>&1 | tail -n 2")
    return {}


def rotate_add() -> dict[str, str]:
    """Rotate age keys, step 2: a new key pair; the inventory lists the new public key next to the old one.
    old.key and new.key are in the operator's working directory on the host."""
    from pyrage import x25519

    new = x25519.Identity.generate()
    (EPHEMERAL / "new.key").write_text(f"{new}\n")
    old_pub = (EPHEMERAL / "age.pub").read_text().strip()
    # host_vars: group_vars/pgops_postgres.yml would win over a pgops_db.yml (sibling groups merge by name).
    with (INVENTORY / "host_vars" / "pgops-rb-db.yml").open("a", encoding="utf-8") as f:
        f.write(f"postgresql_backup_age_recipients:\n  - {old_pub}\n  - {new.to_public()}\n")
    podman_cp(str(EPHEMERAL / "age.key"), "db", "/var/lib/postgresql/old.key")
    podman_cp(str(EPHEMERAL / "new.key"), "db", "/var/lib/postgresql/new.key")
    must("db", "cd /var/lib/postgresql && chown postgres: old.key new.key && chmod 0600 old.key new.key")
    old_id = json.loads(must("db", f"{PGOPS} list --database billing --json 2>/dev/null"))["backups"][0]["id"]
    return {"20261122T080051Z-8e2fb5": old_id}


def _inventory_groups(change: Callable[[dict[str, Any]], None]) -> None:
    """Change the groups of the test's copy of the inventory, as the operator edits theirs."""
    path = INVENTORY / "ansible_inventory.yml"
    inventory = yaml.safe_load(path.read_text(encoding="utf-8"))
    change(inventory)
    path.write_text(yaml.safe_dump(inventory, sort_keys=False), encoding="utf-8")


def _payments_writer() -> str:
    """The payments table, archived (a restore point switches WAL and waits for the archive); then a payment
    row every 0.2 s for 75 s as the application's owner, longer than archive_timeout (60 s), so that the
    archive holds the first ones and not the newest. What was acknowledged, as `id|paid_at`."""
    return must(
        "db",
        f"""
        {PSQL} -d billing -c 'SET ROLE billing_owner' -c 'CREATE TABLE payments (id bigserial PRIMARY KEY,
          invoice_id int NOT NULL, amount numeric(12, 2) NOT NULL,
          paid_at timestamptz NOT NULL DEFAULT clock_timestamp())'
        {PGOPS} restore-point --reason payments-table >/dev/null 2>&1
        end=$((SECONDS + 75)); i=0
        while [ $SECONDS -lt $end ]; do
          i=$((i + 1))
          {PSQL} -At -d billing -c "INSERT INTO payments (invoice_id, amount) VALUES ($i, 10.00) RETURNING id, paid_at"
          sleep 0.2
        done
        """,
    )


def p1() -> dict[str, str]:
    """P1: db-prod-1 takes payments until its server is killed (cron is stopped too: the host is lost). db-prod-2
    becomes the new host: the cluster A restored there is dropped, and the inventory puts it in db-prod-1's group
    (pgops_db: the stanza, archiving), as the procedure's first step says. What the writer acknowledged goes to
    p1-acknowledged.txt in the ephemeral directory: the RPO is what of it did not come back."""
    acked = _payments_writer()
    # SIGKILL to every server process: no shutdown checkpoint, no last segment archived (`pg_ctlcluster stop -m
    # immediate` goes through systemctl under systemd, which shuts down cleanly and archives the last segment).
    must("db", "systemctl stop cron; systemctl kill -s SIGKILL postgresql@15-main; sleep 2")
    must("db", "! pg_lsclusters -h | grep -q online")
    (EPHEMERAL / "p1-acknowledged.txt").write_text(f"{_now()} killed after:\n{acked}", encoding="utf-8")
    must("restore", "pg_dropcluster --stop 15 main; pg_lsclusters")

    def move(inv: dict[str, Any]) -> None:
        inv["pgops_db"]["hosts"]["pgops-rb-restore"] = dict(inv["pgops_restore"]["hosts"]["pgops-rb-restore"] or {})

    _inventory_groups(move)
    return {}


def p2() -> dict[str, str]:
    """P2: db-prod-1 is out of the inventory (P1's last step). On db-prod-2, the new primary, a wrong UPDATE (the
    WHERE forgotten), then the application writes on (a new invoice). The log line's time is bound to the one the
    runbook shows."""

    def drop(inv: dict[str, Any]) -> None:
        for group in inv.values():
            if isinstance(group, dict) and isinstance(group.get("hosts"), dict):
                group["hosts"].pop("pgops-rb-db", None)

    _inventory_groups(drop)
    must(
        "restore",
        f"""
        sleep 1.5
        {PSQL} -d billing -c 'SET ROLE billing_owner' -c 'UPDATE invoices SET total = 0'
        sleep 1.5
        {PSQL} -d billing -c 'SET ROLE billing_owner' -c 'INSERT INTO invoices (customer_id, total) VALUES (12, 45.50)'
        """,
    )
    line = must("restore", "grep 'statement: UPDATE invoices SET total = 0' /var/log/postgresql/postgresql-15-main.log")
    day, clock = line.strip().split("\n")[-1].split()[:2]
    return {"2026-12-03T19:40:01.123Z": f"{day}T{clock}Z"}


def p1_adopt() -> dict[str, str]:
    """P1, after: db-prod-2's backup target still belongs to the cluster section A restored there; the cluster
    id the runbook shows is bound to that one."""
    first = must("restore", f"cd /tmp; {PGOPS} list 2>/dev/null | head -n 1")
    return {"7715165825372633554": first.split("cluster ")[1].split()[0]}


def status_stale() -> dict[str, str]:
    """Reading status: a row written on db-prod-2 a few seconds after its last archived segment."""
    must("restore", f"sleep 3; {PSQL} -d billing -c 'INSERT INTO invoices (customer_id, total) VALUES (12, 1.00)'")
    return {}


SETUPS: dict[str, Callable[[], dict[str, str]]] = {
    "lose-db": lose_db,
    "a2": a2,
    "b1": b1,
    "b2": b2,
    "c1": c1,
    "c1-index": c1_index,
    "c3": c3,
    "c4": c4,
    "c6": c6,
    "d1": d1,
    "d1-scratch": d1_scratch,
    "d2": d2,
    "d2-full": d2_full,
    "d3": d3,
    "retire": retire,
    "decrypt": decrypt,
    "ops": ops,
    "restore-test": restore_test,
    "rotate-add": rotate_add,
    "p1": p1,
    "p1-adopt": p1_adopt,
    "p2": p2,
    "status-stale": status_stale,
}
