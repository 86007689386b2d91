"""The README's first command: back up a demo database to a local S3 emulator and restore it.

No cloud account needed: a throwaway PostgreSQL cluster and moto's S3 API on 127.0.0.1. Later issues
replace this with the container host and playbooks.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.fixtures.pg import free_port, make_tricky_database, running_cluster


def pgops(args: list[str], env: dict[str, str]) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "pgops", *args], env=env, capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        sys.stderr.write(result.stderr)
        raise SystemExit(f"demo: pgops {' '.join(args)} failed with exit code {result.returncode}")
    return result.stdout


def main() -> None:
    import logging

    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # the emulator's request log

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    bucket = "pgops-demo"
    s3 = boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id="demo",
        aws_secret_access_key="demo",  # noqa: S106 - the emulator's dummy key region_name="us-east-1"
    )
    s3.create_bucket(Bucket=bucket)
    try:
        with running_cluster() as pg, tempfile.TemporaryDirectory(prefix="pgops-demo-") as tmp:
            print(f"demo: PostgreSQL {pg.bindir.parent.name} on port {pg.port}; S3 emulator on {endpoint}")
            make_tricky_database(pg, "shop")
            envfile = Path(tmp) / "pgops.env"
            envfile.write_text(
                f"PGOPS_STORAGE_URL=s3://{bucket}/demo\nPGOPS_S3_ENDPOINT_URL={endpoint}\n"
                "PGOPS_S3_ACCESS_KEY_ID=demo\nPGOPS_S3_SECRET_ACCESS_KEY=demo\nPGOPS_S3_REGION=us-east-1\n"
                f"PGOPS_S3_ADDRESSING_STYLE=path\nPGOPS_TARGET=demo-host\nPGOPS_LOCK_DIR={tmp}\n"
                f"PGOPS_PG_CONNINFO={pg.conninfo}\nPGOPS_PG_BINDIR={pg.bindir}\n"
            )
            envfile.chmod(0o600)
            import os

            env = {k: v for k, v in os.environ.items() if not k.startswith("PGOPS_")}
            env["PGOPS_ENV_FILE"] = str(envfile)
            t0 = time.monotonic()
            pgops(["backup"], env)
            backup_s = time.monotonic() - t0
            print(pgops(["list"], env), end="")
            backups = json.loads(pgops(["list", "--json"], env))["backups"]
            shop = next(b for b in backups if b["database"] == "shop")
            t0 = time.monotonic()
            pgops(["restore", "--database", "shop", "--target-db", "shop_restored"], env)
            restore_s = time.monotonic() - t0
            same = pg.dump("shop") == pg.dump("shop_restored")
            print()
            print("demo summary")
            print("  built:     a throwaway PostgreSQL cluster with database 'shop' (pgbench + tricky names)")
            print(
                f"  backup:    {len(backups)} backups (globals + each database) "
                f"in s3://{bucket}/demo/ in {backup_s:.1f}s"
            )
            print(f"             shop -> {shop['objects'][0]['key']} ({shop['objects'][0]['size']} bytes, zstd)")
            print(f"  restore:   shop -> shop_restored in {restore_s:.1f}s")
            print(f"  verified:  schema+data dump of the restore {'MATCHES' if same else 'DIFFERS FROM'} the source")
            if not same:
                raise SystemExit(1)
    finally:
        server.stop()


if __name__ == "__main__":
    main()
